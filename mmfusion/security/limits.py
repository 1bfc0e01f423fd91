"""Per-caller limits: token buckets of calls and of failed authentications, and a cap on concurrent streams."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from mmfusion.types import InputError

MAX_TRACKED_CALLERS = 10_000  # the least recently seen callers' buckets are forgotten beyond this
DEFAULT_MAX_STREAMS = 8
DEFAULT_AUTH_FAILURES = 20  # failed authentications per client address ...
DEFAULT_AUTH_FAILURE_WINDOW_S = 60.0  # ... per minute


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


@dataclass(frozen=True)
class FailureLimit:
    """At most `failures` failed authentications per `window_s` seconds from one client address (a token bucket)."""

    failures: int = DEFAULT_AUTH_FAILURES
    window_s: float = DEFAULT_AUTH_FAILURE_WINDOW_S

    def __post_init__(self) -> None:
        if isinstance(self.failures, bool) or not isinstance(self.failures, int) or self.failures < 1:
            raise InputError(f"auth failure limit {self.failures!r}: expected a whole number of failures >= 1")
        if not self.window_s > 0:
            raise InputError(f"auth failure window {self.window_s!r}: expected seconds > 0")

    def as_rate_limit(self) -> RateLimit:
        """The bucket: `failures` at once, refilled at `failures` per window."""
        return RateLimit(rate=self.failures / self.window_s, burst=self.failures)


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

    def wait(self, caller: str) -> float:
        """The seconds until the caller's bucket holds a token (0 when it does), taking nothing."""
        now, capacity, rate = self._clock(), self.limit.capacity, self.limit.rate
        with self._lock:
            tokens, at = self._buckets.get(caller, (capacity, now))
        tokens = min(capacity, tokens + (now - at) * rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / rate

    def charge(self, caller: str) -> None:
        """Take a token even from an empty bucket (calls that raced past `wait` each still cost one)."""
        now, capacity, rate = self._clock(), self.limit.capacity, self.limit.rate
        with self._lock:
            tokens, at = self._buckets.pop(caller, (capacity, now))
            self._buckets[caller] = (min(capacity, tokens + (now - at) * rate) - 1.0, now)
            while len(self._buckets) > MAX_TRACKED_CALLERS:
                self._buckets.popitem(last=False)


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
