"""The scheduler, cache and metrics wired into a real server: batching, backpressure, deadlines, drops, shutdown."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mmfusion.client import InspectionClient, ServerError, frames_from_images
from mmfusion.proto import inspection_pb2 as pb
from mmfusion.serving import build_server
from tests.conftest import random_image
from tests.serving.test_server import WAIT_S, hold_scheduler, on_pipeline, png
from tests.test_pipeline import tiny_model

TINY = (("model", "tiny"), ("version", "1"))
QUEUE_SIZE = 8
BATCHING = {"max_batch_size": 4, "max_queue_delay_us": 100_000, "max_queue_size": QUEUE_SIZE}


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample the /metrics endpoint serves, as {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def grown(before: dict, after: dict, name: str, labels: tuple = TINY) -> float:
    """How much a sample grew between two scrapes (a series not yet exported counts as 0)."""
    return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)


def scrape_when(port: int, predicate) -> dict[tuple[str, tuple], float]:
    """Scrape until predicate(samples) holds: a batch's metrics are recorded just after its results go out."""
    samples: dict = {}

    def check() -> bool:
        samples.update(scrape(port))
        return predicate(samples)

    eventually(check)
    return samples


def eventually(predicate, timeout: float = WAIT_S) -> None:
    """Wait until predicate() is true (the server updates some metrics just after answering)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    tiny_model(root / "tiny")
    return root


@pytest.fixture(scope="module")
def server(model_root):
    with build_server(["tiny"], port=0, model_root=model_root, **BATCHING, metrics_port=0) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with InspectionClient(f"127.0.0.1:{server.port}", timeout=30) as connected:
        connected.wait_ready(10)
        yield connected


@pytest.fixture
def entry(server):
    return server.models.get("tiny")


@pytest.fixture
def predicted(entry, monkeypatch) -> list[str]:
    """Texts the pipeline computes from now on (every batch goes through predict_batch)."""
    seen: list[str] = []
    predict_batch = entry.pipeline.predict_batch

    def recording(items):
        seen.extend(item.text for item in items)
        return predict_batch(items)

    monkeypatch.setattr(entry.pipeline, "predict_batch", recording)
    return seen


def test_concurrent_inspect_calls_are_batched_together(server, client, entry, predicted):
    texts = [f"batched note {index}" for index in range(8)]
    before = scrape(server.metrics_port)
    release = hold_scheduler(entry)
    with ThreadPoolExecutor(8) as pool:
        calls = [pool.submit(client.inspect, "tiny", text=text) for text in texts]
        eventually(lambda: entry.scheduler.queued == 8)
        release.set()
        results = [call.result(WAIT_S) for call in calls]
    after = scrape_when(server.metrics_port, lambda now: grown(before, now, "mmfusion_batch_size_sum") == 8)
    assert sorted(predicted) == sorted(texts) and len(predicted) == 8
    assert grown(before, after, "mmfusion_batch_size_count") == 2  # two full batches of 4 (the holder is not counted)
    assert grown(before, after, "mmfusion_batch_size_bucket", (("le", "2.0"), *TINY)) == 0
    assert grown(before, after, "mmfusion_batch_size_bucket", (("le", "4.0"), *TINY)) == 2
    for text, result in zip(texts, results):
        alone = on_pipeline(server, "tiny", lambda pipeline, text=text: pipeline.predict(text=text))
        assert dict(result.scores) == pytest.approx(alone.outputs["colour"]["scores"], abs=1e-5)
        assert result.timings.queue_ms > 0 and result.timings.compute_ms > 0

    before = after  # without holding: calls that arrive within max_queue_delay_us share batches
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda index: client.inspect("tiny", text=f"free note {index}"), range(8)))
    after = scrape_when(server.metrics_port, lambda now: grown(before, now, "mmfusion_batch_size_sum") == 8)
    assert grown(before, after, "mmfusion_batch_size_count") < 8


def test_a_full_queue_answers_resource_exhausted(server, client, entry):
    before = scrape(server.metrics_port)
    release = hold_scheduler(entry)
    with ThreadPoolExecutor(QUEUE_SIZE) as pool:
        calls = [pool.submit(client.inspect, "tiny", text=f"queued {index}") for index in range(QUEUE_SIZE)]
        eventually(lambda: entry.scheduler.queued == QUEUE_SIZE)
        with pytest.raises(ServerError, match=f"queue full .*max_queue_size={QUEUE_SIZE}") as raised:
            client.inspect("tiny", text="one too many")
        assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        release.set()
        assert all(call.result(WAIT_S).model == "tiny" for call in calls)
    assert client.inspect("tiny", text="accepted again").model == "tiny"
    after = scrape(server.metrics_port)
    assert grown(before, after, "nv_inference_request_failure") == 1
    assert grown(before, after, "nv_inference_request_success") == 9


def test_a_request_whose_deadline_passes_in_the_queue_is_never_computed(server, client, entry, predicted):
    before = scrape(server.metrics_port)
    release = hold_scheduler(entry)
    started = time.monotonic()
    with pytest.raises(ServerError) as raised:
        client._call(client.stub.Inspect, pb.InspectRequest(model="tiny", text="too late"), timeout=0.3)
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 5
    scrape_when(server.metrics_port, lambda now: grown(before, now, "nv_inference_request_failure") == 1)
    release.set()
    assert client.inspect("tiny", text="in time").model == "tiny"
    assert predicted == ["in time"]  # "too late" left the queue without reaching the pipeline


def test_a_repeated_inspect_is_answered_from_the_cache(server, client, predicted):
    image = png(random_image(11))
    before = scrape(server.metrics_port)
    first = client.inspect("tiny", image=image, text="cached note")
    second = client.inspect("tiny", image=image, text="cached note")
    assert len(predicted) == 1  # the second call did not reach the pipeline
    assert second.timings.compute_ms == 0 and second.timings.total_ms > 0
    first.ClearField("timings")
    second.ClearField("timings")
    assert second == first
    with_embedding = client.inspect("tiny", image=image, text="cached note", include_embedding=True)
    assert len(predicted) == 2 and len(with_embedding.heads["embedding"].embedding) == 1280  # options are in the key
    after = scrape(server.metrics_port)
    hits, misses = (
        ("mmfusion_cache_hits_total", (("model", "tiny"),)),
        ("mmfusion_cache_misses_total", (("model", "tiny"),)),
    )
    assert after[hits] - before.get(hits, 0) == 1 and after[misses] - before.get(misses, 0) == 2
    assert len(server.cache) >= 2


def test_metrics_endpoint_reports_requests_durations_and_models(server, client):
    before = scrape(server.metrics_port)
    client.inspect("tiny", text="measured note")
    with pytest.raises(ServerError):
        client.inspect("tiny", image=b"not an image")
    after = scrape(server.metrics_port)
    success, failure = ("nv_inference_request_success", TINY), ("nv_inference_request_failure", TINY)
    assert after[success] - before[success] == 1 and after[failure] - before.get(failure, 0) == 1
    assert after[("mmfusion_models_loaded", ())] == 1
    assert after[("nv_inference_count", TINY)] - before[("nv_inference_count", TINY)] == 1
    assert after[("mmfusion_queue_seconds_count", TINY)] - before[("mmfusion_queue_seconds_count", TINY)] == 1
    assert after[("mmfusion_compute_seconds_count", TINY)] - before[("mmfusion_compute_seconds_count", TINY)] == 1
    assert (
        after[("nv_inference_compute_infer_duration_us", TINY)]
        > before[("nv_inference_compute_infer_duration_us", TINY)]
    )


def test_a_flooding_stream_drops_its_oldest_frames_and_says_which(server, client, entry):
    options = pb.StreamOptions(max_pending_frames=2)
    flood = list(frames_from_images([random_image(s, 48, 48) for s in range(10)], "flood", "tiny", options))
    calm = list(frames_from_images([random_image(20, 48, 48)], "calm", "tiny", options))
    flood_label = (("stream", "flood"),)
    before = scrape(server.metrics_port)
    release = hold_scheduler(entry)
    results: list[pb.FrameResult] = []
    streaming = threading.Thread(target=lambda: results.extend(client.stream(flood + calm)))
    streaming.start()
    scrape_when(
        server.metrics_port,
        lambda now: (
            grown(before, now, "mmfusion_stream_dropped_frames_total", flood_label) == 8 and entry.scheduler.queued == 3
        ),
    )
    release.set()
    streaming.join(WAIT_S)
    by_stream = {name: [r for r in results if r.stream_id == name] for name in ("flood", "calm")}
    assert [r.sequence_number for r in by_stream["flood"]] == [8, 9]
    assert list(by_stream["flood"][0].skipped_sequence_numbers) == list(range(8))
    assert list(by_stream["flood"][1].skipped_sequence_numbers) == []
    assert [(r.sequence_number, list(r.skipped_sequence_numbers)) for r in by_stream["calm"]] == [(0, [])]
    assert all(r.HasField("result") for r in results)


def test_stream_fps_is_published_while_the_stream_runs(server, client):
    more = threading.Event()
    images = [random_image(30 + s, 48, 48) for s in range(4)]

    def frames():
        options = pb.StreamOptions(max_pending_frames=10)  # a burst of 3 frames is not a flood here
        for index, frame in enumerate(frames_from_images(images, "cam-fps", "tiny", options)):
            if index == 3:
                more.wait(WAIT_S)
            yield frame

    fps = ("mmfusion_stream_fps", (("stream", "cam-fps"),))
    results = client.stream(frames())
    assert [next(results).sequence_number for _ in range(3)] == [0, 1, 2]
    eventually(lambda: scrape(server.metrics_port).get(fps, 0) > 0)
    more.set()
    assert [r.sequence_number for r in results] == [3]
    eventually(lambda: fps not in scrape(server.metrics_port))  # an ended stream is no longer exported


def test_a_model_without_cache_is_computed_every_time(model_root):
    with build_server(["tiny"], port=0, model_root=model_root, no_cache_models=["tiny"]) as running:
        with InspectionClient(f"127.0.0.1:{running.port}", timeout=30) as client:
            results = [client.inspect("tiny", text="same note") for _ in range(3)]
        assert all(result.timings.compute_ms > 0 for result in results)
        samples = running.metrics.render().decode()
        assert 'nv_inference_count{model="tiny",version="1"} 3.0' in samples
        assert "mmfusion_cache_hits_total{" not in samples and len(running.cache) == 0


def test_stop_serves_queued_work_refuses_new_calls_and_closes_metrics(model_root):
    running = build_server(["tiny"], port=0, model_root=model_root, **BATCHING, metrics_port=0).start()
    metrics_port = running.metrics_port
    entry = running.models.get("tiny")
    with InspectionClient(f"127.0.0.1:{running.port}", timeout=30) as client, ThreadPoolExecutor(3) as pool:
        client.wait_ready(10)
        release = hold_scheduler(entry)
        calls = [pool.submit(client.inspect, "tiny", text=f"in flight {index}") for index in range(3)]
        eventually(lambda: entry.scheduler.queued == 3)
        stopping = threading.Thread(target=running.stop, kwargs={"grace": 10.0})
        stopping.start()
        time.sleep(0.3)
        with pytest.raises(ServerError) as raised:
            client.inspect("tiny", text="new call")
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE
        release.set()
        assert [call.result(WAIT_S).model for call in calls] == ["tiny"] * 3
        stopping.join(WAIT_S)
    assert not stopping.is_alive() and running.models.loaded_names() == []
    assert entry.scheduler.closed and entry.pipeline.backend.graph is None
    with pytest.raises(urllib.error.URLError):
        scrape(metrics_port)


def test_stop_keeps_to_its_grace_period_when_the_backend_is_stuck(model_root):
    running = build_server(["tiny"], port=0, model_root=model_root).start()
    entry = running.models.get("tiny")
    release = hold_scheduler(entry)
    try:
        with InspectionClient(f"127.0.0.1:{running.port}", timeout=30) as client:
            stranded = ThreadPoolExecutor(1).submit(client.inspect, "tiny", text="stranded")
            eventually(lambda: entry.scheduler.queued == 1)
            started = time.monotonic()
            running.stop(grace=0.5)
            assert time.monotonic() - started < 3.0
            with pytest.raises(ServerError) as raised:
                stranded.result(WAIT_S)
            assert raised.value.code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        assert running.models.loaded_names() == [] and entry.pipeline.backend.graph is not None  # left to the GC
    finally:
        release.set()


def test_a_metrics_port_in_use_is_refused_and_the_models_are_unloaded(server, model_root):
    running = build_server(["tiny"], port=0, model_root=model_root, metrics_port=server.metrics_port)
    entry = running.models.get("tiny")
    with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{server.metrics_port}"):
        running.start()
    assert running.models.loaded_names() == [] and entry.scheduler.closed
