"""Encryption at rest: master keys by id, envelope encryption (AES-256-GCM), key rotation and rewrap."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any

import yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mmfusion.security.files import check_private

log = logging.getLogger(__name__)

ENV_VAR = "MMFUSION_MASTER_KEY"
ENV_KEY_ID = "env"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
VERSION = 1
WRAPPED_KEY_BYTES = NONCE_BYTES + KEY_BYTES + TAG_BYTES
_PAYLOAD_CONTEXT = b"mmfusion/payload/v1:"
_WRAP_CONTEXT = b"mmfusion/data-key/v1:"
_KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class CryptoError(ValueError):
    """Encrypted data or a key store that cannot be used; the message says which and why."""


def atomic_write(path: str | Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a part of either."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _decode_key(key_id: str, encoded: Any, source: str) -> bytes:
    if not isinstance(encoded, str):
        raise CryptoError(f"{source}: key {key_id!r} must be a base64 string, got {type(encoded).__name__}")
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise CryptoError(f"{source}: key {key_id!r} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise CryptoError(f"{source}: key {key_id!r} is {len(key)} bytes; expected {KEY_BYTES} (AES-256)")
    return key


class KeyStore:
    """Master keys by key id; the active one wraps new data keys, all of them unwrap old ones."""

    def __init__(self, keys: dict[str, bytes], active: str, source: str = "key store") -> None:
        if not keys:
            raise CryptoError(f"{source}: no keys; expected at least one")
        for key_id, key in keys.items():
            if not _KEY_ID_PATTERN.match(key_id):
                raise CryptoError(f"{source}: key id {key_id!r} must be 1-64 characters of A-Z a-z 0-9 . _ -")
            if len(key) != KEY_BYTES:
                raise CryptoError(f"{source}: key {key_id!r} is {len(key)} bytes; expected {KEY_BYTES}")
        if active not in keys:
            raise CryptoError(f"{source}: active key {active!r} is not one of the keys ({', '.join(sorted(keys))})")
        self.keys = dict(keys)
        self.active_id = active
        self.source = source

    @classmethod
    def generate(cls, key_id: str = "k1") -> KeyStore:
        """A new key store with one random master key."""
        return cls({key_id: secrets.token_bytes(KEY_BYTES)}, key_id)

    @classmethod
    def from_file(cls, path: str | Path) -> KeyStore:
        """Load a key file (JSON or YAML): {active: id, keys: {id: base64 of 32 bytes}}."""
        path = Path(path)
        source = f"key file {str(path)!r}"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CryptoError(f"{source} does not exist; create one with `mmfusion keys generate FILE`") from None
        check_private(path, "key file", CryptoError)  # master keys other users can read or swap are refused
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise CryptoError(f"{source} is not valid JSON or YAML: {' '.join(str(error).split())}") from None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), dict):
            raise CryptoError(f"{source}: expected a mapping {{active: id, keys: {{id: base64}}}}")
        keys = {str(key_id): _decode_key(str(key_id), value, source) for key_id, value in document["keys"].items()}
        return cls(keys, str(document.get("active", "")), source)

    @classmethod
    def from_env(cls, var: str = ENV_VAR) -> KeyStore:
        """One master key (id "env") from an environment variable holding base64 of 32 bytes."""
        encoded = os.environ.get(var)
        if not encoded:
            raise CryptoError(
                f"environment variable {var} is not set; expected base64 of a {KEY_BYTES}-byte key "
                "(e.g. the output of `python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'`)"
            )
        return cls({ENV_KEY_ID: _decode_key(ENV_KEY_ID, encoded.strip(), f"environment variable {var}")}, ENV_KEY_ID)

    def save(self, path: str | Path) -> None:
        """Write the key store atomically as JSON (also valid YAML), readable by the owner only."""
        document = {"active": self.active_id, "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()}}
        atomic_write(path, (json.dumps(document, indent=2) + "\n").encode(), mode=0o600)

    def add_key(self) -> str:
        """Add a random master key under the next free id `kN`, make it active and return its id."""
        numbers = [int(key_id[1:]) for key_id in self.keys if re.fullmatch(r"k\d+", key_id)]
        key_id = f"k{max(numbers, default=0) + 1}"
        self.keys[key_id] = secrets.token_bytes(KEY_BYTES)
        self.active_id = key_id
        return key_id

    def master_key(self, key_id: str) -> bytes:
        """The master key with this id; unknown ids raise CryptoError."""
        if key_id not in self.keys:
            raise CryptoError(
                f"encrypted data names master key {key_id!r}, which {self.source} does not have "
                f"(it has {', '.join(sorted(self.keys))}); use the key file it was encrypted with"
            )
        return self.keys[key_id]

    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt under a fresh data key wrapped by the active master key; `aad` must match at decrypt."""
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, _PAYLOAD_CONTEXT + aad)
        return self._header(self.active_id, data_key) + nonce + ciphertext

    def decrypt(self, blob: bytes, aad: bytes = b"") -> bytes:
        """Decrypt a blob from `encrypt`; tampering, a wrong key or a wrong `aad` raise CryptoError."""
        key_id, wrapped, body = _split(blob)
        data_key = self._unwrap(key_id, wrapped)
        nonce, ciphertext = body[:NONCE_BYTES], body[NONCE_BYTES:]
        try:
            return AESGCM(data_key).decrypt(nonce, ciphertext, _PAYLOAD_CONTEXT + aad)
        except InvalidTag:
            raise CryptoError(
                "encrypted data failed authentication: the ciphertext was changed or belongs to another context"
            ) from None

    def rewrap_blob(self, blob: bytes) -> bytes:
        """The same blob with its data key wrapped by the active master key; the payload is not touched."""
        key_id, wrapped, body = _split(blob)
        if key_id == self.active_id:
            return blob
        return self._header(self.active_id, self._unwrap(key_id, wrapped)) + body

    def encrypt_file(self, src_bytes: bytes, dest_path: str | Path, aad: bytes = b"") -> None:
        """Encrypt `src_bytes` into `dest_path`, replacing it atomically."""
        atomic_write(dest_path, self.encrypt(src_bytes, aad))

    def decrypt_file(self, path: str | Path, aad: bytes = b"") -> bytes:
        """The plaintext of a file written by `encrypt_file`."""
        blob = Path(path).read_bytes()
        try:
            return self.decrypt(blob, aad)
        except CryptoError as error:
            raise CryptoError(f"file {str(path)!r}: {error}") from None

    def _header(self, key_id: str, data_key: bytes) -> bytes:
        encoded_id = key_id.encode()
        prefix = bytes([VERSION, len(encoded_id)]) + encoded_id
        wrap_nonce = os.urandom(NONCE_BYTES)
        wrapped = AESGCM(self.keys[key_id]).encrypt(wrap_nonce, data_key, _WRAP_CONTEXT + prefix)
        return prefix + wrap_nonce + wrapped

    def _unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        encoded_id = key_id.encode()
        prefix = bytes([VERSION, len(encoded_id)]) + encoded_id
        try:
            return AESGCM(self.master_key(key_id)).decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _WRAP_CONTEXT + prefix
            )
        except InvalidTag:
            raise CryptoError(
                f"the data key wrapped by master key {key_id!r} failed authentication: "
                "the key file holds a different key under that id, or the data was changed"
            ) from None


