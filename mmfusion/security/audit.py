"""Tamper-evident audit log: JSON lines in a sha256 hash chain, rotated by size, sensitive fields encrypted."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from mmfusion.security.crypto import FieldCipher, fsync_dir

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
RESERVED = ("seq", "time", "prev_hash", "hash")
_TAIL_CHUNK = 64 * 1024


class AuditError(ValueError):
    """An audit log that cannot be opened or appended to; the message names the file and the problem."""


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes a record's hash is computed over: sorted-key compact JSON of every field but `hash`."""
    body = {key: value for key, value in record.items() if key != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical form of a record; it covers `prev_hash`, which chains the records."""
    return hashlib.sha256(canonical(record)).hexdigest()


def field_aad(seq: int, field: str) -> bytes:
    """Associated data binding an encrypted field to its record and name (no moving values around)."""
    return f"audit:{seq}:{field}".encode()


def rotated_paths(path: str | Path) -> list[Path]:
    """The files of one log, oldest first: path.N, ..., path.1, path."""
    path = Path(path)
    numbered = []
    prefix = f"{path.name}."
    for candidate in path.parent.iterdir() if path.parent.is_dir() else []:
        suffix = candidate.name[len(prefix) :]
        if candidate.name.startswith(prefix) and suffix.isdigit():
            numbered.append((int(suffix), candidate))
    files = [candidate for _, candidate in sorted(numbered, reverse=True)]
    return files + ([path] if path.exists() else [])


class AuditLog:
    """Append-only JSONL audit log whose records are chained by sha256 across rotated files."""

    SENSITIVE = frozenset({"result", "text", "transcript", "excerpt", "payload", "report", "detail"})

    def __init__(
        self,
        path: str | Path,
        cipher: FieldCipher | None = None,
        fsync: Literal["always", "never"] = "always",
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if fsync not in ("always", "never"):
            raise AuditError(f"audit fsync {fsync!r}: expected 'always' or 'never'")
        if max_bytes < 1024:
            raise AuditError(f"audit max_bytes {max_bytes}: expected at least 1024")
        self.path = Path(path)
        self.cipher = cipher
        self.fsync = fsync
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repaired_bytes = _repair_tail(self.path)
        last = _last_record(self.path) or _last_record(self.path.with_name(f"{self.path.name}.1"))
        self._next_seq = last["seq"] + 1 if last else 0
        self._prev_hash = last["hash"] if last else GENESIS_HASH
        self._fd: int | None = self._open()
        if repaired_bytes:
            log.warning("audit log %s: removed an incomplete last line (%d bytes)", self.path, repaired_bytes)
            self.append({"kind": "audit", "action": "repair", "truncated_bytes": repaired_bytes})

    def append(self, event: dict[str, Any]) -> str:
        """Add one event (time, seq and the chain hashes are filled in) and return its hash."""
        clash = [key for key in RESERVED if key in event]
        if clash:
            raise AuditError(f"audit event field {clash[0]!r} is reserved; rename it")
        # A JSON round trip makes the hashed form exactly what a reader will parse back.
        fields = json.loads(json.dumps(event, default=str))
        with self._lock:
            if self._fd is None:
                raise AuditError(f"audit log {str(self.path)!r} is closed")
            seq = self._next_seq
            for name in self.SENSITIVE & fields.keys():
                if self.cipher is not None and fields[name] is not None:
                    fields[name] = {"enc": self.cipher.encrypt_value(fields[name], field_aad(seq, name))}
            record = {**fields, "seq": seq, "time": _now(), "prev_hash": self._prev_hash}
            record["hash"] = record_hash(record)
            line = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
            size = os.fstat(self._fd).st_size
            if size and size + len(line) > self.max_bytes:
                self._rotate()
            _write_all(self._fd, line)
            if self.fsync == "always":
                os.fsync(self._fd)
            self._next_seq = seq + 1
            self._prev_hash = record["hash"]
            return record["hash"]

    def close(self) -> None:
        """Flush and close the file; later appends raise AuditError."""
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> int:
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if created:
            fsync_dir(self.path.parent)
        return fd

    def _rotate(self) -> None:
        """path -> path.1, path.1 -> path.2, ...; the chain state stays in memory and continues."""
        os.fsync(self._fd)
        os.close(self._fd)
        for older in rotated_paths(self.path)[:-1]:  # highest number first, so no rename overwrites
            number = int(older.name[len(self.path.name) + 1 :])
            os.rename(older, older.with_name(f"{self.path.name}.{number + 1}"))
        os.rename(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._fd = self._open()


def decrypt_record(record: dict[str, Any], cipher: FieldCipher) -> dict[str, Any]:
    """A copy of a record with its encrypted fields decrypted."""
    plain = dict(record)
    for name, value in record.items():
        if isinstance(value, dict) and set(value) == {"enc"}:
            plain[name] = cipher.decrypt_value(value["enc"], field_aad(record["seq"], name))
    return plain


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of `verify`: ok, how many records checked out, and the first problem found."""

    ok: bool
    records: int
    problem: str | None = None


@dataclass
class _Line:
    path: Path
    number: int
    text: bytes
    last_in_file: bool


def verify(paths: list[str | Path], allow_partial: bool = False) -> VerifyReport:
    """Check the hash chain over files given oldest first; report the first edited/removed/reordered record.

    `allow_partial` accepts a first record that is not the genesis record (older files deleted).
    """
    paths = [Path(path) for path in paths]
    for path in paths:
        if not path.is_file():
            raise AuditError(f"audit file {str(path)!r} does not exist")
    later_seqs = _all_seqs(paths)
    records = 0
    expected_seq, prev_hash, previous_seq = 0, GENESIS_HASH, None
    for line in _lines(paths):
        where = f"{line.path}:{line.number}"
        record = _parse(line.text)
        if record is None:
            if line.last_in_file and line.path == paths[-1] and not line.text.endswith(b"\n"):
                return VerifyReport(False, records, f"{where}: incomplete last line (torn write)")
            return VerifyReport(False, records, f"{where}: not a JSON audit record (corrupted)")
        seq = record["seq"]
        later_seqs[seq] -= 1
        if record_hash(record) != record["hash"]:
            return VerifyReport(False, records, f"{where}: record seq {seq} was edited (hash mismatch)")
        if previous_seq is None and allow_partial:
            expected_seq, prev_hash = seq, record["prev_hash"]
        if seq < expected_seq:
            return VerifyReport(False, records, f"{where}: records reordered: seq {seq} comes after seq {previous_seq}")
        if seq > expected_seq:
            if later_seqs.get(expected_seq, 0) > 0:
                return VerifyReport(
                    False, records, f"{where}: records reordered: seq {seq} comes before seq {expected_seq}"
                )
            missing = f"seq {expected_seq}" if seq == expected_seq + 1 else f"seq {expected_seq}..{seq - 1}"
            return VerifyReport(False, records, f"{where}: records removed: {missing} missing before seq {seq}")
        if record["prev_hash"] != prev_hash:
            before = f"seq {previous_seq}" if previous_seq is not None else "the genesis hash"
            problem = f"{where}: record seq {seq} does not chain to {before} (a record was removed or replaced)"
            return VerifyReport(False, records, problem)
        records += 1
        expected_seq, prev_hash, previous_seq = seq + 1, record["hash"], seq
    return VerifyReport(True, records)


def _parse(text: bytes) -> dict[str, Any] | None:
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


def _lines(paths: list[Path]) -> Iterator[_Line]:
    for path in paths:
        with open(path, "rb") as handle:
            current = handle.readline()
            number = 1
            while current:
                following = handle.readline()
                if current.strip():
                    yield _Line(path, number, current, last_in_file=not following)
                current, number = following, number + 1


def _all_seqs(paths: list[Path]) -> dict[int, int]:
    """How many times each seq occurs (to tell a reordered record from a removed one)."""
    counts: dict[int, int] = {}
    for line in _lines(paths):
        record = _parse(line.text)
        if record is not None:
            counts[record["seq"]] = counts.get(record["seq"], 0) + 1
    return counts


def _repair_tail(path: Path) -> int:
    """Cut an incomplete last line (a write torn by a crash) off the file; return how many bytes went."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as handle:
        end = _tail_start(handle, size)
        handle.seek(end)
        tail = handle.read()
        if not tail:
            return 0
        # A record whose newline alone was lost is complete: finish the line instead of dropping it.
        record = _parse(tail)
        if record is not None and record_hash(record) == record["hash"]:
            handle.seek(size)
            handle.write(b"\n")
            handle.flush()
            os.fsync(handle.fileno())
            return 0
        handle.truncate(end)
        handle.flush()
        os.fsync(handle.fileno())
        return size - end


def _tail_start(handle, size: int) -> int:
    """Offset just after the last newline of an open file (0 when it has none)."""
    position = size
    while position > 0:
        start = max(0, position - _TAIL_CHUNK)
        handle.seek(start)
        chunk = handle.read(position - start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


def _last_record(path: Path) -> dict[str, Any] | None:
    """The last record of a file whose lines are all complete, or None for a missing or empty file."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    size = path.stat().st_size
    with open(path, "rb") as handle:
        # The file ends with a newline (repaired), so the last line starts after the newline before it.
        start = _tail_start(handle, size - 1)
        handle.seek(start)
        text = handle.read()
    record = _parse(text)
    if record is None:
        raise AuditError(
            f"audit log {str(path)!r}: the last line is not an audit record; "
            "run `mmfusion audit verify` on it and move the file aside"
        )
    return record


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
