"""API keys: `mmk_<id>_<secret>` keys, their salted scrypt hashes, the key file and the lookup of a presented key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import yaml

from mmfusion.security.files import check_private
from mmfusion.types import InputError

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_SCRYPT_N, MIN_SCRYPT_R, MIN_SCRYPT_P = 2**14, 8, 1  # weaker stored hashes are refused, new and old
MAX_SCRYPT_BYTES = 1 << 30  # memory of one check (128 * r * N); more would let a key file exhaust the server
MAX_SCRYPT_P = 16
KEY_PREFIX = "mmk_"
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9.-]{1,64}")  # ids of generated keys: no "_", which ends the id in a key
LEGACY_SCHEME = "scrypt"  # the key is any text: a presented key without a known id is checked against these
BOUND_SCHEME = "scrypt-id"  # the key is mmk_<id>_<secret>: checked only when a presented key names its id
VERIFIED_CACHE_SIZE = 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_scrypt_cost(n: int, r: int, p: int, where: str) -> None:
    """InputError naming `where` unless N, r and p are at least the floor and within the memory cap."""
    if n < MIN_SCRYPT_N or n & (n - 1):
        raise InputError(f"{where}: scrypt N={n}; expected a power of two >= {MIN_SCRYPT_N}")
    if r < MIN_SCRYPT_R or not MIN_SCRYPT_P <= p <= MAX_SCRYPT_P:
        expected = f"r >= {MIN_SCRYPT_R} and {MIN_SCRYPT_P} <= p <= {MAX_SCRYPT_P}"
        raise InputError(f"{where}: scrypt r={r}, p={p}; expected {expected}")
    if 128 * r * n > MAX_SCRYPT_BYTES:
        needed, most = 128 * r * n >> 20, MAX_SCRYPT_BYTES >> 20
        raise InputError(f"{where}: scrypt N={n}, r={r} needs {needed} MiB per check; expected <= {most} MiB")


def _scrypt(key: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    memory = 128 * r * (n + p + 2) + (1 << 20)  # what OpenSSL asks for, so costs above its 32 MiB default work
    return hashlib.scrypt(key, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=memory)


def generate_api_key(key_id: str | None = None) -> str:
    """A new random key (256 bits); with `key_id`, `mmk_<id>_<secret>`, so the server checks only that id's hash."""
    secret = secrets.token_urlsafe(32)
    if key_id is None:
        return secret
    if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
        raise InputError(f"api key id {key_id!r}: expected 1-64 characters of A-Z a-z 0-9 . - (no '_')")
    return f"{KEY_PREFIX}{key_id}_{secret}"


def hash_api_key(key: str, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """The stored form of a key: `scrypt-id$n$r$p$salt$hash` for mmk_ keys, else `scrypt$...`; 16-byte salt."""
    if not key:
        raise InputError("api key: empty; expected a non-empty secret")
    check_scrypt_cost(n, r, p, "api key hash")
    salt = os.urandom(16)
    digest = _scrypt(key.encode(), salt, n, r, p, 32)
    scheme = BOUND_SCHEME if key.startswith(KEY_PREFIX) else LEGACY_SCHEME
    return f"{scheme}${n}${r}${p}${_b64(salt)}${_b64(digest)}"


@dataclass(frozen=True)
class StoredKey:
    """One entry of the API key file: its id, role, whether the key names its id, scrypt parameters, salt, hash."""

    id: str
    role: str
    bound: bool
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, key_id: str, role: str, stored: str, where: str) -> StoredKey:
        """An entry from its `hash` text; InputError naming `where` when it is malformed or too cheap."""
        parts = stored.split("$")
        try:
            if len(parts) != 6 or parts[0] not in (LEGACY_SCHEME, BOUND_SCHEME):
                raise ValueError
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, digest = _unb64(parts[4]), _unb64(parts[5])
        except ValueError:
            raise InputError(f"{where}.hash: {stored[:20]!r}...; expected scrypt$N$r$p$salt$hash") from None
        check_scrypt_cost(n, r, p, f"{where}.hash")
        if len(salt) < 8 or len(digest) < 16:
            raise InputError(f"{where}.hash: salt {len(salt)} bytes, hash {len(digest)}; expected >= 8 and >= 16")
        return cls(key_id, role, parts[0] == BOUND_SCHEME, n, r, p, salt, digest)

    def matches(self, key: bytes) -> bool:
        """Whether `key` hashes to this entry (one scrypt)."""
        computed = _scrypt(key, self.salt, self.n, self.r, self.p, len(self.digest))
        return hmac.compare_digest(computed, self.digest)


