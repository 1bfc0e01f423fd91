"""Logs, traces and metrics of a real server: request ids in log lines, RPC -> queue -> batch -> backend spans,
OTLP export, RPC, scheduler, process and GPU metrics."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import types
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from mmfusion import logs, tracing
from mmfusion.cli.main import main
from mmfusion.client import InspectionClient, frames_from_images
from mmfusion.proto import inspection_pb2 as pb
from mmfusion.serving import build_server
from mmfusion.serving.collectors import GpuCollector, SchedulerCollector
from mmfusion.serving.scheduler import BatchScheduler
from mmfusion.serving.server import SERVICE_NAME
from tests.test_pipeline import RED, tiny_model

WAIT_S = 20.0
INSPECT = f"{SERVICE_NAME}/Inspect"


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    tiny_model(root / "tiny")
    return root


@pytest.fixture(scope="module")
def server(model_root):
    # no result cache: every Inspect reaches the scheduler
    with build_server(["tiny"], port=0, model_root=model_root, cache_bytes=0, metrics_port=0) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with InspectionClient(f"127.0.0.1:{server.port}", timeout=30) as connected:
        connected.wait_ready(10)
        yield connected


@pytest.fixture
def spans():
    """An in-memory exporter that sees every span while the test runs; tracing is off again afterwards."""
    exporter = InMemorySpanExporter()
    tracing.configure(exporter=exporter, batch=False)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def inspect(client: InspectionClient, text: str, metadata: tuple = ()) -> tuple[pb.InspectionResult, dict]:
    """One Inspect by text with extra metadata; the reply and the server's initial metadata."""
    result, call = client.stub.Inspect.with_call(pb.InspectRequest(model="tiny", text=text), metadata=metadata)
    return result, dict(call.initial_metadata())


def finished(exporter: InMemorySpanExporter, names: set[str]) -> dict:
    """The latest finished span of each name, waiting (briefly) until all have ended."""
    deadline = time.monotonic() + WAIT_S
    while True:
        latest = {span.name: span for span in exporter.get_finished_spans()}
        if names <= set(latest) or time.monotonic() > deadline:
            return latest
        time.sleep(0.02)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# ---- logs


def test_a_request_through_a_real_server_logs_its_request_id(server, client, monkeypatch, capsys):
    pipeline = server.models.get("tiny").pipeline
    original = pipeline.predict_batch

    def logged_predict_batch(batch):
        logging.getLogger("mmfusion.test.batch").info("running a batch of %d", len(batch))
        return original(batch)

    monkeypatch.setattr(pipeline, "predict_batch", logged_predict_batch)  # runs on the scheduler's thread
    with logs.configured("info", "json"):
        _, echoed = inspect(client, "log my request id", metadata=(("x-request-id", "obs-req-1"),))
        _, minted = inspect(client, "no id offered")
    assert echoed["x-request-id"] == "obs-req-1"  # echoed without any security configured
    lines = json_lines(capsys.readouterr().err)
    mine = [line for line in lines if line.get("request_id") == "obs-req-1"]
    access = next(line for line in mine if line["logger"] == "mmfusion.serving.access")
    assert access["rpc"] == INSPECT and access["model"] == "tiny" and access["code"] == "OK"
    assert access["level"] == "INFO" and access["message"].startswith(f"{INSPECT} tiny OK ")
    batch = next(line for line in mine if line["logger"] == "mmfusion.test.batch")  # the scheduler thread's line
    assert batch["message"] == "running a batch of 1"
    new_id = minted["x-request-id"]
    assert len(new_id) == 32 and any(line.get("request_id") == new_id for line in lines)


# ---- traces


