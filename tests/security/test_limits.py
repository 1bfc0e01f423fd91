"""Per-caller limits: token bucket refill and retry hints, RESOURCE_EXHAUSTED with retry-after-ms, stream caps."""

from __future__ import annotations

import queue
import re
import threading
import time

import grpc
import pytest

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.security.limits import RateLimit, StreamSlots, TokenBuckets
from mmfusion.serving import build_server
from mmfusion.types import InputError
from tests.security.conftest import Channel, api_key, auth_config


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_says_how_long_to_wait():
    clock = FakeClock()
    buckets = TokenBuckets(RateLimit(rate=2.0, burst=3), clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token comes back every 1/2 s
    assert buckets.take("b") == 0.0  # every caller has their own bucket
    clock.now += 0.25
    assert buckets.take("a") == pytest.approx(0.25)
    clock.now += 0.25
    assert buckets.take("a") == 0.0
    clock.now += 60
    assert [buckets.take("a") for _ in range(4)][-1] == pytest.approx(0.5)  # refills only up to the burst


def test_the_burst_defaults_to_one_second_of_calls():
    assert RateLimit(rate=5).capacity == 5 and RateLimit(rate=0.5).capacity == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate": 0}, "rate limit 0: expected calls per second > 0"),
        ({"rate": 1, "burst": 0}, "burst 0: expected at least 1 call"),
        ({"rate": 1, "max_streams": 0}, "max streams 0: expected at least 1"),
    ],
)
def test_impossible_limits_are_refused(options, message):
    with pytest.raises(InputError, match=re.escape(message)):
        RateLimit(**options)


def test_stream_slots_count_per_caller():
    slots = StreamSlots(2)
    assert slots.enter("a") and slots.enter("a") and not slots.enter("a") and slots.enter("b")
    slots.leave("a")
    assert slots.open("a") == 1 and slots.enter("a")


@pytest.fixture
def limited(security_files):
    limit = RateLimit(rate=2.0, burst=2, max_streams=1)
    auth = auth_config(security_files)
    with build_server([], auth=auth, policy_path=security_files["policy"], rate_limit=limit) as server:
        channel = Channel(server.port)
        yield channel
        channel.close()


def _list(channel: Channel, role: str = "admin"):
    return channel.inspection.ListModels.with_call(pb.ListModelsRequest(), metadata=api_key(role))


def test_a_caller_over_the_rate_gets_resource_exhausted_with_retry_after(limited):
    _list(limited)
    _list(limited)
    with pytest.raises(grpc.RpcError) as refused:
        _list(limited)
    error = refused.value
    retry_ms = int(dict(error.trailing_metadata())["retry-after-ms"])
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and 0 < retry_ms <= 500
    assert error.details() == (f"rate limit of 2 calls/s (burst 2) reached for admin-key; retry after {retry_ms} ms")
    _list(limited, "operator")  # another caller is not affected
    time.sleep(retry_ms / 1000 + 0.02)
    _list(limited)  # after the advertised wait the call goes through


def test_a_caller_may_hold_only_max_streams_open_streams(limited):
    held: queue.Queue = queue.Queue()

    def frames():
        held.get()  # the stream stays open, sending nothing, until released
        return
        yield

    first = limited.inspection.StreamInspect(frames(), metadata=api_key("operator"))
    results = []
    reader = threading.Thread(target=lambda: results.append(_drain(first)))
    reader.start()
    time.sleep(0.3)  # the first stream is open on the server
    second = limited.inspection.StreamInspect(iter(()), metadata=api_key("operator"))
    code, details = _drain(second)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details == "operator-key has 1 streams open, the most allowed; retry when one of them ends"
    held.put(None)
    reader.join(10)
    assert results[0][0] == grpc.StatusCode.INVALID_ARGUMENT  # the first stream ended (it sent no frames)
    time.sleep(0.6)  # the bucket refills
    third = limited.inspection.StreamInspect(iter(()), metadata=api_key("operator"))
    assert _drain(third)[0] == grpc.StatusCode.INVALID_ARGUMENT  # the slot was given back


def _drain(call) -> tuple[grpc.StatusCode, str]:
    try:
        list(call)
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def test_without_auth_the_limit_applies_per_peer(tmp_path):
    with build_server([], rate_limit=RateLimit(rate=1.0, burst=1)) as server:
        channel = Channel(server.port)
        channel.inspection.ListModels(pb.ListModelsRequest())
        with pytest.raises(grpc.RpcError) as refused:
            channel.inspection.ListModels(pb.ListModelsRequest())
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "reached for ipv4:127.0.0.1; retry after" in refused.value.details()
        channel.close()
