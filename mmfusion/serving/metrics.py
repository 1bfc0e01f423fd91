"""Prometheus metrics of one server, with Triton's names where Triton has one; one registry per instance."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.metrics_core import Metric

from mmfusion.serving.collectors import GpuCollector, SchedulerCollector, SchedulerSource
from mmfusion.serving.statistics import InferenceStatistics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RPC_SECONDS_BUCKETS = (*SECONDS_BUCKETS, 30.0, 60.0, 300.0, 1800.0)  # streaming calls last minutes
RPC_LABELS = ("service", "method", "kind", "model", "code")

# Triton's cumulative per-model counters. prometheus_client always exposes a counter as NAME_total,
# while Triton's dashboards and alerts query the bare names, so these are exposed by a small
# collector under Triton's exact sample names (as untyped: Prometheus rate() works on them alike).
TRITON_COUNTERS = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_request_failure": "Number of failed inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (each item of a batch counts)",
    "nv_inference_exec_count": "Number of model executions performed (batches)",
    "nv_inference_queue_duration_us": "Cumulative inference queuing duration in microseconds",
    "nv_inference_compute_infer_duration_us": "Cumulative compute inference duration in microseconds",
}


class _TritonCounters:
    """Collector of monotonic per-(model, version) totals exposed under Triton's bare metric names."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, dict[tuple[str, str], float]] = {name: defaultdict(float) for name in TRITON_COUNTERS}

    def add(self, name: str, model: str, version: str, amount: float) -> None:
        """Add a non-negative amount to one series."""
        if amount < 0:
            raise ValueError(f"{name}: increment {amount}: expected >= 0 (counters only go up)")
        with self._lock:
            self._totals[name][(model, version)] += amount

    def value(self, name: str, model: str, version: str) -> float:
        """Current total of one series (0 if never recorded)."""
        with self._lock:
            return self._totals[name].get((model, version), 0.0)

    def describe(self) -> list[Metric]:
        """Metric names for the registry's duplicate check."""
        return [Metric(name, doc, "unknown") for name, doc in TRITON_COUNTERS.items()]

    def collect(self) -> Iterator[Metric]:
        """One metric family per counter, one sample per model version."""
        with self._lock:
            snapshot = {name: dict(series) for name, series in self._totals.items()}
        for name, doc in TRITON_COUNTERS.items():
            family = Metric(name, doc, "unknown")
            for (model, version), total in sorted(snapshot[name].items()):
                family.add_sample(name, {"model": model, "version": version}, total)
            yield family


