"""Audit log: hash chain, tamper reports, rotation, crash repair, encrypted sensitive fields, thread safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mmfusion.security.audit import (
    GENESIS_HASH,
    AuditError,
    AuditLog,
    decrypt_record,
    record_hash,
    rotated_paths,
    verify,
)
from mmfusion.security.crypto import FieldCipher, KeyStore

REPO = Path(__file__).resolve().parents[2]


def call_event(i: int) -> dict:
    return {
        "kind": "call",
        "caller": "camera-7",
        "role": "operator",
        "rpc": "Inspect",
        "model": "pcb-inspect",
        "version": "1",
        "input_sha256": f"{i:064x}",
        "result": f"ok {i}",
        "status": "OK",
        "latency_ms": 1.5 + i,
    }


def write_log(path: Path, count: int, **options) -> None:
    with AuditLog(path, **options) as audit:
        for i in range(count):
            audit.append(call_event(i))


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_append_builds_a_verifiable_chain(tmp_path):
    path = tmp_path / "audit.log"
    with AuditLog(path) as audit:
        hashes = [audit.append(call_event(i)) for i in range(5)]
    records = [json.loads(line) for line in read_lines(path)]
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    assert records[0]["prev_hash"] == GENESIS_HASH
    assert [r["hash"] for r in records] == hashes
    assert all(records[i]["prev_hash"] == records[i - 1]["hash"] for i in range(1, 5))
    assert all(record_hash(r) == r["hash"] for r in records)
    assert records[2]["latency_ms"] == 3.5 and records[2]["time"].endswith("+00:00")
    assert path.stat().st_mode & 0o777 == 0o600
    assert verify([path]) == verify([path]).__class__(ok=True, records=5, problem=None)


def test_reopening_continues_the_chain(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 3)
    write_log(path, 2)
    records = [json.loads(line) for line in read_lines(path)]
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    assert verify([path]).ok


def test_edited_record_is_reported(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 5)
    lines = read_lines(path)
    lines[2] = lines[2].replace('"ok 2"', '"ok but edited"')
    path.write_text("".join(lines))
    report = verify([path])
    assert not report.ok and report.records == 2
    assert report.problem == f"{path}:3: record seq 2 was edited (hash mismatch)"


def test_edited_record_with_recomputed_hash_breaks_the_next_link(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 4)
    lines = read_lines(path)
    record = json.loads(lines[1])
    record["status"] = "PERMISSION_DENIED"
    record["hash"] = record_hash(record)
    lines[1] = json.dumps(record) + "\n"
    path.write_text("".join(lines))
    report = verify([path])
    assert report.problem == f"{path}:3: record seq 2 does not chain to seq 1 (a record was removed or replaced)"


def test_deleted_record_is_reported(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 5)
    lines = read_lines(path)
    del lines[2]
    path.write_text("".join(lines))
    report = verify([path])
    assert not report.ok and report.records == 2
    assert report.problem == f"{path}:3: records removed: seq 2 missing before seq 3"


def test_deleted_first_record_is_reported(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 3)
    path.write_text("".join(read_lines(path)[1:]))
    assert verify([path]).problem == f"{path}:1: records removed: seq 0 missing before seq 1"
    assert verify([path], allow_partial=True) == verify([path], allow_partial=True).__class__(True, 2)


def test_swapped_records_are_reported_as_reordered(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 5)
    lines = read_lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    path.write_text("".join(lines))
    report = verify([path])
    assert not report.ok and report.records == 1
    assert report.problem == f"{path}:2: records reordered: seq 2 comes before seq 1"


def test_record_moved_back_is_reported_as_reordered(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 4)
    lines = read_lines(path)
    lines.append(lines[1])  # a replayed copy of seq 1 at the end
    path.write_text("".join(lines))
    assert verify([path]).problem == f"{path}:5: records reordered: seq 1 comes after seq 3"


def test_rotation_keeps_the_chain_across_files(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 40, max_bytes=2048)
    files = rotated_paths(path)
    assert len(files) >= 3 and files[-1] == path and files[-2].name == "audit.log.1"
    assert all(f.stat().st_size <= 2048 for f in files)
    assert verify(files) == verify(files).__class__(True, 40)
    write_log(path, 5, max_bytes=2048)  # reopening after rotation continues the same chain
    files = rotated_paths(path)
    assert verify(files).records == 45
    first_of_current = json.loads(read_lines(path)[0])
    last_of_previous = json.loads(read_lines(files[-2])[-1])
    assert first_of_current["prev_hash"] == last_of_previous["hash"]


def test_rotated_files_out_of_order_or_missing_are_reported(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 40, max_bytes=2048)
    files = rotated_paths(path)
    newest_first = verify(files[::-1])
    assert (
        newest_first.problem.startswith(f"{path}:1: records reordered: seq ")
        and "comes before seq 0" in newest_first.problem
    )
    report = verify(files[:1] + files[2:])
    assert not report.ok and report.problem.startswith(f"{files[2]}:1: records removed: seq ")


def test_incomplete_last_line_is_reported_and_repaired(tmp_path, caplog):
    path = tmp_path / "audit.log"
    write_log(path, 3)
    complete = path.read_bytes()
    with open(path, "ab") as handle:
        handle.write(b'{"seq": 3, "kind": "call", "res')  # a write torn by a crash
    report = verify([path])
    assert report == report.__class__(False, 3, f"{path}:4: incomplete last line (torn write)")
    with AuditLog(path) as audit:
        audit.append(call_event(99))
    assert path.read_bytes().startswith(complete)
    records = [json.loads(line) for line in read_lines(path)]
    assert records[3]["action"] == "repair" and records[3]["truncated_bytes"] == 31
    assert records[4]["result"] == "ok 99" and records[4]["seq"] == 4
    assert verify([path]).ok and verify([path]).records == 5
    assert "removed an incomplete last line" in caplog.text


def test_record_missing_only_its_newline_is_kept(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 2)
    path.write_bytes(path.read_bytes()[:-1])
    AuditLog(path).close()
    assert verify([path]) == verify([path]).__class__(True, 2)


CRASH_WRITER = textwrap.dedent(
    """
    import sys
    from mmfusion.security.audit import AuditLog
    audit = AuditLog(sys.argv[1], fsync="never")
    i = 0
    while True:
        audit.append({"kind": "call", "result": "x" * 20000, "n": i})
        if i == 20:
            print("ready", flush=True)
        i += 1
    """
)


def test_crash_mid_write_loses_at_most_the_torn_record(tmp_path):
    path = tmp_path / "audit.log"
    writer = subprocess.Popen(
        [sys.executable, "-c", CRASH_WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.wait(timeout=10)
        writer.stdout.close()
    report = verify([path])
    assert report.ok or report.problem.endswith("incomplete last line (torn write)"), report.problem
    assert report.records > 20
    intact = path.read_bytes()
    intact = intact[: intact.rfind(b"\n") + 1]
    AuditLog(path).close()
    assert path.read_bytes().startswith(intact)
    after = verify([path])
    assert after.ok and after.records >= report.records


def test_sensitive_fields_are_encrypted(tmp_path):
    path = tmp_path / "audit.log"
    cipher = FieldCipher(KeyStore.generate())
    marker = "CUSTOMER-SECRET-7f3a"
    with AuditLog(path, cipher=cipher) as audit:
        audit.append({**call_event(0), "result": f"defect at {marker}", "text": f"note {marker}"})
        audit.append({"kind": "config", "action": "load", "model": "pcb-inspect", "caller": "admin"})
    data = path.read_bytes()
    assert marker.encode() not in data
    assert b"CUSTOMER" not in data
    assert verify([path]).ok
    record = json.loads(data.splitlines()[0])
    assert set(record["result"]) == {"enc"} and record["input_sha256"] == f"{0:064x}"  # not sensitive: plain
    plain = decrypt_record(record, cipher)
    assert plain["result"] == f"defect at {marker}" and plain["text"] == f"note {marker}"
    other = FieldCipher(KeyStore.generate())
    with pytest.raises(ValueError):
        decrypt_record(record, other)


def test_without_a_cipher_fields_are_kept_as_given(tmp_path):
    path = tmp_path / "audit.log"
    write_log(path, 1)
    assert json.loads(read_lines(path)[0])["result"] == "ok 0"


def test_node_id_names_the_replica_in_every_hashed_record(tmp_path):
    """Replicas each keep their own chain; `node` (serve --node-id) tells their shipped records apart."""
    keystore = KeyStore.generate()
    paths = {node: tmp_path / node / "audit.log" for node in ("replica-0", "replica-1")}
    for node, path in paths.items():
        with AuditLog(path, keystore=keystore, node_id=node) as audit:
            audit.append(call_event(0))
            with pytest.raises(AuditError, match="'node' is reserved"):
                audit.append({**call_event(1), "node": "someone-else"})
        records = [json.loads(line) for line in read_lines(path)]
        assert [record["node"] for record in records] == [node]
        assert verify([path], keystore=keystore).ok
        edited = read_lines(path)[0].replace(f'"node":"{node}"', '"node":"replica-9"')
        path.write_text(edited)
        assert not verify([path], keystore=keystore).ok  # the node is hashed: it cannot be changed unseen
    with AuditLog(tmp_path / "plain.log") as audit:  # no node id: no `node` field, and events may carry one
        audit.append({**call_event(0), "node": "given"})
    assert json.loads(read_lines(tmp_path / "plain.log")[0])["node"] == "given"
    with pytest.raises(AuditError, match="node id: empty"):
        AuditLog(tmp_path / "blank.log", node_id=" ")


def test_concurrent_appends_keep_one_chain(tmp_path):
    path = tmp_path / "audit.log"
    with AuditLog(path, fsync="never", max_bytes=8192) as audit:
        threads = [
            threading.Thread(target=lambda t=t: [audit.append({**call_event(i), "caller": f"t{t}"}) for i in range(50)])
            for t in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert verify(rotated_paths(path)) == verify(rotated_paths(path)).__class__(True, 200)


def test_misuse_raises_clear_errors(tmp_path):
    path = tmp_path / "audit.log"
    audit = AuditLog(path)
    with pytest.raises(AuditError, match="'seq' is reserved"):
        audit.append({"seq": 5})
    audit.close()
    with pytest.raises(AuditError, match="is closed"):
        audit.append({"kind": "call"})
    with pytest.raises(AuditError, match="fsync 'sometimes'"):
        AuditLog(path, fsync="sometimes")
    with pytest.raises(AuditError, match="does not exist"):
        verify([tmp_path / "absent.log"])
    path.write_text("garbage that is not json\n")
    with pytest.raises(AuditError, match="last line is not an audit record"):
        AuditLog(path)
    assert verify([path]).problem == f"{path}:1: not a JSON audit record (corrupted)"
