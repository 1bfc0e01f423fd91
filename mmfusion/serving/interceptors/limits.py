"""Limits: each caller's call rate (token bucket) and open streams, RESOURCE_EXHAUSTED beyond them."""

from __future__ import annotations

import math

import grpc

from mmfusion.security.limits import RateLimit, StreamSlots, TokenBuckets
from mmfusion.serving.interceptors.call import CallInterceptor, CallRecord

RETRY_AFTER_KEY = "retry-after-ms"


def limit_key(call: CallRecord, context: grpc.ServicerContext, authenticated: bool) -> str:
    """Whose bucket and stream slots a call takes: its caller's id, or its peer's host without auth."""
    if not call.limit_key:
        peer = context.peer()
        call.limit_key = call.caller.id if authenticated else peer.rpartition(":")[0] or peer
    return call.limit_key


class RateLimitInterceptor(CallInterceptor):
    """Takes a token from the caller's bucket for each call; aborts with `retry-after-ms` when it is empty."""

    def __init__(self, rate_limit: RateLimit, buckets: TokenBuckets, authenticated: bool) -> None:
        self.rate_limit = rate_limit
        self.buckets = buckets
        self.authenticated = authenticated

    def begin(self, call: CallRecord, context: grpc.ServicerContext) -> None:
        """Take a token; aborts RESOURCE_EXHAUSTED, saying when to retry, if there is none."""
        key = limit_key(call, context, self.authenticated)
        wait = self.buckets.take(key)
        if wait > 0:
            milliseconds = max(1, math.ceil(wait * 1000))
            context.set_trailing_metadata(((RETRY_AFTER_KEY, str(milliseconds)),))
            limit = self.rate_limit
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit of {limit.rate:g} calls/s (burst {limit.capacity:g}) reached for "
                f"{key}; retry after {milliseconds} ms",
            )


class StreamLimitInterceptor(CallInterceptor):
    """Holds one of the caller's stream slots while a streaming call runs; aborts when all are taken."""

    def __init__(self, slots: StreamSlots, authenticated: bool) -> None:
        self.slots = slots
        self.authenticated = authenticated

    def begin(self, call: CallRecord, context: grpc.ServicerContext) -> None:
        """Enter a stream slot; aborts RESOURCE_EXHAUSTED when the caller has the most streams open."""
        if not call.streaming:
            return
        key = limit_key(call, context, self.authenticated)
        if not self.slots.enter(key):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{key} has {self.slots.max_streams} streams open, the most allowed; retry when one of them ends",
            )

    def end(self, call: CallRecord, context: grpc.ServicerContext) -> None:
        """Leave the stream slot."""
        if call.streaming:
            self.slots.leave(call.limit_key)
