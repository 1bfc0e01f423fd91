"""Stream hardening (issue 19 #1, #8, #16): streams' own capped pool, time limits, per-stream limits, quick stop."""

from __future__ import annotations

import inspect
import threading
import time
from concurrent.futures import Future

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mmfusion.cli.main import main
from mmfusion.proto import inspection_pb2 as pb
from mmfusion.proto import inspection_pb2_grpc as pb_grpc
from mmfusion.security.limits import RateLimit
from mmfusion.serving import build_server, server
from mmfusion.serving.errors import status_of
from mmfusion.serving.metrics import ServiceMetrics
from mmfusion.serving.streams import MAX_PENDING_FRAMES, MAX_STREAMS_PER_CALL, FrameWork, StreamSession
from mmfusion.types import InputError
from tests.serving.test_server import hold_scheduler
from tests.test_pipeline import tiny_model

WAIT_S = 10.0
CAP = 4  # open streams the guarded server allows
FIRST_S = 3.0  # its first-message time limit
IDLE_S = 2.0  # its limit between messages
FAST_S = 0.5  # what "answers at once" means on a loaded 2-core box
REPORT = "/mmfusion.v1.Inspection/GenerateReport"


def text_frame(stream_id: str, sequence: int, first: bool = False, **fields) -> pb.Frame:
    frame = pb.Frame(stream_id=stream_id, sequence_number=sequence, text=f"note {sequence}", **fields)
    if first:
        frame.model = "tiny"
    return frame


def idle(release: threading.Event):
    """A client stream that sends nothing until released."""
    release.wait(WAIT_S * 3)
    return
    yield