def test_one_inspect_traces_rpc_queue_batch_and_backend(client, spans):
    _, metadata = inspect(client, "trace me", metadata=(("x-request-id", "trace-1"),))
    assert metadata["x-request-id"] == "trace-1"
    latest = finished(spans, {INSPECT, "queue", "batch", "backend.run"})
    rpc, queue, batch, backend = (latest[name] for name in (INSPECT, "queue", "batch", "backend.run"))
    assert rpc.kind == SpanKind.SERVER and rpc.parent is None
    assert rpc.attributes["rpc.system"] == "grpc" and rpc.attributes["rpc.method"] == "Inspect"
    assert rpc.attributes["mmfusion.request_id"] == "trace-1" and rpc.attributes["mmfusion.model"] == "tiny"
    assert rpc.attributes["rpc.grpc.status_code"] == 0
    assert {span.context.trace_id for span in (rpc, queue, batch, backend)} == {rpc.context.trace_id}
    assert queue.parent.span_id == rpc.context.span_id  # the wait in the queue, under the call
    assert batch.parent.span_id == rpc.context.span_id  # the batch, under its first item's call ...
    assert [link.context.span_id for link in batch.links] == [rpc.context.span_id]  # ... linked to every item's
    assert backend.parent.span_id == batch.context.span_id  # the graph, under its batch
    assert queue.attributes["mmfusion.request_id"] == "trace-1"
    assert (
        list(batch.attributes["mmfusion.request_ids"]) == ["trace-1"] and batch.attributes["mmfusion.batch_size"] == 1
    )
    assert backend.attributes["mmfusion.model"] == "tiny" and backend.attributes["mmfusion.backend"]
    assert rpc.start_time <= queue.start_time <= queue.end_time <= batch.start_time
    assert batch.start_time <= backend.start_time <= backend.end_time <= batch.end_time <= rpc.end_time


