"""Streaming calls on a thread pool of their own, capped in all, under first-message and idle time limits.

The sync gRPC server holds a thread for every call while it runs, and a streaming call runs as long
as its client keeps it open, sending or not. So that open streams can never take the threads that
unary calls (health, model listings, Inspect) need, every streaming call runs on the guard's stream
pool instead of the server's: at most `max_open_streams` at once (beyond, RESOURCE_EXHAUSTED at
once, on one of a few spare threads), each reading its client's messages under the time limits of
`TimedRequests`. A server-streaming call (one request, many responses) is taken in as a stream of
requests, so that waiting for its one request is timed too. On shutdown, open streams take no more
messages: they answer what they already took and end UNAVAILABLE, so a stop does not wait for them.
Unary calls and non-blocking handlers (health Watch) pass through untouched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from mmfusion.serving.memory import ReleasingExecutor
from mmfusion.serving.stream_limits import (
    DEFAULT_FIRST_MESSAGE_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    StreamEnded,
    TimedRequests,
    check_timeout,
)

DEFAULT_MAX_OPEN_STREAMS = 64
SPARE_STREAM_THREADS = 4  # threads of the stream pool beyond the cap: they refuse the calls over it at once


class StreamGuard(grpc.ServerInterceptor):
    """The outermost interceptor: runs streaming calls on their own capped pool, timed, stopped on shutdown."""

    def __init__(
        self,
        max_open_streams: int = DEFAULT_MAX_OPEN_STREAMS,
        first_message_timeout_s: float = DEFAULT_FIRST_MESSAGE_TIMEOUT_S,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    ) -> None:
        if isinstance(max_open_streams, bool) or not isinstance(max_open_streams, int) or max_open_streams < 1:
            raise ValueError(f"max_open_streams={max_open_streams!r}: expected a whole number of streams >= 1")
        self.max_open_streams = max_open_streams
        self.first_message_timeout_s = check_timeout("first_message_timeout_s", first_message_timeout_s)
        self.idle_timeout_s = check_timeout("stream_idle_timeout_s", idle_timeout_s)
        self.pool = ReleasingExecutor(max_open_streams + SPARE_STREAM_THREADS, thread_name_prefix="mmfusion-stream")
        self._lock = threading.Lock()
        self._open: set[TimedRequests] = set()
        self._stopping = False

    @property
    def open_streams(self) -> int:
        """Streaming calls open now."""
        with self._lock:
            return len(self._open)

    def intercept_service(self, continuation, handler_call_details):
        """Streaming handlers rewrapped onto the stream pool; unary and non-blocking ones unchanged."""
        handler = continuation(handler_call_details)
        if handler is None or not (handler.request_streaming or handler.response_streaming):
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        if handler.unary_stream is not None:
            behaviour, wrap, make = handler.unary_stream, self._server_stream, grpc.stream_stream_rpc_method_handler
        elif handler.stream_unary is not None:
            behaviour, wrap, make = handler.stream_unary, self._client_stream, grpc.stream_unary_rpc_method_handler
        else:
            behaviour, wrap, make = handler.stream_stream, self._bidi_stream, grpc.stream_stream_rpc_method_handler
        if getattr(behaviour, "experimental_non_blocking", False):
            return handler  # holds no thread while it waits (grpc's health Watch)
        wrapped = wrap(behaviour, method)
        wrapped.experimental_thread_pool = self.pool  # gRPC runs the call on this pool instead of the server's
        return make(wrapped, handler.request_deserializer, handler.response_serializer)

    # ---- open and close

    def _enter(self, request_iterator: Iterator, context: grpc.ServicerContext, method: str) -> TimedRequests:
        """Take one of the open-stream places for a call and time its messages; aborts when there is none."""
        with self._lock:
            if self._stopping:
                code, message = grpc.StatusCode.UNAVAILABLE, "server shutting down: no new streams"
            elif len(self._open) >= self.max_open_streams:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                message = (
                    f"{method}: the server has {len(self._open)} streaming calls open, the most it allows "
                    f"(max_open_streams={self.max_open_streams}); retry when one of them ends"
                )
            else:
                requests = TimedRequests(
                    request_iterator,
                    context,
                    self.first_message_timeout_s,
                    self.idle_timeout_s,
                    f"{method} request stream",
                )
                self._open.add(requests)
                return requests
        context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    def _leave(self, requests: TimedRequests) -> None:
        requests.close()
        with self._lock:
            self._open.discard(requests)

    def stop_accepting(self) -> None:
        """Shutdown: refuse new streams; open ones take no more messages, answer what they took and end."""
        with self._lock:
            self._stopping = True
            open_now = list(self._open)
        for requests in open_now:
            requests.stop()

    def close(self) -> None:
        """Release the stream pool's threads (after the server stopped)."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ---- one wrapper per streaming kind

    def _client_stream(self, behaviour: Callable, method: str) -> Callable:
        def handle(request_iterator: Iterator, context: grpc.ServicerContext) -> Any:
            requests = self._enter(request_iterator, context, method)
            try:
                return behaviour(requests, context)
            except StreamEnded as error:
                context.abort(error.code, str(error))
            finally:
                self._leave(requests)

        return handle

    def _bidi_stream(self, behaviour: Callable, method: str) -> Callable:
        def handle(request_iterator: Iterator, context: grpc.ServicerContext) -> Iterator:
            requests = self._enter(request_iterator, context, method)
            try:
                yield from behaviour(requests, context)
            except StreamEnded as error:
                context.abort(error.code, str(error))
            finally:
                self._leave(requests)

        return handle

    def _server_stream(self, behaviour: Callable, method: str) -> Callable:
        def handle(request_iterator: Iterator, context: grpc.ServicerContext) -> Iterator:
            requests = self._enter(request_iterator, context, method)
            try:
                request = next(requests, None)
                if request is None:  # what gRPC answers a unary request without its message
                    context.abort(grpc.StatusCode.UNIMPLEMENTED, f'"{method}" requires exactly one request message.')
                yield from behaviour(request, context)
            except StreamEnded as error:
                context.abort(error.code, str(error))
            finally:
                self._leave(requests)

        return handle
