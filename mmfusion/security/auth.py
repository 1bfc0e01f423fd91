"""Authentication: API keys (salted scrypt hashes in a YAML file) and JWTs (HS256 or RS256) -> a Caller."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import yaml

from mmfusion.types import InputError

LOG = logging.getLogger(__name__)
GENERIC_MESSAGE = "authentication failed: send valid credentials (authorization: Bearer <jwt> or ApiKey <key>)"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_HMAC_SECRET_BYTES = 32
MAX_CREDENTIAL_CHARS = 8192
VERIFIED_CACHE_SIZE = 1024
Metadata = Iterable[tuple[str, str | bytes]]


class AuthenticationError(Exception):
    """Credentials missing or wrong; str() is always GENERIC_MESSAGE, `reason` is for the server log only."""

    def __init__(self, reason: str) -> None:
        super().__init__(GENERIC_MESSAGE)
        self.reason = reason


@dataclass(frozen=True)
class Caller:
    """Who made a call: a key id or a JWT subject, and the role the policy knows them by."""

    id: str
    role: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_api_key() -> str:
    """A new random API key (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def hash_api_key(key: str, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """The stored form of an API key: `scrypt$n$r$p$salt$hash` with a random 16-byte salt."""
    if not key:
        raise InputError("api key: empty; expected a non-empty secret")
    salt = os.urandom(16)
    digest = hashlib.scrypt(key.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


@dataclass(frozen=True)
class StoredKey:
    """One entry of the API key file: its id, role and scrypt parameters, salt and hash."""

    id: str
    role: str
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, key_id: str, role: str, stored: str, where: str) -> StoredKey:
        parts = stored.split("$")
        try:
            if len(parts) != 6 or parts[0] != "scrypt":
                raise ValueError
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, digest = _unb64(parts[4]), _unb64(parts[5])
        except ValueError:
            raise InputError(f"{where}.hash: {stored[:20]!r}...; expected scrypt$N$r$p$salt$hash") from None
        if n < 2 or n & (n - 1) or len(salt) < 8 or len(digest) < 16:
            raise InputError(f"{where}.hash: weak or malformed scrypt parameters (n={n}, salt {len(salt)} bytes)")
        return cls(key_id, role, n, r, p, salt, digest)

    def matches(self, key: bytes) -> bool:
        computed = hashlib.scrypt(key, salt=self.salt, n=self.n, r=self.r, p=self.p, dklen=len(self.digest))
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
    """Parse `keys: [{id, role, hash}]`; errors name the file, the entry and the field."""
    path = Path(path)
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


def _read_pem_key(path: str | Path) -> str:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise InputError(f"--jwt-public-key {path}: cannot read ({error.strerror})") from None
    if "-----BEGIN PUBLIC KEY-----" not in text:
        raise InputError(f"--jwt-public-key {path}: expected a PEM public key ('-----BEGIN PUBLIC KEY-----')")
    return text


@dataclass(frozen=True)
class JwtConfig:
    """How bearer tokens are checked: HS256 with `secret` and/or RS256 with `public_key` (PEM text)."""

    secret: str | None = None
    public_key: str | None = None
    audience: str | None = None
    issuer: str | None = None
    role_claim: str = "role"
    leeway_s: float = 0.0

    def __post_init__(self) -> None:
        if self.secret is None and self.public_key is None:
            raise InputError("jwt: neither a secret (HS256) nor a public key (RS256); give at least one")
        if self.secret is not None and len(self.secret.encode()) < MIN_HMAC_SECRET_BYTES:
            raise InputError(
                f"jwt secret: {len(self.secret.encode())} bytes; expected at least {MIN_HMAC_SECRET_BYTES}"
            )

    @classmethod
    def from_options(
        cls,
        secret_env: str | None = None,
        public_key_file: str | Path | None = None,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> JwtConfig:
        """From the serve flags: the secret is read from an environment variable, never from the command line."""
        secret = None
        if secret_env is not None:
            secret = os.environ.get(secret_env)
            if not secret:
                raise InputError(f"--jwt-secret-env {secret_env}: the variable is unset or empty")
        public_key = _read_pem_key(public_key_file) if public_key_file is not None else None
        return cls(secret, public_key, audience, issuer)

    def decode(self, token: str) -> Caller:
        """Check signature, exp, nbf, aud and iss; the caller is `sub` with the role claim."""
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError as error:
            raise AuthenticationError(f"jwt header: {error}") from None
        key = {"HS256": self.secret, "RS256": self.public_key}.get(algorithm)
        if key is None:
            raise AuthenticationError(f"jwt alg {str(algorithm)[:16]!r}: not accepted by this server")
        required = ["exp", "sub"] + (["aud"] if self.audience else []) + (["iss"] if self.issuer else [])
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": required, "verify_signature": True},
            )
        except jwt.PyJWTError as error:
            raise AuthenticationError(f"jwt: {error}") from None
        role, subject = claims.get(self.role_claim), claims.get("sub")
        if not isinstance(role, str) or not role or not isinstance(subject, str) or not subject:
            raise AuthenticationError(f"jwt: claims 'sub' and {self.role_claim!r} must be non-empty strings")
        return Caller(subject, role)


class _VerifiedKeys:
    """A bounded memo of presented keys already checked, keyed by an HMAC under a per-process secret.

    scrypt is slow on purpose; without this every call would pay it once per stored key.
    """

    def __init__(self, size: int = VERIFIED_CACHE_SIZE) -> None:
        self._secret = os.urandom(32)
        self._size = size
        self._seen: OrderedDict[bytes, Caller | None] = OrderedDict()
        self._lock = threading.Lock()

    def tag(self, key: bytes) -> bytes:
        return hmac.new(self._secret, key, hashlib.sha256).digest()

    def get(self, tag: bytes) -> tuple[bool, Caller | None]:
        with self._lock:
            if tag not in self._seen:
                return False, None
            self._seen.move_to_end(tag)
            return True, self._seen[tag]

    def put(self, tag: bytes, caller: Caller | None) -> None:
        with self._lock:
            self._seen[tag] = caller
            while len(self._seen) > self._size:
                self._seen.popitem(last=False)


@dataclass
class AuthConfig:
    """API keys (from `api_keys_path`) and/or JWT settings; `authenticate` turns call metadata into a Caller."""

    api_keys_path: str | Path | None = None
    jwt: JwtConfig | None = None
    # the keys and the memo of keys checked against them, swapped together as one reference on reload
    _state: tuple[tuple[StoredKey, ...], _VerifiedKeys] = field(default=((), None), init=False, repr=False)

    def __post_init__(self) -> None:
        if self.api_keys_path is None and self.jwt is None:
            raise InputError("auth: no API key file and no JWT settings; give at least one")
        keys = load_api_keys(self.api_keys_path) if self.api_keys_path is not None else ()
        self._state = (keys, _VerifiedKeys())

    def reload(self) -> bool:
        """Re-read the API key file (atomic swap); a broken file keeps the old keys and logs why."""
        if self.api_keys_path is None:
            return True
        try:
            keys = load_api_keys(self.api_keys_path)
        except InputError as error:
            LOG.error("api keys not reloaded, keeping the previous ones: %s", error)
            return False
        self._state = (keys, _VerifiedKeys())
        LOG.info("api keys reloaded from %s: %d keys", self.api_keys_path, len(keys))
        return True

    def _check_api_key(self, key: str) -> Caller:
        stored_keys, verified = self._state
        if not stored_keys:
            raise AuthenticationError("api keys are not enabled on this server")
        presented = key.encode()
        tag = verified.tag(presented)
        known, caller = verified.get(tag)
        if not known:
            caller = next((Caller(stored.id, stored.role) for stored in stored_keys if stored.matches(presented)), None)
            verified.put(tag, caller)
        if caller is None:
            raise AuthenticationError("api key: matches no stored hash")
        return caller

    def authenticate(self, metadata: Metadata | None) -> Caller:
        """The Caller of `authorization: Bearer <jwt>` / `authorization: ApiKey <key>` / `x-api-key: <key>`."""
        found: dict[str, list[str]] = {}
        for key, value in metadata or ():
            if key in ("authorization", "x-api-key"):
                found.setdefault(key, []).append(value if isinstance(value, str) else "")
        if not found:
            raise AuthenticationError("no authorization or x-api-key metadata")
        if sum(map(len, found.values())) > 1:
            raise AuthenticationError("more than one credential in the metadata")
        ((name, (value,)),) = found.items()
        if len(value) > MAX_CREDENTIAL_CHARS:
            raise AuthenticationError(f"{name}: longer than {MAX_CREDENTIAL_CHARS} characters")
        if name == "x-api-key":
            return self._check_api_key(value.strip())
        scheme, _, credential = value.strip().partition(" ")
        credential = credential.strip()
        if not credential:
            raise AuthenticationError("authorization: no credential after the scheme")
        if scheme.lower() == "apikey":
            return self._check_api_key(credential)
        if scheme.lower() == "bearer":
            if self.jwt is None:
                raise AuthenticationError("bearer tokens are not enabled on this server")
            return self.jwt.decode(credential)
        raise AuthenticationError("authorization: unknown scheme; expected Bearer or ApiKey")