def test_a_callers_traceparent_is_continued_and_failures_are_marked(client, spans):
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    inspect(client, "continued", metadata=(("traceparent", f"00-{trace_id}-{parent_id}-01"),))
    rpc = finished(spans, {INSPECT})[INSPECT]
    assert f"{rpc.context.trace_id:032x}" == trace_id and f"{rpc.parent.span_id:016x}" == parent_id
    spans.clear()
    with pytest.raises(grpc.RpcError) as raised:
        client.stub.Inspect(pb.InspectRequest(model="no-such-model", text="x"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    rpc = finished(spans, {INSPECT})[INSPECT]
    assert rpc.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert "mmfusion.model" not in rpc.attributes  # not a loaded model's name
    assert rpc.status.is_ok  # NOT_FOUND is the caller's error, not the server's


def test_stream_frames_are_traced_under_their_call(server, client, spans):
    frames = frames_from_images([RED, RED + 3], "cam", "tiny")
    answers = list(client.stream(frames))
    assert len(answers) == 2
    stream_rpc = f"{SERVICE_NAME}/StreamInspect"
    latest = finished(spans, {stream_rpc})
    rpc = latest[stream_rpc]
    queues = [span for span in spans.get_finished_spans() if span.name == "queue"]
    assert len(queues) == 2 and all(span.parent.span_id == rpc.context.span_id for span in queues)


def test_with_tracing_off_no_span_is_recorded(client, monkeypatch):
    assert not tracing.enabled()
    made = []
    for name in ("span", "start_span"):
        original = getattr(tracing, name)
        monkeypatch.setattr(
            tracing, name, lambda *a, _original=original, **k: made.append(_original(*a, **k)) or made[-1]
        )
    inspect(client, "untraced", metadata=(("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),))
    assert made and all(made_span is None or made_span is tracing._NOTHING for made_span in made)
    assert tracing.current_context() is None and tracing.extract({"traceparent": "x"}) is None


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A fake OpenTelemetry collector: keeps the names of the spans exported to it."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.services: set[str] = set()

    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    self.services.add(attribute.value.string_value)
            for scope in resource_spans.scope_spans:
                self.names.extend(span.name for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_are_exported_over_otlp_grpc(client):
    collector = Collector()
    receiver = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    port = receiver.add_insecure_port("127.0.0.1:0")
    receiver.start()
    try:
        assert tracing.configure(endpoint=f"http://127.0.0.1:{port}")
        inspect(client, "exported")
        tracing.shutdown()  # flushes the batch processor
    finally:
        tracing.shutdown()
        receiver.stop(0)
    assert {INSPECT, "queue", "batch", "backend.run"} <= set(collector.names)
    assert collector.services == {"mmfusion"}


def test_serve_turns_tracing_on_from_its_flag_or_the_environment(monkeypatch):
    from mmfusion.serving import server as server_module

    seen = []
    monkeypatch.setattr(server_module, "serve", lambda *args, **kwargs: seen.append(tracing.enabled()) or 0)
    assert main(["serve", "--port", "0"]) == 0
    assert main(["serve", "--port", "0", "--otlp-endpoint", "http://127.0.0.1:9"]) == 0
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    assert main(["serve", "--port", "0"]) == 0
    assert seen == [False, True, True] and not tracing.enabled()  # off again once serve returned


# ---- metrics


def scrape(server) -> dict[str, list]:
    """Samples of the server's /metrics endpoint by sample name."""
    with socket.create_connection(("127.0.0.1", server.metrics_port), timeout=5) as connection:
        connection.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        body = b"".join(iter(lambda: connection.recv(65536), b""))
    text = body.split(b"\r\n\r\n", 1)[1].decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        samples.setdefault(family.name, [])
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return next(s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items()))


def test_rpc_scheduler_stream_and_process_metrics(server, client):
    inspect(client, "counted")
    with pytest.raises(grpc.RpcError):
        client.stub.Inspect(pb.InspectRequest(model="made-up-model", text="x"))
    release = threading.Event()

    def frames():
        yield from frames_from_images([RED], "metrics-cam", "tiny")
        release.wait(WAIT_S)  # the stream stays open until the gauge was read

    answers = client.stream(frames())
    next(answers)
    samples = scrape(server)
    release.set()
    list(answers)
    rpc = {"service": SERVICE_NAME, "method": "Inspect", "kind": "unary"}
    assert value(samples, "mmfusion_rpc_requests_total", **rpc, model="tiny", code="OK") >= 1
    assert value(samples, "mmfusion_rpc_requests_total", **rpc, model="", code="NOT_FOUND") >= 1
    assert value(samples, "mmfusion_rpc_duration_seconds_count", **rpc, model="tiny") >= 1
    assert not any(s.labels["model"] == "made-up-model" for s in samples["mmfusion_rpc_requests_total"])
    assert value(samples, "mmfusion_streams_open") == 1
    tiny = {"model": "tiny", "version": "1"}
    assert value(samples, "mmfusion_queue_depth", **tiny) == 0
    assert value(samples, "mmfusion_queue_capacity", **tiny) == 256
    assert value(samples, "mmfusion_scheduler_instances", **tiny) == 1
    assert value(samples, "mmfusion_scheduler_busy_seconds_total", **tiny) > 0
    assert 0 < value(samples, "mmfusion_scheduler_busy_ratio", **tiny) <= 1
    assert value(samples, "process_cpu_seconds_total") > 0 and value(samples, "process_resident_memory_bytes") > 1e6
    assert "python_info" in samples
    assert "mmfusion_gpu_memory_allocated_bytes" in samples  # declared, with series only where a GPU is in use


def test_the_busy_share_is_the_time_spent_in_batches():
    scheduler = BatchScheduler(lambda items: time.sleep(0.2) or items, max_queue_delay_us=0, name="busy")
    try:
        collector = SchedulerCollector(window_s=60.0)
        collector.watch(lambda: [("busy", "1", scheduler)])
        scheduler.started_at = time.monotonic()
        scheduler.submit("one").result(WAIT_S)
        busy = scheduler.busy_seconds()
        assert 0.19 <= busy < 1.0
        families = {family.name: family for family in collector.collect()}
        ratio = families["mmfusion_scheduler_busy_ratio"].samples[0].value
        elapsed = time.monotonic() - scheduler.started_at
        assert ratio == pytest.approx(busy / elapsed, rel=0.2)
        running = scheduler.submit("two")
        time.sleep(0.15)
        assert scheduler.busy_seconds() >= busy + 0.05  # a batch still running counts so far
        running.result(WAIT_S)
    finally:
        scheduler.close()


def test_gpu_metrics_come_from_torch_cuda_when_the_process_uses_a_gpu(monkeypatch):
    def families():
        return {family.name: family for family in GpuCollector().collect()}

    monkeypatch.setitem(__import__("sys").modules, "torch", types.SimpleNamespace())  # no cuda at all
    assert all(not family.samples for family in families().values())
    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: True,
        current_device=lambda: 0,
        device_count=lambda: 1,
        get_device_name=lambda index: "Fake GPU",
        memory_reserved=lambda index: 3 * 2**30,
        memory_allocated=lambda index: 2 * 2**30,
        mem_get_info=lambda index: (60 * 2**30, 80 * 2**30),
        utilization=lambda index: 42,
    )
    monkeypatch.setitem(__import__("sys").modules, "torch", types.SimpleNamespace(cuda=cuda))
    found = {name: [(s.labels, s.value) for s in family.samples] for name, family in families().items()}
    device = {"device": "0", "name": "Fake GPU"}
    assert found["mmfusion_gpu_memory_allocated_bytes"] == [(device, 2 * 2**30)]
    assert found["mmfusion_gpu_memory_reserved_bytes"] == [(device, 3 * 2**30)]
    assert found["mmfusion_gpu_memory_used_bytes"] == [(device, 20 * 2**30)]
    assert found["mmfusion_gpu_memory_total_bytes"] == [(device, 80 * 2**30)]
    assert found["mmfusion_gpu_utilization_ratio"] == [(device, 0.42)]
