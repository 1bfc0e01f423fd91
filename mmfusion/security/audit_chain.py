"""The audit chain's parts: keyed record hashes (HMAC-SHA256 from the key store), the signed head checkpoint."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mmfusion.security.crypto import CryptoError, KeyStore, fsync_dir

GENESIS_HASH = "0" * 64
RESERVED = ("seq", "time", "prev_hash", "hash", "key_id")
CHAIN_KEY_INFO = b"mmfusion/audit-chain/v1"
HEAD_CONTEXT = b"mmfusion/audit-head/v1\n"
HEAD_SUFFIX = ".head"


class AuditError(ValueError):
    """An audit log that cannot be opened or appended to; the message names the file and the problem."""


class ChainKeys:
    """HMAC-SHA256 keys of the audit chain by master key id, derived with HKDF from a key store (no new secret)."""

    def __init__(self, keystore: KeyStore) -> None:
        self.keystore = keystore
        self._derived: dict[str, bytes] = {}

    @property
    def active_id(self) -> str:
        """The id of the master key new records are keyed with."""
        return self.keystore.active_id

    def key(self, key_id: str) -> bytes:
        """The chain key derived from master key `key_id`; an id the key store lacks raises CryptoError."""
        if key_id not in self._derived:
            master = self.keystore.master_key(key_id)
            hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=CHAIN_KEY_INFO)
            self._derived[key_id] = hkdf.derive(master)
        return self._derived[key_id]


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes a record's hash is computed over: sorted-key compact JSON of every field but `hash`."""
    return _json({key: value for key, value in record.items() if key != "hash"})


def _mac(data: bytes, key_id: Any, keys: ChainKeys | None) -> str:
    """HMAC-SHA256 under the chain key of `key_id`, or plain sha256 when `key_id` is None (an unkeyed chain)."""
    if key_id is None:
        return hashlib.sha256(data).hexdigest()
    if keys is None:
        raise AuditError(f"keyed with master key {key_id!r}: give the key file or variable to check it")
    return hmac.new(keys.key(key_id), data, hashlib.sha256).hexdigest()


def record_hash(record: dict[str, Any], keys: ChainKeys | None = None) -> str:
    """The chain hash of a record (it covers `prev_hash`): HMAC-SHA256 when it names a `key_id`, else sha256."""
    return _mac(canonical(record), record.get("key_id"), keys)


def authenticity_problem(record: dict[str, Any], keys: ChainKeys | None) -> str | None:
    """Why a record's hash does not prove it was written by a holder of the chain key, or None when it does."""
    seq, key_id = record["seq"], record.get("key_id")
    if key_id is not None and not isinstance(key_id, str):
        return f"record seq {seq} has a malformed key_id (corrupted or forged)"
    if key_id is None and keys is not None:
        return f"record seq {seq} has no chain key (an unkeyed record in a keyed log: forged, or written without a key)"
    if key_id is not None and keys is None:
        return f"record seq {seq} is keyed with master key {key_id!r}: give its key file or variable to verify it"
    try:
        expected = record_hash(record, keys)
    except CryptoError:
        return f"record seq {seq} names master key {key_id!r}, which the key store does not have (a wrong key file?)"
    if hmac.compare_digest(expected, record["hash"]):
        return None
    if key_id is None:
        return f"record seq {seq} was edited (hash mismatch)"
    return f"record seq {seq} fails authentication (edited or forged, or written with another key)"


def is_segment(record: dict[str, Any]) -> bool:
    """Whether a record starts a new segment of the chain after a recorded loss (see AuditLog's new_segment)."""
    return record.get("kind") == "audit" and record.get("action") == "new_segment"


@dataclass(frozen=True)
class Head:
    """The head checkpoint: the seq and hash of the log's newest record, authenticated like the records."""

    seq: int
    hash: str
    key_id: str | None
    time: str


def head_path(log_path: str | Path) -> Path:
    """Where the head checkpoint of a log lives: `<log>.head` beside its current file."""
    log_path = Path(log_path)
    return log_path.with_name(log_path.name + HEAD_SUFFIX)


def _head_body(head: Head) -> dict[str, Any]:
    body: dict[str, Any] = {"seq": head.seq, "hash": head.hash, "time": head.time}
    if head.key_id is not None:
        body["key_id"] = head.key_id
    return body


def write_head(path: Path, head: Head, keys: ChainKeys | None, sync: bool) -> None:
    """Replace the head checkpoint atomically (a temporary file renamed over it); `sync` fsyncs it first."""
    body = _head_body(head)
    body["mac"] = _mac(HEAD_CONTEXT + _json(body), head.key_id, keys)
    temporary = path.with_name(f".{path.name}.tmp")
    existed = path.exists()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        data = memoryview(_json(body) + b"\n")
        while data:
            data = data[os.write(fd, data) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
    if sync and not existed:
        fsync_dir(path.parent)  # a checkpoint lost with its first rename would look like a deleted one


def read_head(path: Path, keys: ChainKeys | None) -> Head | None:
    """The head checkpoint at `path`, None when there is none; a damaged or unauthentic one raises AuditError."""
    where = f"head checkpoint {str(path)!r}"
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise AuditError(f"{where} cannot be read: {error.strerror or error}") from None
    try:
        body = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        body = None
    fields = {"seq": int, "hash": str, "time": str, "mac": str}
    if not isinstance(body, dict) or not all(isinstance(body.get(name), kind) for name, kind in fields.items()):
        raise AuditError(f"{where} is damaged (not a head checkpoint)")
    key_id = body.get("key_id")
    if key_id is None and keys is not None:
        raise AuditError(f"{where} has no chain key (forged, or written without a key)")
    if key_id is not None and not isinstance(key_id, str):
        raise AuditError(f"{where} has a malformed key_id")
    head = Head(body["seq"], body["hash"], key_id, body["time"])
    try:
        expected = _mac(HEAD_CONTEXT + _json(_head_body(head)), key_id, keys)
    except CryptoError:
        raise AuditError(f"{where} names master key {key_id!r}, which the key store does not have") from None
    except AuditError as error:
        raise AuditError(f"{where} is {error}") from None
    if not hmac.compare_digest(expected, body["mac"]):
        raise AuditError(f"{where} fails authentication (edited or forged, or written with another key)")
    return head


def parse_record(text: bytes) -> dict[str, Any] | None:
    """A record with integer seq and string hashes, or None when the line is not one."""
    try:
        record = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    if not isinstance(record.get("seq"), int) or not all(isinstance(record.get(k), str) for k in ("hash", "prev_hash")):
        return None
    return record


@dataclass
class Line:
    """One non-blank line of a log file, with where it is."""

    path: Path
    number: int
    text: bytes
    last_in_file: bool


def lines(paths: list[Path]) -> Iterator[Line]:
    """The non-blank lines of the files, in order."""
    for path in paths:
        with open(path, "rb") as handle:
            current = handle.readline()
            number = 1
            while current:
                following = handle.readline()
                if current.strip():
                    yield Line(path, number, current, last_in_file=not following)
                current, number = following, number + 1
