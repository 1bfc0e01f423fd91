"""Tamper-evident audit log: JSON lines in a keyed hash chain across rotated files, a signed head, encrypted fields."""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from mmfusion.security.audit_chain import (
    GENESIS_HASH,
    RESERVED,
    AuditError,
    ChainKeys,
    Head,
    authenticity_problem,
    canonical,
    head_path,
    parse_record,
    read_head,
    record_hash,
    write_head,
)
from mmfusion.security.audit_verify import VerifyReport, chain_report, verify
from mmfusion.security.crypto import FieldCipher, KeyStore, fsync_dir

__all__ = [
    "GENESIS_HASH",
    "RESERVED",
    "AuditError",
    "AuditLog",
    "VerifyReport",
    "canonical",
    "decrypt_record",
    "field_aad",
    "head_path",
    "record_hash",
    "rotated_paths",
    "verify",
]

log = logging.getLogger(__name__)

_TAIL_CHUNK = 64 * 1024


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
    """Append-only JSONL audit log: records chained by HMAC-SHA256 across rotated files, the newest one checkpointed.

    With a `keystore` each record's hash is an HMAC under a chain key derived from its active master key
    (HKDF, its own label), so nobody without the key can forge, edit or re-chain records; without one the
    chain is plain sha256 (a warning is logged). After every record `<path>.head` is replaced with the
    record's seq and hash, authenticated the same way. Opening a log whose newest records or files are
    gone (it no longer reaches its head) raises AuditError, unless `new_segment`: then a record of the
    loss starts a new segment of the chain, and `verify` accepts and reports it. `node_id` (a replica's
    name, e.g. its host or pod name) goes into every record as `node`, so that the logs of several
    replicas, each its own chain, can be shipped to one place and told apart.
    """

    SENSITIVE = frozenset({"result", "text", "transcript", "excerpt", "payload", "report", "detail"})

    def __init__(
        self,
        path: str | Path,
        cipher: FieldCipher | None = None,
        fsync: Literal["always", "never"] = "always",
        max_bytes: int = 64 * 1024 * 1024,
        keystore: KeyStore | None = None,
        new_segment: bool = False,
        node_id: str | None = None,
    ) -> None:
        if fsync not in ("always", "never"):
            raise AuditError(f"audit fsync {fsync!r}: expected 'always' or 'never'")
        if max_bytes < 1024:
            raise AuditError(f"audit max_bytes {max_bytes}: expected at least 1024")
        if node_id is not None and not node_id.strip():
            raise AuditError("audit node id: empty; expected the replica's name (host or pod name)")
        self.node_id = node_id
        self.path = Path(path)
        self.head_path = head_path(self.path)
        self.cipher = cipher
        self.keys = ChainKeys(keystore) if keystore is not None else None
        self.fsync = fsync
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the open file
        if self.keys is None:
            log.warning("audit log %s has no chain key: whoever can write its files can rewrite them unseen", self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repaired_bytes = _repair_tail(self.path)
        last = self._last_record()
        if last is not None and (unauthentic := authenticity_problem(last, self.keys)) is not None:
            raise AuditError(
                f"audit log {str(self.path)!r}: {unauthentic}; check the key, run `mmfusion audit verify` "
                "on its files and move them aside"
            )
        problem, head = self._head_problem(last)
        if problem is not None and not new_segment:
            raise AuditError(
                f"audit log {str(self.path)!r}: {problem}; check it with `mmfusion audit verify`, then start with "
                "a new segment (serve --audit-new-segment) to continue with the loss on the record"
            )
        self._next_seq = last["seq"] + 1 if last else 0
        self._prev_hash = last["hash"] if last else GENESIS_HASH
        self._fd = self._open()
        if problem is not None:  # first, so that it follows the newest record left and skips the lost seqs
            self._start_segment(problem, last, head)
        if repaired_bytes:
            log.warning("audit log %s: removed an incomplete last line (%d bytes)", self.path, repaired_bytes)
            self.append({"kind": "audit", "action": "repair", "truncated_bytes": repaired_bytes})

    def append(self, event: dict[str, Any]) -> str:
        """Add one event (time, seq, key id and the chain hashes are filled in), checkpoint it, return its hash.

        A record that cannot be written raises AuditError and leaves no part of itself in the file.
        """
        clash = [key for key in (*RESERVED, *(("node",) if self.node_id is not None else ())) if key in event]
        if clash:
            raise AuditError(f"audit event field {clash[0]!r} is reserved; rename it")
        # A JSON round trip makes the hashed form exactly what a reader will parse back.
        fields = json.loads(json.dumps(event, default=str))
        with self._lock:
            self._check_open()
            seq = self._next_seq
            for name in self.SENSITIVE & fields.keys():
                if self.cipher is not None and fields[name] is not None:
                    fields[name] = {"enc": self.cipher.encrypt_value(fields[name], field_aad(seq, name))}
            record = {**fields, "seq": seq, "time": _now(), "prev_hash": self._prev_hash}
            if self.node_id is not None:
                record["node"] = self.node_id
            if self.keys is not None:
                record["key_id"] = self.keys.active_id
            record["hash"] = record_hash(record, self.keys)
            line = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
            try:
                self._write(line)
            except OSError as error:
                raise AuditError(f"audit log {str(self.path)!r}: record seq {seq} not written: {error}") from error
            self._next_seq = seq + 1
            self._prev_hash = record["hash"]
            head = Head(seq, record["hash"], record.get("key_id"), record["time"])
            try:
                write_head(self.head_path, head, self.keys, sync=self.fsync == "always")
            except OSError as error:
                raise AuditError(
                    f"audit log {str(self.path)!r}: record seq {seq} written but its head checkpoint "
                    f"{str(self.head_path)!r} not: {error}"
                ) from error
            return record["hash"]

    def check(self) -> None:
        """Raise AuditError when records cannot be appended: the log is closed, or its file deleted or replaced."""
        if self._fd is not None and self._identity == _identity(self.path):
            return  # without the lock, so that callers do not queue behind an append's fsync
        with self._lock:  # confirm: a rotation may have been under way
            self._check_open()

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

    def _check_open(self) -> None:
        """The file is open and still the one at `path` (records written to a deleted file would be lost)."""
        if self._fd is None:
            raise AuditError(f"audit log {str(self.path)!r} is closed")
        if _identity(self.path) != self._identity:
            raise AuditError(
                f"audit log {str(self.path)!r} was deleted or replaced while open; nothing more is written to it "
                "(a restart reports the loss)"
            )

    def _write(self, line: bytes) -> None:
        """Append one line (rotating first when it would not fit); a failed write is cut off again."""
        size = os.fstat(self._fd).st_size
        if size and size + len(line) > self.max_bytes:
            self._rotate()
            size = 0
        try:
            _write_all(self._fd, line)
            if self.fsync == "always":
                os.fsync(self._fd)
        except OSError:
            try:  # no torn line for the next record to follow
                os.ftruncate(self._fd, size)
            except OSError:
                pass
            raise

    def _last_record(self) -> dict[str, Any] | None:
        """The newest record of the log, whichever of its files holds it (the newest may be empty or gone)."""
        for path in reversed(rotated_paths(self.path)):
            record = _last_record(path)
            if record is not None:
                return record
        return None

    def _head_problem(self, last: dict[str, Any] | None) -> tuple[str | None, Head | None]:
        """Why the log does not reach its head checkpoint (records cut, files deleted), or None; and the head."""
        try:
            head = read_head(self.head_path, self.keys)
        except AuditError as error:
            return str(error), None
        where = f"its head checkpoint {str(self.head_path)!r}"
        if head is None:
            if last is None:
                return None, None  # a new log
            return f"{where} is missing but the log has records up to seq {last['seq']}", None
        if last is None:
            return f"the log has no records but {where} says seq {head.seq}: its files were deleted", head
        if last["seq"] < head.seq:
            return (
                f"the log ends at seq {last['seq']} but {where} says seq {head.seq}: records seq "
                f"{last['seq'] + 1}..{head.seq} were removed (the newest records cut, or the newest file deleted)"
            ), head
        if last["seq"] == head.seq:
            return (None if last["hash"] == head.hash else f"record seq {head.seq} does not match {where}"), head
        # Records past the checkpoint (a crash between a record and its checkpoint) must chain from it.
        report = chain_report(rotated_paths(self.path)[-2:], self.keys, True, head, str(self.head_path))
        return (None if report.ok else report.problem), head

    def _start_segment(self, problem: str, last: dict[str, Any] | None, head: Head | None) -> None:
        """Record the loss and continue the chain after the newest record left; lost seqs are not reused."""
        after = last["seq"] if last is not None else None
        if head is not None and (after is None or head.seq > after):
            self._next_seq = head.seq + 1
        log.warning("audit log %s: %s; starting a new segment as asked", self.path, problem)
        self.append({"kind": "audit", "action": "new_segment", "reason": problem, "after_seq": after})

    def _open(self) -> int:
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if created:
            fsync_dir(self.path.parent)
        opened = os.fstat(fd)
        self._identity = (opened.st_dev, opened.st_ino)
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
        # A record whose newline alone was lost is complete (no proper prefix of a JSON object parses):
        # finish the line instead of dropping it; whether it is authentic is checked next, like any record.
        if parse_record(tail) is not None:
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
    record = parse_record(text)
    if record is None:
        raise AuditError(
            f"audit log {str(path)!r}: the last line is not an audit record; "
            "run `mmfusion audit verify` on it and move the file aside"
        )
    return record


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, None when there is none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
