"""Per-model inference statistics, as Triton's ModelStatistics reports them: counts and cumulative durations.

Recorded by ServiceMetrics (metrics.py) beside its Prometheus series, from the same two places: each finished
request (success or failure, with its end-to-end duration when the request was timed) and each executed
batch (its size, each item's queue time, the backend time). As in Triton, every item of a batch is charged
the batch's compute time, and `inference_count` counts items while `execution_count` counts batches.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

NS_PER_S = 1_000_000_000


@dataclass
class Duration:
    """How many times something happened and how long it took in all (nanoseconds)."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float | None, count: int = 1) -> None:
        self.count += count
        if seconds is not None:
            self.ns += max(0, round(seconds * NS_PER_S))


@dataclass
class ModelTotals:
    """One model version's totals since it was first served (kept across unload and reload)."""

    last_inference_ms: int = 0  # wall-clock milliseconds since the epoch of the last finished request
    inference_count: int = 0  # items run by the backend (a batch of 4 counts 4)
    execution_count: int = 0  # backend runs (batches)
    success: Duration = field(default_factory=Duration)  # requests answered, end to end
    fail: Duration = field(default_factory=Duration)  # requests that failed, end to end
    queue: Duration = field(default_factory=Duration)  # items' time queued before their batch ran
    compute_infer: Duration = field(default_factory=Duration)  # items' share of backend time (the batch's time each)
    batches: dict[int, Duration] = field(default_factory=dict)  # backend runs and their time, by batch size


class InferenceStatistics:
    """Thread-safe totals per (model, version)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[tuple[str, str], ModelTotals] = {}

    def _of(self, model: str, version: str) -> ModelTotals:
        return self._totals.setdefault((model, str(version)), ModelTotals())

    def record_request(self, model: str, version: int | str, success: bool, seconds: float | None = None) -> None:
        """One finished request; `seconds` its end-to-end time when it was timed (else counted without time)."""
        with self._lock:
            totals = self._of(model, str(version))
            (totals.success if success else totals.fail).add(seconds)
            totals.last_inference_ms = int(time.time() * 1000)

    def record_batch(
        self, model: str, version: int | str, batch_size: int, queue_seconds: Sequence[float], compute_seconds: float
    ) -> None:
        """One backend run of `batch_size` items."""
        with self._lock:
            totals = self._of(model, str(version))
            totals.execution_count += 1
            totals.inference_count += batch_size
            totals.queue.add(sum(queue_seconds), count=len(queue_seconds))
            totals.compute_infer.add(compute_seconds * batch_size, count=batch_size)
            totals.batches.setdefault(batch_size, Duration()).add(compute_seconds)

    def snapshot(self, model: str, version: int | str) -> ModelTotals:
        """A copy of one model version's totals (zeros when it never ran)."""
        with self._lock:
            return copy.deepcopy(self._totals.get((model, str(version)), ModelTotals()))