def _split(blob: bytes) -> tuple[str, bytes, bytes]:
    """(key id, wrapped data key, nonce + ciphertext + tag) of a blob; malformed blobs raise CryptoError."""
    if len(blob) < 2:
        raise CryptoError(f"encrypted data is {len(blob)} bytes: too short to be an mmfusion blob")
    if blob[0] != VERSION:
        raise CryptoError(f"encrypted data has format version {blob[0]}; expected {VERSION}")
    id_end = 2 + blob[1]
    body_start = id_end + WRAPPED_KEY_BYTES
    if len(blob) < body_start + NONCE_BYTES + TAG_BYTES:
        raise CryptoError(f"encrypted data is {len(blob)} bytes: truncated")
    try:
        key_id = blob[2:id_end].decode()
    except UnicodeDecodeError:
        raise CryptoError("encrypted data has a damaged key id") from None
    return key_id, blob[id_end:body_start], blob[body_start:]


def rotate(keystore_path: str | Path) -> str:
    """Add a new master key to a key file, make it active (old keys stay for decryption); return its id."""
    keystore = KeyStore.from_file(keystore_path)
    key_id = keystore.add_key()
    keystore.save(keystore_path)
    return key_id


def rewrap(paths: list[str | Path], keystore: KeyStore) -> int:
    """Re-wrap the data keys of encrypted files under the active master key; return how many changed."""
    changed = 0
    for path in paths:
        blob = Path(path).read_bytes()
        try:
            rewrapped = keystore.rewrap_blob(blob)
        except CryptoError as error:
            raise CryptoError(f"file {str(path)!r}: {error}") from None
        if rewrapped != blob:
            atomic_write(path, rewrapped)
            changed += 1
    return changed


class FieldCipher:
    """Encrypts single values (e.g. audit-log fields) with the key store; each value gets its own data key."""

    def __init__(self, keystore: KeyStore) -> None:
        self.keystore = keystore

    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Envelope-encrypt bytes."""
        return self.keystore.encrypt(plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes = b"") -> bytes:
        """Decrypt bytes from `encrypt`."""
        return self.keystore.decrypt(blob, aad)

    def encrypt_value(self, value: Any, aad: bytes = b"") -> str:
        """Encrypt a JSON value; the result is a base64 string."""
        plaintext = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        return base64.b64encode(self.encrypt(plaintext, aad)).decode()

    def decrypt_value(self, encoded: str, aad: bytes = b"") -> Any:
        """The JSON value encrypted by `encrypt_value`."""
        try:
            blob = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise CryptoError("encrypted field is not valid base64") from None
        return json.loads(self.decrypt(blob, aad))
