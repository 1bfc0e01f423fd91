"""StreamCall on a real server and port: a live stereo call, bad input, cancellation, deadlines, RBAC and audit.

The call is built from the LibriVox clips in tests/data/librivox: the agent says one clip, a pause,
then the customer says another. One server (call-centre and a tiny non-call model, API keys, the
built-in access policy, an audit log) serves every test of this module.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from mmfusion.cli.main import main
from mmfusion.client import CALL_CHUNK_SECONDS, InspectionClient, ServerError, paced, pcm16_chunks, to_dict
from mmfusion.media import SAMPLE_RATE, decode_audio
from mmfusion.proto import inspection_pb2 as pb
from mmfusion.repository.folder import models_root
from mmfusion.security.auth import AuthConfig
from mmfusion.security.limits import RateLimit
from mmfusion.serving import build_server
from tests.calls.conftest import wav_bytes
from tests.calls.test_transcription import stereo_call
from tests.conftest import LIBRIVOX
from tests.security.conftest import API_KEYS, ROOMY_FAILURES, write_keys
from tests.test_pipeline import tiny_model

AGENT_CLIP = "sense_and_sensibility_01_austen_64kb-0880.wav"  # "He was not an ill-disposed young man." 3.0 s
CUSTOMER_CLIP = "sense_and_sensibility_01_austen_64kb-0930.wav"  # "He might even have been made amiable himself."
PAUSE_S = 1.5
SPEED = 4.0  # times real time (the tests of errors and cancellation)
STREAM_CALL = "/mmfusion.v1.Inspection/StreamCall"
WAIT_S = 30.0
MAX_STREAMS = 2  # per caller


def _config(**fields) -> pb.CallRequest:
    values = {"model": "call-centre", "encoding": pb.AUDIO_ENCODING_PCM16, "sample_rate": SAMPLE_RATE, "channels": 2}
    values.update(fields)
    return pb.CallRequest(config=pb.CallConfig(**values))


@pytest.fixture(scope="module")
def clips() -> tuple[np.ndarray, np.ndarray]:
    return decode_audio(LIBRIVOX / AGENT_CLIP), decode_audio(LIBRIVOX / CUSTOMER_CLIP)


@pytest.fixture(scope="module")
def call_audio(clips) -> np.ndarray:
    """(2, N): the agent's clip on channel 0, a pause, then the customer's on channel 1."""
    agent, customer = clips
    return stereo_call(agent, customer, agent.size / SAMPLE_RATE + PAUSE_S)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(models_root() / "call-centre", root / "call-centre")
    tiny_model(root / "tiny")
    secrets = tmp_path_factory.mktemp("secrets")
    auth = AuthConfig(write_keys(secrets / "keys.yaml", API_KEYS), failure_limit=ROOMY_FAILURES)
    audit = secrets / "audit.jsonl"
    limits = RateLimit(rate=1000, burst=1000, max_streams=MAX_STREAMS)
    with build_server(
        ["call-centre", "tiny"], model_root=root, auth=auth, audit_path=audit, rate_limit=limits
    ) as running:
        running.audit_file = audit
        yield running


@pytest.fixture(scope="module")
def analyst(server):
    with InspectionClient(f"127.0.0.1:{server.port}", api_key=API_KEYS["analyst"], timeout=WAIT_S) as client:
        client.wait_ready(10)
        yield client


def _events(server, status: str | None = None) -> list[dict]:
    events = [json.loads(line) for line in Path(server.audit_file).read_text().splitlines()]
    return [e for e in events if e.get("rpc") == STREAM_CALL and (status is None or e["status"] == status)]


def _until(condition, seconds: float = WAIT_S) -> float:
    """Seconds until condition() held; fails after `seconds`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "timed out"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_live_call_answers_each_segment_as_it_ends_then_the_summary(server, analyst, call_audio, clips):
    partial, half_closed, open_streams = threading.Event(), [], []

    def chunks():
        yield from paced(pcm16_chunks(call_audio, SAMPLE_RATE), CALL_CHUNK_SECONDS, 1.0)  # at real time
        partial.wait(WAIT_S)  # a live server answered the agent's turn while the customer spoke; waits for a slow CPU
        half_closed.append(time.monotonic())

    arrivals = []
    for update in analyst.stream_call("call-centre", chunks(), sample_rate=SAMPLE_RATE, channels=2, timeout=60):
        arrivals.append((time.monotonic(), update))
        if update.HasField("segment") and not partial.is_set():
            open_streams.append(server.guard.open_streams)
            partial.set()

    updates = [update for _, update in arrivals]
    kinds = [update.WhichOneof("update") for update in updates]
    assert kinds == ["segment"] * (len(kinds) - 1) + ["summary"] and len(kinds) >= 3
    segments = [update.segment for update in updates[:-1]]
    assert [s.speaker for s in segments] == ["agent", "customer"]
    assert [s.start for s in segments] == sorted(s.start for s in segments)
    assert "young man" in segments[0].text.lower() and "amiable" in segments[1].text.lower()
    assert all(s.words and s.labels["intent"].label and s.labels["emotion"].label for s in segments)
    received = [update.received_seconds for update in updates]
    assert received == sorted(received)
    # live: the agent's segment left the server before the client half-closed, and once the server had taken
    # in at most the agent's clip and one second of its pause (500 ms of silence close a turn)
    agent_seconds = clips[0].size / SAMPLE_RATE
    assert arrivals[0][0] < half_closed[0] and updates[0].received_seconds <= agent_seconds + 1.0
    assert open_streams == [1]  # the stream pool holds it like any other stream

    summary = updates[-1].summary
    call = to_dict(summary.heads["call"])["extra"]
    assert summary.model == "call-centre" and call["speakers"] == ["agent", "customer"]
    assert len(call["segments"]) == len(segments)
    for sent, final in zip(segments, call["segments"]):
        assert (sent.speaker, sent.text, len(sent.words)) == (final["speaker"], final["text"], len(final["words"]))
        assert (sent.start, sent.end) == pytest.approx((final["start"], final["end"]), abs=0.006)
        assert {task: r.label for task, r in sent.labels.items()} == {t: r["label"] for t, r in final["labels"].items()}
    fired = [flag for s in segments for flag in s.flags]
    assert set(fired) <= set(summary.flags) and not any(flag.startswith("missing:") for flag in fired)
    assert "missing:greeting" in summary.flags and summary.timings.compute_ms > 0
    assert summary.transcript.text == " ".join(s.text for s in segments)

    event = _events(server, "OK")[-1]
    assert event["role"] == "analyst" and event["model"] == "call-centre"
    assert event["result"].startswith(f"segments={len(segments)} summary=yes flags=")


