"""Audit on a real server: fail-closed calls end UNAVAILABLE, fail-open ones are counted; cut logs stop the start."""

from __future__ import annotations

import json

import grpc
import pytest

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.security.audit import AuditError, head_path, verify
from mmfusion.security.crypto import FieldCipher, KeyStore
from mmfusion.serving import build_server
from mmfusion.serving.interceptors.audit import UNAUDITED
from tests.security.conftest import Channel, status_of

FAILURES = "mmfusion_audit_failures_total"


def start(models_root, path, keystore, models=(), **options):
    cipher = FieldCipher(keystore)
    server = build_server(
        models, model_root=models_root, audit_path=path, audit_cipher=cipher, audit_fsync="never", **options
    )
    return server.start(), Channel(server.port)


def list_models(channel: Channel):
    return status_of(lambda: channel.inspection.ListModels(pb.ListModelsRequest(), timeout=10))


def failures(server) -> float:
    return server.metrics.registry.get_sample_value(FAILURES)


@pytest.mark.parametrize("broken", ["log-replaced-by-a-directory", "head-replaced-by-a-directory"])
def test_fail_closed_calls_end_unavailable_when_their_event_cannot_be_written(security_models, tmp_path, broken):
    path, keystore = tmp_path / "audit.jsonl", KeyStore.generate()
    server, channel = start(security_models, path, keystore, audit_fail_closed=True)
    try:
        assert list_models(channel) == (grpc.StatusCode.OK, "")
        target = path if broken.startswith("log") else head_path(path)
        target.unlink()
        target.mkdir()  # unlike chmod, this stops root too
        assert list_models(channel) == (grpc.StatusCode.UNAVAILABLE, UNAUDITED)
        assert server.security.audit_failures == 1 and failures(server) == 1.0
    finally:
        channel.close()
        server.stop(grace=0)


def test_fail_open_calls_are_served_and_the_failure_is_logged_and_counted(security_models, tmp_path, caplog):
    path, keystore = tmp_path / "audit.jsonl", KeyStore.generate()
    server, channel = start(security_models, path, keystore)
    try:
        assert list_models(channel) == (grpc.StatusCode.OK, "")
        assert failures(server) == 0.0
        path.unlink()
        path.mkdir()
        assert list_models(channel) == (grpc.StatusCode.OK, "")
        assert list_models(channel) == (grpc.StatusCode.OK, "")
        assert server.security.audit_failures == 2 and failures(server) == 2.0
        assert "audit event not written" in caplog.text and "was deleted or replaced while open" in caplog.text
    finally:
        channel.close()
        server.stop(grace=0)


def test_a_log_cut_short_stops_the_start_unless_a_new_segment_is_asked(security_models, tmp_path):
    path, keystore = tmp_path / "audit.jsonl", KeyStore.generate()
    server, channel = start(security_models, path, keystore)
    for _ in range(3):
        list_models(channel)
    channel.close()
    server.stop(grace=0)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]))  # the newest two records cut
    with pytest.raises(AuditError, match="records seq 1..2 were removed"):
        build_server([], model_root=security_models, audit_path=path, audit_cipher=FieldCipher(keystore))
    server, channel = start(security_models, path, keystore, audit_new_segment=True)
    assert list_models(channel) == (grpc.StatusCode.OK, "")
    channel.close()
    server.stop(grace=0)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["seq"], r.get("action")) for r in records] == [(0, None), (3, "new_segment"), (4, None)]
    report = verify([path], keystore=keystore, head=head_path(path))
    assert report.ok and report.records == 3 and len(report.segments) == 1


def test_serve_flags_demand_a_chain_key_or_an_explicit_unkeyed_log(tmp_path, capsys, monkeypatch):
    import base64
    import os

    from mmfusion.cli.main import main
    from mmfusion.serving import server as server_module

    calls = []
    monkeypatch.setattr(server_module, "serve", lambda *args, **kwargs: calls.append(kwargs) or 0)
    log = str(tmp_path / "audit.jsonl")
    assert main(["serve", "--audit-log", log]) == 2
    assert "needs --audit-key-file or --audit-key-env" in capsys.readouterr().err
    assert main(["serve", "--audit-log", log, "--audit-unkeyed"]) == 0
    assert calls[-1]["audit_cipher"] is None and calls[-1]["audit_fail_closed"] is False
    monkeypatch.setenv("TEST_AUDIT_KEY", base64.b64encode(os.urandom(32)).decode())
    keyed = ["serve", "--audit-log", log, "--audit-key-env", "TEST_AUDIT_KEY"]
    assert main([*keyed, "--audit-fail-closed", "--audit-new-segment"]) == 0
    assert isinstance(calls[-1]["audit_cipher"], FieldCipher)
    assert calls[-1]["audit_fail_closed"] is True and calls[-1]["audit_new_segment"] is True
    assert main([*keyed, "--audit-unkeyed"]) == 2
    assert "--audit-unkeyed: not with --audit-key-file/--audit-key-env" in capsys.readouterr().err
    assert main(["serve", "--audit-fail-closed"]) == 2
    assert "need --audit-log" in capsys.readouterr().err


def test_fail_closed_stream_ends_unavailable_after_its_responses_when_its_event_is_lost(security_models, tmp_path):
    path, keystore = tmp_path / "audit.jsonl", KeyStore.generate()
    server, channel = start(security_models, path, keystore, audit_fail_closed=True, models=["pcb-a"])
    try:
        head_path(path).unlink()
        head_path(path).mkdir()  # the call starts (its log is fine) but its event cannot be checkpointed
        frames = iter([pb.Frame(stream_id="cam-1", sequence_number=0, model="pcb-a", text="a frame")])
        answered = []
        with pytest.raises(grpc.RpcError) as ended:
            for frame_result in channel.inspection.StreamInspect(frames, timeout=20):
                answered.append(frame_result)
        assert len(answered) == 1 and answered[0].HasField("result")
        assert (ended.value.code(), ended.value.details()) == (grpc.StatusCode.UNAVAILABLE, UNAUDITED)
    finally:
        channel.close()
        server.stop(grace=0)