class ServiceMetrics:
    """Every metric the service exports, in a registry of its own (tests and servers never collide)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.triton = _TritonCounters()
        self.registry.register(self.triton)
        self.statistics = InferenceStatistics()  # the same counts with durations, for KServe ModelStatistics
        model_version = ("model", "version")
        self.queue_seconds = Histogram(
            "mmfusion_queue_seconds",
            "Time a request waited in its model's queue before its batch ran",
            model_version,
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.compute_seconds = Histogram(
            "mmfusion_compute_seconds",
            "Time one batch spent in the backend",
            model_version,
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "mmfusion_batch_size",
            "Items per executed batch",
            model_version,
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.fp32_rechecks = Counter(
            "mmfusion_fp32_rechecks_total",
            "Items an INT8 graph scored near a threshold and the FP32 graph scored again (runtime.recheck_margin)",
            model_version,
            registry=self.registry,
        )
        self.cache_hits = Counter("mmfusion_cache_hits_total", "Result cache hits", ("model",), registry=self.registry)
        self.cache_misses = Counter(
            "mmfusion_cache_misses_total", "Result cache misses", ("model",), registry=self.registry
        )
        self.stream_fps = Gauge(
            "mmfusion_stream_fps", "Frames per second answered on a camera stream", ("stream",), registry=self.registry
        )
        self.stream_dropped_frames = Counter(
            "mmfusion_stream_dropped_frames_total",
            "Frames of a camera stream dropped unserved because newer ones arrived",
            ("stream",),
            registry=self.registry,
        )
        self.models_loaded = Gauge("mmfusion_models_loaded", "Model versions loaded and ready", registry=self.registry)
        self.audit_failures = Counter(
            "mmfusion_audit_failures_total",
            "Audit events that could not be written, and calls refused for it (serve --audit-fail-closed)",
            registry=self.registry,
        )
        self.rpc_requests = Counter(
            "mmfusion_rpc_requests",
            "Finished gRPC calls by service, method, kind (unary, server_stream...), model and status code",
            RPC_LABELS,
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "mmfusion_rpc_duration_seconds",
            "Time from a gRPC call's start to its end (a stream: while it was open)",
            RPC_LABELS[:-1],
            buckets=RPC_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.streams_open = Gauge(
            "mmfusion_streams_open",
            "Streaming calls open now (each holds a stream-pool thread)",
            registry=self.registry,
        )
        self.streams_open.set_function(lambda: 0)
        self.schedulers = SchedulerCollector()
        self.registry.register(self.schedulers)
        self.registry.register(GpuCollector())
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=self.registry)  # python_info
        self._http: WSGIServer | None = None

    def record_rpc(self, service: str, method: str, kind: str, model: str, code: str, seconds: float) -> None:
        """Count and time one finished gRPC call (model: '' when it names no loaded model)."""
        self.rpc_requests.labels(service, method, kind, model, code).inc()
        self.rpc_seconds.labels(service, method, kind, model).observe(seconds)

    def watch_streams(self, count: Callable[[], int]) -> None:
        """Read mmfusion_streams_open from `count()` at each scrape (the stream guard's open calls)."""
        self.streams_open.set_function(count)

    def watch_schedulers(self, source: SchedulerSource) -> None:
        """Read the loaded models' schedulers, (model, version, scheduler) from `source()`, at each scrape."""
        self.schedulers.watch(source)

    def record_request(self, model: str, version: int | str, success: bool, seconds: float | None = None) -> None:
        """Count one finished inference request as a success or a failure (`seconds`: its time, when measured)."""
        name = "nv_inference_request_success" if success else "nv_inference_request_failure"
        self.triton.add(name, model, str(version), 1)
        self.statistics.record_request(model, version, success, seconds)

    @contextmanager
    def request(self, model: str, version: int | str) -> Iterator[None]:
        """Count the request run in the with-block: a success if it returns, a failure if it raises."""
        started = time.monotonic()
        try:
            yield
        except BaseException:
            self.record_request(model, version, success=False, seconds=time.monotonic() - started)
            raise
        self.record_request(model, version, success=True, seconds=time.monotonic() - started)

    def record_batch(
        self, model: str, version: int | str, batch_size: int, queue_seconds: Sequence[float], compute_seconds: float
    ) -> None:
        """Record one executed batch: its size, each item's queue time and the backend time.

        As in Triton, every request of a batch is charged the batch's compute time, so
        compute_infer_duration_us / request_success is the mean compute time a request saw.
        """
        labels = (model, str(version))
        self.triton.add("nv_inference_exec_count", *labels, 1)
        self.triton.add("nv_inference_count", *labels, batch_size)
        self.triton.add("nv_inference_queue_duration_us", *labels, sum(queue_seconds) * 1e6)
        self.triton.add("nv_inference_compute_infer_duration_us", *labels, compute_seconds * 1e6 * batch_size)
        self.statistics.record_batch(model, version, batch_size, queue_seconds, compute_seconds)
        self.batch_size.labels(*labels).observe(batch_size)
        self.compute_seconds.labels(*labels).observe(compute_seconds)
        queue_histogram = self.queue_seconds.labels(*labels)
        for seconds in queue_seconds:
            queue_histogram.observe(seconds)

    def batch_hook(
        self, model: str, version: int | str, rechecked: Callable[[], int] | None = None
    ) -> Callable[[int, list[float], float], None]:
        """An on_batch callback for BatchScheduler that records into these metrics.

        `rechecked`: the model's running count of FP32 re-checks (Pipeline.recheck.items), read after each batch.
        """
        seen = [rechecked() if rechecked is not None else 0]

        def on_batch(batch_size: int, queue_seconds: list[float], compute_seconds: float) -> None:
            self.record_batch(model, version, batch_size, queue_seconds, compute_seconds)
            if rechecked is not None:
                count = rechecked()
                if count > seen[0]:
                    self.fp32_rechecks.labels(model, str(version)).inc(count - seen[0])
                    seen[0] = count

        return on_batch

    def record_cache(self, model: str, hit: bool) -> None:
        """Count one result cache lookup."""
        (self.cache_hits if hit else self.cache_misses).labels(model).inc()

    def set_stream_fps(self, stream: str, frames_per_second: float) -> None:
        """Publish the answered frame rate of a camera stream."""
        self.stream_fps.labels(stream).set(frames_per_second)

    def record_dropped_frames(self, stream: str, count: int = 1) -> None:
        """Count frames of a stream dropped unserved."""
        self.stream_dropped_frames.labels(stream).inc(count)

    def forget_stream(self, stream: str) -> None:
        """Remove an ended stream's fps and dropped-frames series (client-chosen ids: series live with their call)."""
        for series in (self.stream_fps, self.stream_dropped_frames):
            try:
                series.remove(stream)
            except KeyError:
                pass

    def set_models_loaded(self, count: int) -> None:
        """Publish how many model versions are loaded."""
        self.models_loaded.set(count)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def start_http(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve /metrics over HTTP in a daemon thread; port 0 picks a free port. Returns the bound port."""
        if self._http is not None:
            raise RuntimeError(f"metrics already served on port {self._http.server_port}")
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._http = server
        return server.server_port

    def stop_http(self) -> None:
        """Stop the HTTP endpoint, if started, and free its port."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
