"""Per-caller limits: a token bucket of calls per second, and a cap on concurrent streaming calls."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from mmfusion.types import InputError

MAX_TRACKED_CALLERS = 10_000  # the least recently seen callers' buckets are forgotten beyond this
DEFAULT_MAX_STREAMS = 8


@dataclass(frozen=True)
class RateLimit:
    """`rate` calls per second with bursts of `burst` calls, and at most `max_streams` open streams, per caller."""

    rate: float
    burst: int | None = None
    max_streams: int = DEFAULT_MAX_STREAMS

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise InputError(f"rate limit {self.rate}: expected calls per second > 0")
        if self.burst is not None and self.burst < 1:
            raise InputError(f"burst {self.burst}: expected at least 1 call")
        if self.max_streams < 1:
            raise InputError(f"max streams {self.max_streams}: expected at least 1")

    @property
    def capacity(self) -> float:
        return float(self.burst if self.burst is not None else max(1, round(self.rate)))


class TokenBuckets:
    """One token bucket per caller id; `take` returns 0 when the call may go, else the seconds to wait."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # caller -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, caller: str) -> float:
        now, capacity, rate = self._clock(), self.limit.capacity, self.limit.rate
        with self._lock:
            tokens, at = self._buckets.pop(caller, (capacity, now))
            tokens = min(capacity, tokens + (now - at) * rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / rate
            self._buckets[caller] = (tokens - 1.0 if wait == 0.0 else tokens, now)
            while len(self._buckets) > MAX_TRACKED_CALLERS:
                self._buckets.popitem(last=False)
        return wait


class StreamSlots:
    """Counts each caller's open streaming calls; `enter` is False when the caller is at the cap."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def enter(self, caller: str) -> bool:
        with self._lock:
            if self._open.get(caller, 0) >= self.max_streams:
                return False
            self._open[caller] = self._open.get(caller, 0) + 1
            return True

    def leave(self, caller: str) -> None:
        with self._lock:
            left = self._open.get(caller, 0) - 1
            if left > 0:
                self._open[caller] = left
            else:
                self._open.pop(caller, None)

    def open(self, caller: str) -> int:
        with self._lock:
            return self._open.get(caller, 0)