def read_yaml_file(path: Path, what: str):
    """Parse a YAML file; an unreadable or malformed file is an InputError naming `what` and the path."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as error:
        raise InputError(f"{what} {path}: cannot read ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise InputError(f"{what} {path}: not YAML ({str(error).splitlines()[0]})") from None


def load_api_keys(path: str | Path) -> tuple[StoredKey, ...]:
    """Parse an owner-only `keys: [{id, role, hash}]`; errors name the file, the entry and the field."""
    path = Path(path)
    check_private(path, "api key file")
    document = read_yaml_file(path, "api key file")
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise InputError(f"api key file {path}: expected a mapping with a 'keys' list of {{id, role, hash}}")
    keys, seen = [], set()
    for index, entry in enumerate(document["keys"]):
        where = f"{path}: keys[{index}]"
        if not isinstance(entry, dict) or set(entry) != {"id", "role", "hash"}:
            raise InputError(f"{where}: {entry!r}; expected exactly the keys id, role, hash")
        for name in ("id", "role", "hash"):
            if not isinstance(entry[name], str) or not entry[name]:
                raise InputError(f"{where}.{name}: {entry[name]!r}; expected a non-empty string")
        if entry["id"] in seen:
            raise InputError(f"{where}.id: {entry['id']!r} appears twice; ids must be unique")
        seen.add(entry["id"])
        keys.append(StoredKey.parse(entry["id"], entry["role"], entry["hash"], where))
    return tuple(keys)


class KeyTable:
    """The stored keys, found by the id an mmk_ key names, and a bounded memo of presented keys already checked.

    scrypt is slow on purpose: a presented key costs one scrypt for the entry its id names (or one per
    legacy `scrypt$` entry when it names none), and none again while the memo remembers it. The memo is
    keyed by an HMAC under a per-process secret, so it holds no key in the clear.
    """

    def __init__(self, keys: tuple[StoredKey, ...], memo_size: int = VERIFIED_CACHE_SIZE) -> None:
        self.keys = keys
        self._by_id = {stored.id: stored for stored in keys}
        self._legacy = tuple(stored for stored in keys if not stored.bound)
        self._secret = os.urandom(32)
        self._memo_size = memo_size
        self._memo: OrderedDict[bytes, StoredKey | None] = OrderedDict()
        self._lock = threading.Lock()

    def candidates(self, key: str) -> tuple[StoredKey, ...]:
        """The entries a presented key may belong to: those its mmk_<id>_ prefix names, else the legacy ones."""
        if key.startswith(KEY_PREFIX):
            rest = key[len(KEY_PREFIX) :]
            ids = (rest[:i] for i, char in enumerate(rest) if char == "_")
            named = tuple(self._by_id[key_id] for key_id in ids if key_id in self._by_id)
            if named:
                return named
        return self._legacy

    def remembered(self, key: str) -> tuple[bool, StoredKey | None]:
        """(whether the memo knows the key, its entry or None); costs one HMAC, never a scrypt."""
        tag = self._tag(key)
        with self._lock:
            if tag not in self._memo:
                return False, None
            self._memo.move_to_end(tag)
            return True, self._memo[tag]

    def lookup(self, key: str) -> StoredKey | None:
        """The entry the key belongs to, or None; remembered when a scrypt had to run."""
        known, stored = self.remembered(key)
        if known:
            return stored
        candidates = self.candidates(key)
        presented = key.encode()
        stored = next((entry for entry in candidates if entry.matches(presented)), None)
        if candidates:  # keys that cost nothing are not remembered, so they cannot push good ones out
            with self._lock:
                self._memo[self._tag(key)] = stored
                while len(self._memo) > self._memo_size:
                    self._memo.popitem(last=False)
        return stored

    def _tag(self, key: str) -> bytes:
        return hmac.new(self._secret, key.encode(), hashlib.sha256).digest()


def add_api_key(path: str | Path, key_id: str, role: str, n: int = SCRYPT_N) -> str:
    """Add a new `mmk_<id>_<secret>` key to the key file (created owner-only) and return it: it is shown once."""
    from mmfusion.security.crypto import atomic_write

    path = Path(path)
    entries = []
    if path.exists():
        load_api_keys(path)  # a broken or exposed file is refused before it is changed
        entries = read_yaml_file(path, "api key file")["keys"]
    if any(entry["id"] == key_id for entry in entries):
        raise InputError(f"api key id {key_id!r}: already in {path}; expected a new id (remove the old entry first)")
    if not role:
        raise InputError("api key role: empty; expected a role of the access policy")
    key = generate_api_key(key_id)
    entries.append({"id": key_id, "role": role, "hash": hash_api_key(key, n=n)})
    atomic_write(path, yaml.safe_dump({"keys": entries}, sort_keys=False).encode(), mode=0o600)
    return key
