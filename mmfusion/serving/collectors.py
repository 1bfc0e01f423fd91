"""Prometheus collectors read at scrape time: the models' schedulers (queue, busy share, CPU) and the GPUs.

Both declare their metric families even when there is nothing to report (no model loaded, no GPU in
use), so dashboards and alert rules can rely on the names being there.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from mmfusion.serving import cpu_share

BUSY_WINDOW_SECONDS = 60.0


class Scheduler(Protocol):
    """What the collector reads of a model's BatchScheduler."""

    queued: int
    max_queue_size: int
    instances: int
    started_at: float

    def busy_seconds(self) -> float: ...

    def cpu_seconds(self) -> float: ...


SchedulerSource = Callable[[], Iterable[tuple[str, str, Scheduler]]]


class SchedulerCollector:
    """Per loaded model: queue depth and capacity, instances, busy seconds and the busy share of the last minute.

    The busy share (`mmfusion_scheduler_busy_ratio`, 0..1, averaged over the model's instances) is what is
    not headroom: 1 - ratio of the scheduler's time is free. It is measured from the latest earlier scrape at
    least BUSY_WINDOW_SECONDS old (before there is one: the oldest; at the first scrape: the scheduler's start).
    `rate(mmfusion_scheduler_busy_seconds_total[5m]) / mmfusion_scheduler_instances` is the same over any window.

    Capacity: `mmfusion_inference_cpu_seconds_total` (process CPU charged to a model's batches, see cpu_share)
    over `nv_inference_count` is a model's CPU seconds per inference; process-wide, `mmfusion_busy_seconds_total`
    (time at least one batch ran) and `mmfusion_cpu_cores` (cores the process may use) give the busy share and
    the CPU headroom, `1 - rate(process_cpu_seconds_total[5m]) / mmfusion_cpu_cores`.
    """

    def __init__(
        self, window_s: float = BUSY_WINDOW_SECONDS, accountant: cpu_share.CpuAccountant | None = None
    ) -> None:
        self.window_s = window_s
        self.accountant = accountant if accountant is not None else cpu_share.PROCESS
        self._source: SchedulerSource = lambda: ()
        self._lock = threading.Lock()
        self._history: dict[int, deque[tuple[float, float]]] = {}

    def watch(self, source: SchedulerSource) -> None:
        """Read (model, version, scheduler) of every loaded model from `source` at each scrape."""
        self._source = source

    def _families(self) -> tuple[Metric, ...]:
        labels = ["model", "version"]
        return (
            GaugeMetricFamily("mmfusion_queue_depth", "Requests waiting in a model's queue", labels=labels),
            GaugeMetricFamily(
                "mmfusion_queue_capacity",
                "Requests a model's queue holds before RESOURCE_EXHAUSTED (max_queue_size)",
                labels=labels,
            ),
            GaugeMetricFamily(
                "mmfusion_scheduler_instances", "Worker threads (model instances) of a model's scheduler", labels=labels
            ),
            CounterMetricFamily(
                "mmfusion_scheduler_busy_seconds",
                "Seconds a model's scheduler workers spent running batches, summed over its instances",
                labels=labels,
            ),
            GaugeMetricFamily(
                "mmfusion_scheduler_busy_ratio",
                "Share of the last minute a model's scheduler was busy, averaged over its instances (1 - headroom)",
                labels=labels,
            ),
            CounterMetricFamily(
                "mmfusion_inference_cpu_seconds",
                "Process CPU seconds charged to a model's inferences: all threads' CPU while its batches ran,"
                " split evenly among batches running at once (divide by nv_inference_count)",
                labels=labels,
            ),
            CounterMetricFamily(
                "mmfusion_busy_seconds",
                "Seconds during which at least one batch of any model was running in this process",
            ),
            GaugeMetricFamily(
                "mmfusion_cpu_cores", "CPU cores this process may use (its cgroup's quota, else its affinity mask)"
            ),
        )

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        depth, capacity, instances, busy, ratio, cpu, any_busy, cores = self._families()
        seen: set[int] = set()
        for model, version, scheduler in self._source():
            labels = [model, str(version)]
            depth.add_metric(labels, scheduler.queued)
            capacity.add_metric(labels, scheduler.max_queue_size)
            instances.add_metric(labels, scheduler.instances)
            seconds = scheduler.busy_seconds()
            busy.add_metric(labels, seconds)
            ratio.add_metric(labels, self._ratio(scheduler, seconds))
            cpu.add_metric(labels, scheduler.cpu_seconds())
            seen.add(id(scheduler))
        with self._lock:
            for key in set(self._history) - seen:
                del self._history[key]  # unloaded models
        any_busy.add_metric([], self.accountant.busy_seconds())
        cores.add_metric([], cpu_share.cpu_cores())
        yield from (depth, capacity, instances, busy, ratio, cpu, any_busy, cores)

    def _ratio(self, scheduler: Scheduler, busy: float) -> float:
        """Busy share since the latest sample at least the window old (else since the scheduler started)."""
        now = time.monotonic()
        with self._lock:
            history = self._history.setdefault(id(scheduler), deque())
            history.append((now, busy))
            while len(history) > 1 and history[1][0] <= now - self.window_s:
                history.popleft()
            then, busy_then = history[0] if history[0][0] < now else (scheduler.started_at, 0.0)
        elapsed = (now - then) * max(scheduler.instances, 1)
        return min(max((busy - busy_then) / elapsed, 0.0), 1.0) if elapsed > 0 else 0.0


class GpuCollector:
    """CUDA memory (and utilisation when NVML answers) of each GPU this process uses, read through torch.

    Reports only once the process has initialised CUDA itself (a CPU-only server never creates a
    CUDA context for its metrics) and never imports torch; without a GPU the families are empty.
    """

    def _families(self) -> list[GaugeMetricFamily]:
        labels = ["device", "name"]
        return [
            GaugeMetricFamily(
                "mmfusion_gpu_memory_allocated_bytes", "GPU memory held by this process's tensors", labels=labels
            ),
            GaugeMetricFamily(
                "mmfusion_gpu_memory_reserved_bytes",
                "GPU memory reserved by this process's caching allocator (allocated plus cached)",
                labels=labels,
            ),
            GaugeMetricFamily(
                "mmfusion_gpu_memory_used_bytes", "GPU memory in use on the device, by every process", labels=labels
            ),
            GaugeMetricFamily("mmfusion_gpu_memory_total_bytes", "GPU memory of the device", labels=labels),
            GaugeMetricFamily(
                "mmfusion_gpu_utilization_ratio",
                "Share of the last sample period the GPU was running kernels (NVML; absent without it)",
                labels=labels,
            ),
        ]

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        allocated, reserved, used, total, utilization = families = self._families()
        torch = sys.modules.get("torch")
        cuda = getattr(torch, "cuda", None)
        if cuda is not None and cuda.is_available() and cuda.is_initialized():
            current = cuda.current_device()
            for index in range(cuda.device_count()):
                labels = [str(index), cuda.get_device_name(index)]
                held = cuda.memory_reserved(index)
                allocated.add_metric(labels, cuda.memory_allocated(index))
                reserved.add_metric(labels, held)
                if held or index == current:  # a device this process has a context on: no new context for metrics
                    free, capacity = cuda.mem_get_info(index)
                    used.add_metric(labels, capacity - free)
                    total.add_metric(labels, capacity)
                try:
                    utilization.add_metric(labels, cuda.utilization(index) / 100.0)
                except Exception:  # no NVML (pynvml) or a device it cannot read: leave it out
                    pass
        yield from families