def eventually(predicate, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


class Opened:
    """A streaming call drained on a thread of its own: its answers, final status, and how long it lasted."""

    def __init__(self, call) -> None:
        self.answers: list = []
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.opened_at = time.monotonic()
        self.ended_at = 0.0
        self._thread = threading.Thread(target=self._drain, args=(call,), daemon=True)
        self._thread.start()

    def _drain(self, call) -> None:
        try:
            for answer in call:
                self.answers.append(answer)
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            self.code, self.details = error.code(), error.details()
        self.ended_at = time.monotonic()

    def wait(self, timeout: float = WAIT_S) -> Opened:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the call did not end in time"
        return self

    @property
    def lasted(self) -> float:
        return self.ended_at - self.opened_at


def timed(call) -> float:
    started = time.monotonic()
    call()
    return time.monotonic() - started


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tiny_model(root / "tiny")
    return root


@pytest.fixture(scope="module")
def guarded(model_root):
    limits = {"max_open_streams": CAP, "first_message_timeout_s": FIRST_S, "stream_idle_timeout_s": IDLE_S}
    with build_server(["tiny"], model_root=model_root, max_workers=2, **limits) as running:
        yield running


@pytest.fixture
def channel(guarded):
    opened = grpc.insecure_channel(f"127.0.0.1:{guarded.port}")
    yield opened
    opened.close()


# ---- #1: idle streams hold no unary thread, are capped in all, and are closed by the time limits


def test_idle_streams_cannot_starve_unary_calls_and_are_closed_by_the_first_message_limit(guarded, channel):
    stub, health = pb_grpc.InspectionStub(channel), health_pb2_grpc.HealthStub(channel)
    release = threading.Event()
    try:
        opened = [Opened(stub.StreamInspect(idle(release))) for _ in range(CAP - 1)]
        opened.append(Opened(channel.stream_stream(REPORT)(idle(release))))  # its one request never comes
        eventually(lambda: guarded.guard.open_streams == CAP)
        refused = Opened(stub.StreamInspect(idle(release))).wait()
        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED and refused.lasted < FAST_S * 2
        assert f"the server has {CAP} streaming calls open, the most it allows (max_open_streams={CAP})" in (
            refused.details
        )
        check = health_pb2.HealthCheckRequest()
        latencies = []
        for _ in range(10):  # the cap's worth of idle streams is open, with 2 unary workers
            latencies.append(timed(lambda: health.Check(check, timeout=WAIT_S)))
            latencies.append(timed(lambda: stub.ListModels(pb.ListModelsRequest(), timeout=WAIT_S)))
        assert max(latencies) < FAST_S, latencies
        assert stub.Inspect(pb.InspectRequest(model="tiny", text="still served"), timeout=WAIT_S).model == "tiny"
        assert guarded.guard.open_streams == CAP  # all of it happened while the streams were open
        for call in opened:
            call.wait()
            assert call.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert f"no message within {FIRST_S:g} s of the call's start (first_message_timeout_s={FIRST_S:g})" in (
                call.details
            )
            assert FIRST_S - 0.2 < call.lasted < FIRST_S + 3
        eventually(lambda: guarded.guard.open_streams == 0)
        fresh = Opened(stub.StreamInspect(iter([text_frame("cam", 0, first=True)]))).wait()
        assert fresh.code == grpc.StatusCode.OK and fresh.answers[0].result.model == "tiny"
    finally:
        release.set()


def test_a_stream_that_goes_quiet_is_closed_by_the_idle_limit(guarded, channel):
    release = threading.Event()

    def frames():
        yield text_frame("quiet", 0, first=True)
        release.wait(WAIT_S * 2)

    try:
        call = Opened(pb_grpc.InspectionStub(channel).StreamInspect(frames())).wait(WAIT_S * 2)
    finally:
        release.set()
    assert [answer.sequence_number for answer in call.answers] == [0]  # what it took is answered first
    assert call.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"no message for {IDLE_S:g} s after message 1 (stream_idle_timeout_s={IDLE_S:g})" in call.details
    assert IDLE_S - 0.2 < call.lasted < IDLE_S + 4


def test_stream_limits_are_checked():
    with pytest.raises(ValueError, match=r"max_workers=0: expected a whole number of threads >= 1"):
        build_server(max_workers=0)
    with pytest.raises(ValueError, match=r"max_open_streams=0: expected a whole number of streams >= 1"):
        build_server(max_open_streams=0)
    with pytest.raises(ValueError, match=r"first_message_timeout_s=0: expected seconds > 0"):
        build_server(first_message_timeout_s=0)


@pytest.fixture
def served(monkeypatch) -> list[tuple[tuple, dict]]:
    calls: list[tuple[tuple, dict]] = []
    monkeypatch.setattr(server, "serve", lambda *args, **kwargs: calls.append((args, kwargs)) or 0)
    return calls


def test_serve_flags_set_workers_stream_cap_and_time_limits(served, capsys):
    argv = ["serve", "--workers", "4", "--max-open-streams", "32"]
    assert main([*argv, "--first-message-timeout", "2.5", "--stream-idle-timeout", "30"]) == 0
    kwargs = served[0][1]
    assert (kwargs["max_workers"], kwargs["max_open_streams"]) == (4, 32)
    assert (kwargs["first_message_timeout_s"], kwargs["stream_idle_timeout_s"]) == (2.5, 30.0)
    assert main(["serve"]) == 0
    defaults = inspect.signature(server.build_server).parameters
    for key in ("max_workers", "max_open_streams", "first_message_timeout_s", "stream_idle_timeout_s"):
        assert served[1][1][key] == defaults[key].default, key
    assert main(["serve", "--max-open-streams", "0"]) == 2
    assert "--max-open-streams 0: expected at least 1" in capsys.readouterr().err


# ---- #8: frames take the caller's tokens; pending frames, streams per call and metric series are bounded


def test_stream_frames_take_tokens_and_a_silent_stream_times_out_behind_the_security_chain(model_root):
    limit = RateLimit(rate=0.1, burst=4)  # no token comes back during the test
    with build_server(["tiny"], model_root=model_root, rate_limit=limit, first_message_timeout_s=1.0) as running:
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        stub = pb_grpc.InspectionStub(channel)
        release = threading.Event()
        try:
            silent = Opened(stub.StreamInspect(idle(release))).wait()  # its first message is read by an interceptor
            assert silent.code == grpc.StatusCode.DEADLINE_EXCEEDED and "first_message_timeout_s=1" in silent.details
            options = pb.StreamOptions(max_pending_frames=8)
            frames = [text_frame("cam", s, first=s == 0, options=options if s == 0 else None) for s in range(6)]
            flood = Opened(stub.StreamInspect(iter(frames))).wait()
        finally:
            release.set()
            channel.close()
        assert running.security.streams.open("ipv4:127.0.0.1") == 0 and running.guard.open_streams == 0
    assert flood.code == grpc.StatusCode.OK
    assert [answer.sequence_number for answer in flood.answers] == list(range(6))
    assert all(answer.HasField("result") for answer in flood.answers[:3])  # the call's token, then 2 frames' tokens
    for answer in flood.answers[3:]:
        assert answer.error.code == "RESOURCE_EXHAUSTED" and not answer.HasField("result")
        assert answer.error.message.startswith(f"frame {answer.sequence_number} of stream 'cam': rate limit of 0.1")
        assert "the frame was not inspected; send frames slower or retry after" in answer.error.message


def test_a_call_carries_at_most_max_streams_per_call(guarded, channel):
    frames = [text_frame(f"cam-{index}", 0, first=True) for index in range(MAX_STREAMS_PER_CALL + 1)]
    call = Opened(pb_grpc.InspectionStub(channel).StreamInspect(iter(frames))).wait()
    assert call.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert call.details == (
        f"frame.stream_id: 'cam-{MAX_STREAMS_PER_CALL}' would be stream {MAX_STREAMS_PER_CALL + 1} of this call; "
        f"expected at most {MAX_STREAMS_PER_CALL} streams per call (max_streams_per_call); "
        "open another call for more cameras"
    )


def test_max_pending_frames_is_clamped_and_stream_ids_are_bounded():
    pending = []

    def start(stream, _frame) -> FrameWork:
        pending.append(stream.max_pending)
        future: Future = Future()
        future.set_result(None)
        return FrameWork(future)

    greedy = text_frame("cam", 0, first=True, options=pb.StreamOptions(max_pending_frames=1_000_000))
    assert len(list(StreamSession([greedy], start, call_id=1))) == 1
    assert pending == [MAX_PENDING_FRAMES]
    with pytest.raises(InputError, match=r"frame.stream_id: 'xxx.*has 129 characters; expected at most 128"):
        list(StreamSession([text_frame("x" * 129, 0, first=True)], start, call_id=2))
    too_many = [text_frame(f"c{index}", 0, first=True) for index in range(3)]
    with pytest.raises(Exception, match="would be stream 3 of this call; expected at most 2 streams") as raised:
        list(StreamSession(too_many, start, call_id=3, max_streams=2))
    assert status_of(raised.value) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_forget_stream_removes_its_dropped_frames_series_too():
    metrics = ServiceMetrics()
    metrics.set_stream_fps("cam-1", 5.0)
    metrics.record_dropped_frames("cam-1", 3)
    metrics.forget_stream("cam-1")
    assert 'stream="cam-1"' not in metrics.render().decode()


def test_an_ended_streams_series_are_no_longer_exported(guarded, channel):
    entry = guarded.models.get("tiny")
    release = hold_scheduler(entry)  # frames only queue: all but the newest are dropped
    options = pb.StreamOptions(max_pending_frames=1)
    frames = [text_frame("flood-1", s, first=s == 0, options=options if s == 0 else None) for s in range(5)]
    try:
        call = Opened(pb_grpc.InspectionStub(channel).StreamInspect(iter(frames)))
        dropped = 'mmfusion_stream_dropped_frames_total{stream="flood-1"}'
        eventually(lambda: dropped in guarded.metrics.render().decode())
    finally:
        release.set()
    call.wait()
    assert call.code == grpc.StatusCode.OK and call.answers[-1].sequence_number == 4
    assert 'stream="flood-1"' not in guarded.metrics.render().decode()


# ---- #16: a stop ends open streams as soon as what they took is answered


def test_stop_ends_open_streams_after_answering_what_they_took(model_root):
    running = build_server(["tiny"], model_root=model_root).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    done = threading.Event()

    def frames(index: int):
        sequence = 0
        while not done.is_set():
            yield text_frame(f"cam-{index}", sequence, first=sequence == 0)
            sequence += 1
            time.sleep(0.03)

    try:
        calls = [Opened(pb_grpc.InspectionStub(channel).StreamInspect(frames(index))) for index in range(4)]
        eventually(lambda: all(len(call.answers) >= 3 for call in calls))
        stop_started = time.monotonic()
        stopping = threading.Thread(target=running.stop, kwargs={"grace": 10.0})
        stopping.start()
        for call in calls:
            call.wait()
        stopping.join(WAIT_S)
        stopped_in = time.monotonic() - stop_started
    finally:
        done.set()
        channel.close()
        running.stop(grace=0)
    assert not stopping.is_alive() and stopped_in < 5.0  # not the full 10 s grace
    for call in calls:
        assert call.code == grpc.StatusCode.UNAVAILABLE and call.details.startswith("server shutting down")
        assert call.ended_at - stop_started < 3.0
        skipped = [sequence for answer in call.answers for sequence in answer.skipped_sequence_numbers]
        taken = [answer.sequence_number for answer in call.answers] + skipped
        assert sorted(taken) == list(range(len(taken)))  # every frame the server took was answered (or reported)
        assert all(answer.HasField("result") for answer in call.answers)
