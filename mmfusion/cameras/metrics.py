"""Per-camera Prometheus metrics: fps, glass-to-verdict latency, drops, reconnects, defects (own registry)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from mmfusion.cameras.capture import CameraReader
from mmfusion.cameras.stream import CameraResult, CameraStream

LATENCY_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
RATE_WINDOW_S = 2.0


class FrameRate:
    """Events per second over the last RATE_WINDOW_S seconds (thread safe)."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        with self._lock:
            self._times.append(time.monotonic() if now is None else now)

    def per_second(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and self._times[0] < now - self.window_s:
                self._times.popleft()
            if len(self._times) < 2:
                return 0.0
            span = max(now - self._times[0], self._times[-1] - self._times[0])
            return (len(self._times) - 1) / span if span > 0 else 0.0


@dataclass
class CameraGauges:
    """What the collector reads of one camera at scrape time."""

    reader: CameraReader
    stream: CameraStream
    rate: FrameRate


class _CameraCollector:
    """Counters and gauges read from each camera's stats when scraped."""

    def __init__(self) -> None:
        self.cameras: dict[str, CameraGauges] = {}

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        fps = GaugeMetricFamily(
            "mmfusion_camera_fps", "Frames per second judged (answered by the model)", labels=["camera"]
        )
        up = GaugeMetricFamily("mmfusion_camera_up", "1 while the camera's source gives frames", labels=["camera"])
        read = CounterMetricFamily("mmfusion_camera_frames_read", "Frames decoded from the source", labels=["camera"])
        sent = CounterMetricFamily("mmfusion_camera_frames_sent", "Frames sent to the model", labels=["camera"])
        dropped = CounterMetricFamily(
            "mmfusion_camera_dropped_frames",
            "Frames not judged: replaced by a newer one before sending (camera) or dropped by the server (server)",
            labels=["camera", "where"],
        )
        reconnects = CounterMetricFamily(
            "mmfusion_camera_reconnects",
            "Times the source was opened again (source) or the StreamInspect call was opened again (server)",
            labels=["camera", "what"],
        )
        errors = CounterMetricFamily("mmfusion_camera_frame_errors", "Frames answered with an error", labels=["camera"])
        for name, camera in sorted(self.cameras.items()):
            reader, stream = camera.reader.stats, camera.stream.stats
            fps.add_metric([name], camera.rate.per_second())
            up.add_metric([name], 1.0 if reader.connected else 0.0)
            read.add_metric([name], reader.frames)
            sent.add_metric([name], stream.sent)
            dropped.add_metric([name, "camera"], camera.reader.latest.dropped)
            dropped.add_metric([name, "server"], stream.server_dropped)
            reconnects.add_metric([name, "source"], reader.reconnects)
            reconnects.add_metric([name, "server"], max(0, stream.calls - 1))
            errors.add_metric([name], stream.errors)
        yield from (fps, up, read, sent, dropped, reconnects, errors)


class CameraMetrics:
    """The cameras' metrics in a registry of their own; call it with each result (a stream listener)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._collector = _CameraCollector()
        self.registry.register(self._collector)
        self.latency = Histogram(
            "mmfusion_camera_latency_seconds",
            "Frame decoded -> verdict received",
            ["camera"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.defects = Counter(
            "mmfusion_camera_defect_frames_total",
            "Frames whose smoothed verdict is a defect",
            ["camera"],
            registry=self.registry,
        )
        self._http: WSGIServer | None = None

    def add_camera(self, name: str, gauges: CameraGauges) -> None:
        self._collector.cameras[name] = gauges

    def __call__(self, result: CameraResult) -> None:
        self.latency.labels(result.camera).observe(result.latency_s)
        if result.is_defect:
            self.defects.labels(result.camera).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics on host:port (0 = any free port) until stop_http(); returns the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return server.server_port

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
