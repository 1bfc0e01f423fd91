"""Verify an audit log: every record authentic and chained, none removed or reordered, the end at its head."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmfusion.security.audit_chain import (
    GENESIS_HASH,
    AuditError,
    ChainKeys,
    Head,
    authenticity_problem,
    is_segment,
    lines,
    parse_record,
    read_head,
)
from mmfusion.security.crypto import KeyStore


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of `verify`: ok, how many records checked out, the first problem, and the recorded new segments."""

    ok: bool
    records: int
    problem: str | None = None
    segments: tuple[str, ...] = ()


def verify(
    paths: list[str | Path],
    allow_partial: bool = False,
    keystore: KeyStore | None = None,
    head: str | Path | None = None,
) -> VerifyReport:
    """Check the chain over files given oldest first; report the first edited/forged/removed/reordered record.

    With `keystore` every record must carry a valid HMAC under a chain key derived from it (without one,
    only an unkeyed sha256 chain verifies). `head` is the head checkpoint file: the log must reach the
    seq it names, with the hash it names, so cut records or a deleted newest file are reported.
    `allow_partial` accepts a first record that is not the genesis record (older files deleted).
    """
    paths = [Path(path) for path in paths]
    for path in paths:
        if not path.is_file():
            raise AuditError(f"audit file {str(path)!r} does not exist")
    keys = ChainKeys(keystore) if keystore is not None else None
    checkpoint = None
    if head is not None:
        try:
            checkpoint = read_head(Path(head), keys)
        except AuditError as error:
            return VerifyReport(False, 0, str(error))
        if checkpoint is None:
            return VerifyReport(
                False, 0, f"head checkpoint {str(head)!r} is missing (deleted, or the log was copied without it)"
            )
    return chain_report(paths, keys, allow_partial, checkpoint, str(head))


def chain_report(
    paths: list[Path], keys: ChainKeys | None, allow_partial: bool, head: Head | None = None, head_name: str = ""
) -> VerifyReport:
    """`verify` over files known to exist, with chain keys and a head checkpoint already read."""
    later_seqs = _all_seqs(paths)
    records, segments = 0, []
    expected_seq, prev_hash, previous_seq = 0, GENESIS_HASH, None
    head_hash = None
    for line in lines(paths):
        where = f"{line.path}:{line.number}"
        record = parse_record(line.text)
        if record is None:
            if line.last_in_file and line.path == paths[-1] and not line.text.endswith(b"\n"):
                return VerifyReport(False, records, f"{where}: incomplete last line (torn write)")
            return VerifyReport(False, records, f"{where}: not a JSON audit record (corrupted)")
        seq = record["seq"]
        later_seqs[seq] -= 1
        problem = authenticity_problem(record, keys)
        if problem is not None:
            return VerifyReport(False, records, f"{where}: {problem}")
        if previous_seq is None and allow_partial:
            expected_seq, prev_hash = seq, record["prev_hash"]
        # A new segment (written only by a holder of the key, when an operator asked for it) may skip the
        # seqs of records lost before it, provided it names the record it follows and chains to it.
        acknowledged = (
            is_segment(record) and record.get("after_seq") == previous_seq and record["prev_hash"] == prev_hash
        )
        lost = ""
        if seq > expected_seq and acknowledged:
            lost = f" (seq {expected_seq}..{seq - 1} lost)"
        elif seq < expected_seq:
            return VerifyReport(False, records, f"{where}: records reordered: seq {seq} comes after seq {previous_seq}")
        elif seq > expected_seq:
            if later_seqs.get(expected_seq, 0) > 0:
                return VerifyReport(
                    False, records, f"{where}: records reordered: seq {seq} comes before seq {expected_seq}"
                )
            missing = f"seq {expected_seq}" if seq == expected_seq + 1 else f"seq {expected_seq}..{seq - 1}"
            return VerifyReport(False, records, f"{where}: records removed: {missing} missing before seq {seq}")
        elif record["prev_hash"] != prev_hash:
            before = f"seq {previous_seq}" if previous_seq is not None else "the genesis hash"
            problem = f"{where}: record seq {seq} does not chain to {before} (a record was removed or replaced)"
            return VerifyReport(False, records, problem)
        if is_segment(record):
            segments.append(f"{where}: seq {seq} starts a new segment{lost}: {record.get('reason', '')}")
        if head is not None and seq == head.seq:
            head_hash = record["hash"]
        records += 1
        expected_seq, prev_hash, previous_seq = seq + 1, record["hash"], seq
    if head is not None:
        problem = _head_problem(head, head_name, previous_seq, head_hash, paths[-1] if paths else None)
        if problem is not None:
            return VerifyReport(False, records, problem, tuple(segments))
    return VerifyReport(True, records, None, tuple(segments))


def _head_problem(head: Head, head_name: str, last_seq: int | None, head_hash: str | None, newest) -> str | None:
    """Whether the chain reaches the head checkpoint (it may run past it: a crash between record and checkpoint)."""
    if last_seq is None or last_seq < head.seq:
        ends = "has no records" if last_seq is None else f"ends at seq {last_seq}"
        lost = f"seq {0 if last_seq is None else last_seq + 1}..{head.seq}"
        return (
            f"{newest}: the log {ends} but its head checkpoint {head_name!r} says seq {head.seq}: records {lost} "
            "were removed (the newest records cut, or the newest file deleted)"
        )
    if head_hash != head.hash:
        return f"record seq {head.seq} does not match the head checkpoint {head_name!r} (the record was replaced)"
    return None


def _all_seqs(paths: list[Path]) -> dict[int, int]:
    """How many times each seq occurs (to tell a reordered record from a removed one)."""
    counts: dict[int, int] = {}
    for line in lines(paths):
        record = parse_record(line.text)
        if record is not None:
            counts[record["seq"]] = counts.get(record["seq"], 0) + 1
    return counts
