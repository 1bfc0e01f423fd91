"""The process's CPU time shared out among the batches running when it was spent (capacity metrics).

ONNX Runtime and torch run a batch on intra-op threads of their own, so the CPU time of the scheduler
thread that called the backend (time.thread_time) misses most of the work. The process's CPU clock
(CLOCK_PROCESS_CPUTIME_ID: every thread) sees it all, but when two models run batches at once it cannot
tell whose work a CPU second was. The accountant reads the process clock at every batch start and end,
and shares each interval's CPU time equally among the batches running during it:

- one batch at a time: a batch is charged exactly the process CPU spent while it ran;
- overlapping batches: the overlap's CPU is split evenly, so a light model running beside a heavy one is
  over-charged and the heavy one under-charged, but the sum over models never exceeds the process's CPU;
- other threads' work during a batch (gRPC threads decoding the next images, metrics scrapes) is charged
  to the running batch; CPU spent while no batch runs is charged to nobody (process_cpu_seconds_total
  minus the sum over models).

It also keeps the process-wide busy time: seconds during which at least one batch was running.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path


class CpuAccountant:
    """Process CPU seconds charged to running batches, split evenly while batches overlap; one per process."""

    def __init__(self, cpu_clock: Callable[[], float] = time.process_time, clock: Callable[[], float] = time.monotonic):
        self._cpu_clock = cpu_clock
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        self._running: dict[int, float] = {}  # batch token -> CPU seconds charged so far
        self._last_cpu = 0.0
        self._busy_total = 0.0
        self._busy_since = 0.0

    def begin(self) -> int:
        """A batch starts now; returns its token for end()."""
        with self._lock:
            self._settle()
            if not self._running:
                self._busy_since = self._clock()
            token = next(self._tokens)
            self._running[token] = 0.0
            return token

    def end(self, token: int) -> float:
        """The batch of `token` ended now; returns the CPU seconds charged to it."""
        with self._lock:
            self._settle()
            charged = self._running.pop(token, 0.0)
            if not self._running:
                self._busy_total += self._clock() - self._busy_since
            return charged

    def busy_seconds(self) -> float:
        """Seconds during which at least one batch ran in this process (a batch still running counts so far)."""
        with self._lock:
            running = self._clock() - self._busy_since if self._running else 0.0
            return self._busy_total + running

    def _settle(self) -> None:
        """Share the CPU time since the last event among the batches running (lock held)."""
        now = self._cpu_clock()
        spent, self._last_cpu = max(now - self._last_cpu, 0.0), now
        if self._running:
            share = spent / len(self._running)
            for token in self._running:
                self._running[token] += share


PROCESS = CpuAccountant()  # every scheduler of the process shares one: the process clock is shared


def cpu_cores() -> float:
    """CPU cores this process may use: the cgroup's CPU quota when it sets one, else the CPUs of its affinity mask."""
    try:
        cores = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cores = float(os.cpu_count() or 1)
    quota = _cgroup_quota()
    return min(cores, quota) if quota else cores


def _cgroup_quota() -> float | None:
    """cgroup v2 cpu.max (or v1 cfs quota/period) as cores; None when unlimited or unreadable."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None
