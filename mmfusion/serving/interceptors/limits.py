"""Limits: each caller's call rate (token bucket) and open streams, RESOURCE_EXHAUSTED beyond them."""

from __future__ import annotations

import math

import grpc

from mmfusion.security.limits import RateLimit, StreamSlots, TokenBuckets
from mmfusion.security.network import TrustedProxies, peer_key
from mmfusion.serving.interceptors.call import CallInterceptor, CallRecord
from mmfusion.serving.stream_limits import FRAME_GATES, FrameGate

RETRY_AFTER_KEY = "retry-after-ms"


def client_key(context: grpc.ServicerContext, proxies: TrustedProxies | None = None) -> str:
    """The calling client's address: the one a trusted proxy forwarded, else the peer's host ('ipv4:1.2.3.4')."""
    if proxies:
        return proxies.client_key(context.peer(), context.invocation_metadata() or ())
    return peer_key(context.peer())


def limit_key(
    call: CallRecord, context: grpc.ServicerContext, authenticated: bool, proxies: TrustedProxies | None = None
) -> str:
    """Whose bucket and stream slots a call takes: its caller's id, or its client's address without auth."""
    if not call.limit_key:
        call.limit_key = call.caller.id if authenticated else client_key(context, proxies)
    return call.limit_key


class RateLimitInterceptor(CallInterceptor):
    """Takes a token from the caller's bucket for each call and each later frame of a stream; none left: refused."""

    def __init__(
        self,
        rate_limit: RateLimit,
        buckets: TokenBuckets,
        authenticated: bool,
        proxies: TrustedProxies | None = None,
    ) -> None:
        self.rate_limit = rate_limit
        self.buckets = buckets
        self.authenticated = authenticated
        self.proxies = proxies

    def begin(self, call: CallRecord, context: grpc.ServicerContext) -> None:
        """Take a token; aborts RESOURCE_EXHAUSTED, saying when to retry, if there is none."""
        key = limit_key(call, context, self.authenticated, self.proxies)
        wait = self.buckets.take(key)
        if wait > 0:
            milliseconds = max(1, math.ceil(wait * 1000))
            context.set_trailing_metadata(((RETRY_AFTER_KEY, str(milliseconds)),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._reached(key, "retry", milliseconds))
        if call.kind == "stream_stream":  # a stream of frames is one call however many frames it carries
            FRAME_GATES[context] = self._frame_gate(key)

    def end(self, call: CallRecord, context: grpc.ServicerContext) -> None:
        """Forget the call's frame gate."""
        FRAME_GATES.pop(context, None)

    def _reached(self, key: str, what: str, milliseconds: int) -> str:
        limit = self.rate_limit
        return (
            f"rate limit of {limit.rate:g} calls/s (burst {limit.capacity:g}) reached for {key}; "
            f"{what} after {milliseconds} ms"
        )

    def _frame_gate(self, key: str) -> FrameGate:
        """Each frame after the first (the call's token paid for that one) takes a token from the caller's bucket."""
        paid = [True]

        def gate() -> str | None:
            if paid[0]:
                paid[0] = False
                return None
            wait = self.buckets.take(key)
            if wait <= 0:
                return None
            milliseconds = max(1, math.ceil(wait * 1000))
            return self._reached(key, "the frame was not inspected; send frames slower or retry", milliseconds)

        return gate


class StreamLimitInterceptor(CallInterceptor):
    """Holds one of the caller's stream slots while a streaming call runs; aborts when all are taken."""

    def __init__(self, slots: StreamSlots, authenticated: bool, proxies: TrustedProxies | None = None) -> None:
        self.slots = slots
        self.authenticated = authenticated
        self.proxies = proxies

    def begin(self, call: CallRecord, context: grpc.ServicerContext) -> None:
        """Enter a stream slot; aborts RESOURCE_EXHAUSTED when the caller has the most streams open."""
        if not call.streaming:
            return
        key = limit_key(call, context, self.authenticated, self.proxies)
        if not self.slots.enter(key):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{key} has {self.slots.max_streams} streams open, the most allowed; retry when one of them ends",
            )

    def end(self, call: CallRecord, context: grpc.ServicerContext) -> None:
        """Leave the stream slot."""
        if call.streaming:
            self.slots.leave(call.limit_key)
