"""Keyed audit chain and its head checkpoint: forged records, wrong keys, cut records, deleted files, new segments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmfusion.security import audit as audit_module
from mmfusion.security.audit import AuditError, AuditLog, head_path, record_hash, rotated_paths, verify
from mmfusion.security.crypto import KeyStore
from tests.security.test_cli_security import run as run_cli


@pytest.fixture
def keystore() -> KeyStore:
    return KeyStore.generate()


def event(i: int) -> dict:
    return {"kind": "call", "caller": "camera-7", "rpc": "Inspect", "status": "OK", "result": f"ok {i}"}


def write_log(path: Path, count: int, keystore: KeyStore | None, **options) -> None:
    with AuditLog(path, keystore=keystore, **options) as audit:
        for i in range(count):
            audit.append(event(i))


def records(*paths: Path) -> list[dict]:
    return [json.loads(line) for path in paths for line in path.read_text().splitlines()]


def cut_last_lines(path: Path, count: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-count]))


def check(path: Path, keystore: KeyStore | None, **options):
    """verify() over every file of the log, with its head checkpoint."""
    return verify(rotated_paths(path), keystore=keystore, head=head_path(path), **options)


def test_records_are_hmac_keyed_and_verify_only_with_their_key(tmp_path, keystore):
    path = tmp_path / "audit.log"
    write_log(path, 5, keystore)
    written = records(path)
    assert {r["key_id"] for r in written} == {"k1"}
    unkeyed = [record_hash({k: v for k, v in r.items() if k != "key_id"}) for r in written]
    assert all(r["hash"] != plain for r, plain in zip(written, unkeyed, strict=True))  # not a plain sha256
    assert check(path, keystore) == check(path, keystore).__class__(True, 5)
    no_key = verify([path])
    assert not no_key.ok and "record seq 0 is keyed with master key 'k1'" in no_key.problem
    wrong = KeyStore({"k1": b"\x07" * 32}, "k1")  # same key id, other key
    report = check(path, wrong)
    assert not report.ok and report.records == 0
    assert "head checkpoint" in report.problem and "fails authentication" in report.problem
    assert "record seq 0 fails authentication" in verify([path], keystore=wrong).problem
    with pytest.raises(AuditError, match="record seq 4 fails authentication"):
        AuditLog(path, keystore=wrong)


@pytest.mark.parametrize("keep_key_id", [True, False], ids=["claims-key-id", "unkeyed"])
def test_a_record_appended_without_the_key_is_reported(tmp_path, keystore, keep_key_id):
    path = tmp_path / "audit.log"
    write_log(path, 3, keystore)
    last = records(path)[-1]
    forged = {**last, "seq": 3, "prev_hash": last["hash"], "caller": "mallory", "result": "nothing to see"}
    if not keep_key_id:
        del forged["key_id"]
    forged["hash"] = record_hash({k: v for k, v in forged.items() if k != "key_id"})  # all one can do unkeyed
    with open(path, "a") as handle:
        handle.write(json.dumps(forged) + "\n")
    expected = "fails authentication" if keep_key_id else "has no chain key"
    report = verify([path], keystore=keystore)
    assert not report.ok and report.records == 3
    assert report.problem.startswith(f"{path}:4: record seq 3 ") and expected in report.problem
    with pytest.raises(AuditError, match=expected):
        AuditLog(path, keystore=keystore)  # the server does not chain on from a forged record


def test_cutting_the_newest_records_is_detected(tmp_path, keystore, capsys):
    path = tmp_path / "audit.log"
    write_log(path, 5, keystore)
    cut_last_lines(path, 2)
    assert verify([path], keystore=keystore).ok  # the chain alone cannot tell: its head can
    report = check(path, keystore)
    assert not report.ok and report.records == 3
    assert "the log ends at seq 2 but its head checkpoint" in report.problem
    assert "says seq 4: records seq 3..4 were removed" in report.problem
    with pytest.raises(AuditError, match=r"ends at seq 2 but its head checkpoint .* says seq 4"):
        AuditLog(path, keystore=keystore)
    key_file = tmp_path / "keys.json"
    keystore.save(key_file)
    code, out, err = run_cli(["audit", "verify", "--key-file", str(key_file), str(path)], capsys)
    assert code == 1 and err == "" and out.count("\n") == 1 and "records seq 3..4 were removed" in out


def test_deleting_the_current_file_or_every_file_is_detected(tmp_path, keystore, capsys):
    path = tmp_path / "audit.log"
    write_log(path, 40, keystore, max_bytes=2048)
    assert len(rotated_paths(path)) >= 3
    path.unlink()
    report = check(path, keystore)
    assert not report.ok and "were removed (the newest records cut, or the newest file deleted)" in report.problem
    with pytest.raises(AuditError, match="says seq 39"):
        AuditLog(path, keystore=keystore, max_bytes=2048)
    key_file = tmp_path / "keys.json"
    keystore.save(key_file)
    rotated = [str(p) for p in rotated_paths(path)]  # the head is found beside them: audit.log.1 -> audit.log.head
    code, out, _ = run_cli(["audit", "verify", "--key-file", str(key_file), *rotated], capsys)
    assert code == 1 and "head checkpoint" in out and "says seq 39" in out
    for rotated_file in rotated_paths(path):
        rotated_file.unlink()
    with pytest.raises(AuditError, match="the log has no records but its head checkpoint .* says seq 39"):
        AuditLog(path, keystore=keystore)


def test_deleting_or_editing_the_head_is_detected(tmp_path, keystore):
    path = tmp_path / "audit.log"
    write_log(path, 3, keystore)
    head = head_path(path)
    saved = head.read_text()
    head.write_text(saved.replace('"seq":2', '"seq":1'))
    assert "fails authentication" in check(path, keystore).problem
    with pytest.raises(AuditError, match="fails authentication"):
        AuditLog(path, keystore=keystore)
    head.unlink()
    assert "is missing (deleted, or the log was copied without it)" in check(path, keystore).problem
    with pytest.raises(AuditError, match="is missing but the log has records up to seq 2"):
        AuditLog(path, keystore=keystore)


def test_a_new_segment_records_the_loss_and_then_verifies(tmp_path, keystore, capsys):
    path = tmp_path / "audit.log"
    write_log(path, 5, keystore)
    cut_last_lines(path, 2)
    with AuditLog(path, keystore=keystore, new_segment=True) as audit:
        audit.append(event(99))
    written = records(path)
    assert [r["seq"] for r in written] == [0, 1, 2, 5, 6]  # the lost seqs are not reused
    segment = written[3]
    assert (segment["kind"], segment["action"], segment["after_seq"]) == ("audit", "new_segment", 2)
    assert "records seq 3..4 were removed" in segment["reason"] and segment["prev_hash"] == written[2]["hash"]
    report = check(path, keystore)
    assert report.ok and report.records == 5 and len(report.segments) == 1
    assert "seq 5 starts a new segment (seq 3..4 lost)" in report.segments[0]
    AuditLog(path, keystore=keystore).close()  # consistent again: no flag needed
    key_file = tmp_path / "keys.json"
    keystore.save(key_file)
    code, out, _ = run_cli(["audit", "verify", "--key-file", str(key_file), str(path)], capsys)
    assert code == 0 and out.startswith("ok: 5 records; 1 new segment(s) after a recorded loss: ")


def test_a_new_segment_after_every_file_was_deleted_chains_from_genesis(tmp_path, keystore):
    path = tmp_path / "audit.log"
    write_log(path, 3, keystore)
    path.unlink()
    AuditLog(path, keystore=keystore, new_segment=True).close()
    (segment,) = records(path)
    assert segment["seq"] == 3 and segment["after_seq"] is None and segment["prev_hash"] == "0" * 64
    report = check(path, keystore)
    assert report.ok and "(seq 0..2 lost)" in report.segments[0]


def test_a_checkpoint_behind_its_log_after_a_crash_still_opens(tmp_path, keystore):
    path = tmp_path / "audit.log"
    write_log(path, 3, keystore)
    stale = head_path(path).read_bytes()
    write_log(path, 2, keystore)
    head_path(path).write_bytes(stale)  # as if the process died between a record and its checkpoint
    assert check(path, keystore).ok
    write_log(path, 1, keystore)
    assert check(path, keystore) == check(path, keystore).__class__(True, 6)


def test_rotation_and_key_rotation_verify_end_to_end(tmp_path, keystore):
    path = tmp_path / "audit.log"
    write_log(path, 40, keystore, max_bytes=2048)
    keystore.add_key()  # `mmfusion keys rotate`: k2 active, k1 kept
    write_log(path, 5, keystore, max_bytes=2048)
    files = rotated_paths(path)
    assert len(files) >= 4 and check(path, keystore) == check(path, keystore).__class__(True, 45)
    assert {r["key_id"] for r in records(*files)} == {"k1", "k2"}
    without_k1 = KeyStore({"k2": keystore.keys["k2"]}, "k2")
    assert "names master key 'k1', which the key store does not have" in check(path, without_k1).problem
    files[1].unlink()  # a rotated file in the middle
    assert "records removed" in check(path, keystore).problem


def test_keyed_and_unkeyed_logs_are_not_continued_by_the_other(tmp_path, keystore):
    unkeyed, keyed = tmp_path / "unkeyed.log", tmp_path / "keyed.log"
    write_log(unkeyed, 2, None)
    write_log(keyed, 2, keystore)
    with pytest.raises(AuditError, match="record seq 1 has no chain key"):
        AuditLog(unkeyed, keystore=keystore)
    with pytest.raises(AuditError, match="record seq 1 is keyed with master key 'k1'"):
        AuditLog(keyed)
    assert "record seq 0 has no chain key" in verify([unkeyed], keystore=keystore).problem
    assert verify([unkeyed], head=head_path(unkeyed)).ok  # older unkeyed logs still verify without a key


def test_a_failed_write_leaves_no_torn_line(tmp_path, keystore, monkeypatch):
    path = tmp_path / "audit.log"
    real_write = audit_module._write_all

    def disk_full(fd: int, data: bytes) -> None:
        real_write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    with AuditLog(path, keystore=keystore) as audit:
        audit.append(event(0))
        monkeypatch.setattr(audit_module, "_write_all", disk_full)
        with pytest.raises(AuditError, match="record seq 1 not written: .*No space left on device"):
            audit.append(event(1))
        monkeypatch.setattr(audit_module, "_write_all", real_write)
        audit.append(event(2))
    assert [r["seq"] for r in records(path)] == [0, 1]
    assert check(path, keystore).ok


def test_a_file_deleted_while_open_refuses_further_records(tmp_path, keystore):
    path = tmp_path / "audit.log"
    with AuditLog(path, keystore=keystore) as audit:
        audit.append(event(0))
        path.unlink()
        path.mkdir()  # works as root too, unlike chmod
        with pytest.raises(AuditError, match="was deleted or replaced while open"):
            audit.check()
        with pytest.raises(AuditError, match="was deleted or replaced while open"):
            audit.append(event(1))


def test_cli_verify_flags(tmp_path, keystore, capsys, monkeypatch):
    import base64

    path = tmp_path / "audit.log"
    write_log(path, 3, keystore)
    key_file = tmp_path / "keys.json"
    keystore.save(key_file)
    assert run_cli(["audit", "verify", "--key-file", str(key_file), str(path)], capsys) == (0, "ok: 3 records\n", "")
    monkeypatch.setenv("AUDIT_TEST_KEY", base64.b64encode(b"\x01" * 32).decode())  # the wrong key
    code, out, _ = run_cli(["audit", "verify", "--key-env", "AUDIT_TEST_KEY", str(path)], capsys)
    assert code == 1 and "names master key 'k1'" in out
    head_path(path).unlink()
    code, out, _ = run_cli(["audit", "verify", "--key-file", str(key_file), str(path)], capsys)
    assert code == 1 and "is missing" in out
    argv = ["audit", "verify", "--key-file", str(key_file), "--no-head", str(path)]
    assert run_cli(argv, capsys)[:2] == (0, "ok: 3 records\n")
    code, _, err = run_cli([*argv, "--head", "x"], capsys)
    assert code == 2 and "--head and --no-head" in err


def test_a_new_segment_over_a_torn_last_line_comes_before_the_repair_record(tmp_path, keystore):
    path = tmp_path / "audit.log"
    write_log(path, 5, keystore)
    cut_last_lines(path, 2)
    with open(path, "ab") as handle:
        handle.write(b'{"seq": 3, "kind": "call", "res')  # and a write torn by a crash
    AuditLog(path, keystore=keystore, new_segment=True).close()
    written = records(path)
    assert [(r["seq"], r.get("action")) for r in written] == [
        (0, None),
        (1, None),
        (2, None),
        (5, "new_segment"),
        (6, "repair"),
    ]
    assert check(path, keystore).ok