BAD_INPUT = {
    "no messages": ([], grpc.StatusCode.INVALID_ARGUMENT, r"^request stream: no messages; send a CallRequest"),
    "audio first": (
        [pb.CallRequest(audio=b"\0\0")],
        grpc.StatusCode.INVALID_ARGUMENT,
        r"^requests\[0\]: audio; expected config first \(model, encoding, sample_rate, channels\)",
    ),
    "unknown model": ([_config(model="nope")], grpc.StatusCode.NOT_FOUND, r"^model 'nope' is not loaded; loaded: "),
    "not a call model": (
        [_config(model="tiny")],
        grpc.StatusCode.INVALID_ARGUMENT,
        r"^config\.model: 'tiny' is not a call model \(its folder has no call\.yaml\); "
        r"expected one of the loaded call models: call-centre$",
    ),
    "rate": (
        [_config(sample_rate=4000)],
        grpc.StatusCode.INVALID_ARGUMENT,
        r"^config\.sample_rate: 4000 Hz; PCM16 needs 8000\.\.192000 Hz$",
    ),
    "no rate": ([_config(sample_rate=0)], grpc.StatusCode.INVALID_ARGUMENT, r"^config\.sample_rate: 0 Hz"),
    "zero channels": (
        [_config(channels=0)],
        grpc.StatusCode.INVALID_ARGUMENT,
        r"^config\.channels: 0; expected 1 \(mono\) or 2 \(agent and customer\)$",
    ),
    "three channels": ([_config(channels=3)], grpc.StatusCode.INVALID_ARGUMENT, r"^config\.channels: 3; expected 1"),
    "encoding": ([_config(encoding=9)], grpc.StatusCode.INVALID_ARGUMENT, r"^config\.encoding: 9; expected one of"),
    "odd bytes": (
        [_config(), pb.CallRequest(audio=b"\0" * 1001)],
        grpc.StatusCode.INVALID_ARGUMENT,
        r"^requests\[1\]\.audio: 1001 bytes is not a whole number of 2-channel PCM16 frames \(4 bytes each\)$",
    ),
    "second config": (
        [_config(), pb.CallRequest(audio=b"\0" * 400), _config()],
        grpc.StatusCode.INVALID_ARGUMENT,
        r"^requests\[2\]: config; after the config send only audio$",
    ),
    "no audio": ([_config()], grpc.StatusCode.INVALID_ARGUMENT, r"^audio: no samples; after the config send audio"),
    "not a container": (
        [_config(encoding=pb.AUDIO_ENCODING_UNSPECIFIED), pb.CallRequest(audio=b"not audio at all" * 4)],
        grpc.StatusCode.INVALID_ARGUMENT,
        r"^audio: 64 bytes are not decodable audio",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_refused_naming_the_field_and_the_server_keeps_serving(server, analyst, case):
    messages, code, message = BAD_INPUT[case]
    with pytest.raises(grpc.RpcError) as raised:
        list(analyst.stub.StreamCall(iter(messages), timeout=WAIT_S))
    assert raised.value.code() == code
    assert re.search(message, raised.value.details()), raised.value.details()
    assert analyst.health() == "SERVING" and analyst.get_model("call-centre").name == "call-centre"


def test_a_container_is_analysed_once_the_client_half_closes(analyst, call_audio):
    data = wav_bytes(call_audio[:, ::2], SAMPLE_RATE // 2)  # an 8 kHz WAV: decoded and resampled by the server
    chunks = [data[start : start + 32_000] for start in range(0, len(data), 32_000)]
    updates = list(analyst.stream_call("call-centre", chunks, encoding=pb.AUDIO_ENCODING_WAV, timeout=60))
    assert [u.WhichOneof("update") for u in updates] == ["segment", "segment", "summary"]
    assert [u.segment.speaker for u in updates[:2]] == ["agent", "customer"]
    assert "young man" in updates[0].segment.text.lower()


def _long_call(clips) -> np.ndarray:
    """The agent's clip, then the customer talking for a while longer."""
    agent, customer = clips
    return stereo_call(agent, np.tile(customer, 4), agent.size / SAMPLE_RATE + PAUSE_S)


def test_a_cancelled_call_stops_its_work_and_other_calls_still_answer(server, analyst, clips):
    sent = []

    def requests():
        yield _config()
        for chunk in paced(pcm16_chunks(_long_call(clips), SAMPLE_RATE), CALL_CHUNK_SECONDS, SPEED):
            sent.append(len(chunk))
            yield pb.CallRequest(audio=chunk)

    call = analyst.stub.StreamCall(requests(), timeout=60)
    first = next(call)
    assert first.HasField("segment") and first.segment.speaker == "agent"
    call.cancel()
    at_cancel = len(sent)
    assert _until(lambda: server.guard.open_streams == 0, 10.0) < 10.0  # the server's call ended
    time.sleep(0.5)
    assert len(sent) <= at_cancel + 1  # and no more audio was taken from the client
    with pytest.raises(grpc.RpcError) as raised:
        next(call)
    assert raised.value.code() == grpc.StatusCode.CANCELLED
    assert analyst.health() == "SERVING" and [m.name for m in analyst.list_models()] == ["call-centre", "tiny"]
    _until(lambda: _events(server, "CANCELLED"), 10.0)


def test_a_deadline_ends_the_call_and_its_work(server, analyst, clips):
    chunks = paced(pcm16_chunks(_long_call(clips), SAMPLE_RATE), CALL_CHUNK_SECONDS, 1.0)  # 20 s at real time
    with pytest.raises(ServerError) as raised:
        list(analyst.stream_call("call-centre", chunks, channels=2, timeout=2.0))
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _until(lambda: server.guard.open_streams == 0, 10.0) < 10.0
    assert analyst.health() == "SERVING"


def test_live_calls_take_the_callers_stream_slots_and_the_stream_pool(server, analyst):
    _until(lambda: server.guard.open_streams == 0, 10.0)
    release = threading.Event()

    def held():
        yield _config(channels=1)
        release.wait(WAIT_S)

    calls = [analyst.stub.StreamCall(held(), timeout=WAIT_S) for _ in range(MAX_STREAMS)]
    try:
        _until(lambda: server.guard.open_streams == MAX_STREAMS, 10.0)
        with pytest.raises(ServerError) as raised:
            list(analyst.stream_call("call-centre", [b"\0\0" * 320], channels=1))
        assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"has {MAX_STREAMS} streams open, the most allowed" in raised.value.message
    finally:
        release.set()
    for call in calls:
        with pytest.raises(grpc.RpcError) as ended:
            list(call)
        assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "audio: no samples" in ended.value.details()


def test_a_role_without_the_call_permission_is_refused(server):
    with InspectionClient(f"127.0.0.1:{server.port}", api_key=API_KEYS["operator"], timeout=WAIT_S) as operator:
        with pytest.raises(ServerError) as raised:
            list(operator.stream_call("call-centre", [b"\0\0" * 320], channels=1))
    assert raised.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert raised.value.message == "role 'operator' may not call StreamCall"
    assert _events(server, "PERMISSION_DENIED")[-1]["role"] == "operator"


def test_cli_plays_a_file_as_a_live_call_and_prints_partials_then_the_call(tmp_path, call_audio, capsys):
    path = tmp_path / "call.wav"
    path.write_bytes(wav_bytes(call_audio))
    assert main(["audio", "--live", str(path), "--speed", "8"]) == 0  # no --server: a server of its own
    printed = capsys.readouterr().out.splitlines()
    partials = [line for line in printed if line.startswith("at ")]
    assert len(partials) == 2 and "agent" in partials[0] and "young man" in partials[0].lower()
    assert "customer" in partials[1] and "amiable" in partials[1].lower()
    assert printed.index(partials[-1]) < next(i for i, line in enumerate(printed) if line.startswith("call-centre:"))
    assert any(line.startswith("flags: ") and "missing:greeting" in line for line in printed)
    assert main(["audio", str(path), "--speed", "2"]) == 2
    assert "--speed 2: only with --live" in capsys.readouterr().err
