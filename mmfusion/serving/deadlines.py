"""A call's deadline as the scheduler sees it: seconds left, or a monotonic time; None without one."""

from __future__ import annotations

import math
import time

import grpc

NO_DEADLINE_SECONDS = 365 * 24 * 3600.0  # grpc reports a call without a deadline as one far in the future


def time_remaining(context: grpc.ServicerContext) -> float | None:
    """Seconds left before the call's deadline; None when the client set none."""
    remaining = context.time_remaining()
    if remaining is None or not math.isfinite(remaining) or remaining > NO_DEADLINE_SECONDS:
        return None
    return remaining


def deadline_of(context: grpc.ServicerContext) -> float | None:
    """The call's deadline on the monotonic clock; None when the client set none."""
    remaining = time_remaining(context)
    return None if remaining is None else time.monotonic() + remaining
