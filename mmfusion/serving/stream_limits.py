"""Server-side limits on a client's request stream: time limits per message, stop on shutdown, per-frame gates.

`TimedRequests` reads the client's messages of one call on a thread of its own, so that whoever
consumes them (an interceptor, a servicer, a stream session's reader) waits for the next one
with a time limit: the first message within `first_message_timeout_s` of the call's start, every
later one within `idle_timeout_s` of the one before. A call past either ends DEADLINE_EXCEEDED;
on shutdown the stream takes no more messages and the call ends UNAVAILABLE once what it already
took is answered. Both raise a `StreamEnded` in the consumer, after setting the call's status on
its context, so the call ends with that status whichever layer the exception passes through.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import grpc

DEFAULT_FIRST_MESSAGE_TIMEOUT_S = 10.0
DEFAULT_IDLE_TIMEOUT_S = 60.0

# The per-frame gate of a streaming call, by its ServicerContext: the rate-limit interceptor puts one
# there when a per-caller rate limit is configured, the servicer asks it before each frame. A gate
# returns None when the frame may go, else why not (the frame is answered RESOURCE_EXHAUSTED).
FrameGate = Callable[[], str | None]
FRAME_GATES: weakref.WeakKeyDictionary[Any, FrameGate] = weakref.WeakKeyDictionary()


def frame_gate(context: grpc.ServicerContext) -> FrameGate | None:
    """The per-frame gate of a streaming call; None when no per-caller rate limit applies."""
    return FRAME_GATES.get(context)


class LimitExceeded(Exception):
    """A per-call or per-caller limit refused a message or a stream (RESOURCE_EXHAUSTED)."""


class StreamEnded(Exception):
    """The server ended a client's request stream early; `code` is the status the call ends with."""

    code = grpc.StatusCode.UNKNOWN


class StreamTimeout(StreamEnded):
    """The client sent no message within the time allowed: the first one, or the next one."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ServerStopping(StreamEnded):
    """The server is shutting down: the stream takes no more messages."""

    code = grpc.StatusCode.UNAVAILABLE


def check_timeout(name: str, seconds: float) -> float:
    """A time limit in seconds, > 0 (ValueError naming the setting otherwise)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ValueError(f"{name}={seconds!r}: expected seconds > 0")
    return float(seconds)


class TimedRequests:
    """The client's messages of one call, read by a thread of its own so that waiting for one can time out."""

    def __init__(
        self,
        requests: Iterator,
        context: grpc.ServicerContext,
        first_message_timeout_s: float = DEFAULT_FIRST_MESSAGE_TIMEOUT_S,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        name: str = "request stream",
    ) -> None:
        self._requests = requests
        self._context = context
        self._first_timeout = first_message_timeout_s
        self._idle_timeout = idle_timeout_s
        self.name = name
        self.received = 0
        self._condition = threading.Condition()
        self._slot: list[tuple[str, Any]] = []  # at most one read item: ("message" | "end" | "error", value)
        self._closed = False  # the call ended: the reader stops handing over messages
        self._stopping = False  # the server is shutting down: no more messages are taken
        self._reader = threading.Thread(target=self._read, name="mmfusion-request-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for message in self._requests:  # gRPC's iterator: blocks until a message, the end, or a cancel
                if not self._hand_over(("message", message)):
                    return
        except Exception as error:  # the client cancelled or the connection broke: the consumer learns it
            self._hand_over(("error", error))
            return
        self._hand_over(("end", None))

    def _hand_over(self, item: tuple[str, Any]) -> bool:
        """Wait until the consumer took the previous item (backpressure), then leave this one; False once closed."""
        with self._condition:
            self._condition.wait_for(lambda: not self._slot or self._closed or self._stopping)
            if self._closed or self._stopping:
                return False
            self._slot.append(item)
            self._condition.notify_all()
            return True

    def __iter__(self) -> TimedRequests:
        return self

    def __next__(self) -> Any:
        first = self.received == 0
        limit = self._first_timeout if first else self._idle_timeout
        deadline = time.monotonic() + limit
        with self._condition:
            while not self._slot:
                if self._stopping:
                    self._end(ServerStopping(f"server shutting down: {self.name} takes no more messages"))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._end(StreamTimeout(self._timeout_message(first, limit)))
                self._condition.wait(remaining)
            kind, value = self._slot[0]
            if kind == "message":  # the end and errors stay: asking again gives the same answer
                self._slot.clear()
                self._condition.notify_all()
        if kind == "message":
            self.received += 1
            return value
        if kind == "end":
            raise StopIteration
        raise value

    def _timeout_message(self, first: bool, limit: float) -> str:
        if first:
            return (
                f"{self.name}: no message within {limit:g} s of the call's start "
                f"(first_message_timeout_s={limit:g}); send the first message at once"
            )
        return (
            f"{self.name}: no message for {limit:g} s after message {self.received} "
            f"(stream_idle_timeout_s={limit:g}); send at least one message every {limit:g} s or end the stream"
        )

    def _end(self, error: StreamEnded) -> None:
        """Raise `error`, with the call's status set first so that it ends with it whoever catches what."""
        self._context.set_code(error.code)
        self._context.set_details(str(error))
        raise error

    def stop(self) -> None:
        """Shutdown: take no more messages; one already read is still handed over, then ServerStopping."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()

    def close(self) -> None:
        """The call ended: the reader thread stops handing over (it ends when gRPC ends the call's stream)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
