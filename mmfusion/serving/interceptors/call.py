"""One call's record, shared by the interceptors of the chain; their base class; the request id that starts it."""

from __future__ import annotations

import hashlib
import re
import struct
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from mmfusion.security.auth import Caller
from mmfusion.security.rbac import PermissionDenied, split_method

PUBLIC_SERVICES = ("grpc.health.v1.Health",)
PUBLIC_METHODS = ("inference.GRPCInferenceService/ServerLive", "inference.GRPCInferenceService/ServerReady")
ANONYMOUS = Caller("anonymous", "")
REQUEST_ID_KEY = "x-request-id"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
HANDLER_KINDS = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


@dataclass
class CallRecord:
    """What the audit event of one call says, and what the interceptors learnt of it; filled in as the call goes."""

    method: str
    kind: str  # the handler kind: unary_unary, unary_stream, stream_unary or stream_stream
    request_id: str
    caller: Caller = ANONYMOUS
    model: str = ""
    version: str = ""
    started: float = field(default_factory=time.monotonic)
    digest: Any = field(default_factory=hashlib.sha256)  # over length-prefixed messages (streams)
    first_message: bytes = b""
    messages: int = 0
    limit_key: str = ""  # whose bucket and stream slots: the caller id, or the peer address without auth
    denied: PermissionDenied | None = None
    visible: Callable[[str], bool] | None = None  # the model names error messages may show the caller; None: all
    done: bool = False

    @property
    def streaming(self) -> bool:
        """Whether the client or the server streams messages (the call takes a stream slot)."""
        return self.kind != "unary_unary"

    def hash_message(self, message) -> None:
        """Add a request message to the call's input hash."""
        data = message.SerializeToString(deterministic=True)
        if self.messages == 0:
            self.first_message = data
        else:  # streams: length-prefixed so that message boundaries count
            if self.messages == 1:
                self.digest.update(struct.pack(">Q", len(self.first_message)) + self.first_message)
            self.digest.update(struct.pack(">Q", len(data)) + data)
        self.messages += 1

    def input_sha256(self) -> str:
        """The hex sha256 of the request (unary) or of the length-prefixed request messages (streams)."""
        if self.messages == 1:  # a unary request: the sha256 of its serialized bytes
            return hashlib.sha256(self.first_message).hexdigest()
        return self.digest.hexdigest()


# The record of each call in progress, by its ServicerContext: grpc hands the same object to every layer of
# the chain, so each finds the record the outermost one started, whichever thread runs the handler or
# reads the client's messages (a contextvar would not follow a servicer's reader thread).
CALLS: weakref.WeakKeyDictionary[grpc.ServicerContext, CallRecord] = weakref.WeakKeyDictionary()


def is_public(method: str) -> bool:
    """Whether a method needs no credentials and bypasses every interceptor (health, liveness, readiness)."""
    service, _ = split_method(method)
    return service in PUBLIC_SERVICES or method.lstrip("/") in PUBLIC_METHODS


def close(iterator: Iterator) -> None:
    """Close a generator left early, so that its clean-up runs now."""
    close_method = getattr(iterator, "close", None)
    if close_method is not None:
        close_method()


class CallInterceptor(grpc.ServerInterceptor):
    """Wraps the four kinds of handler once; each concern implements only the hooks it needs."""

    # A call runs `begin`, then `request` (a unary request) or `requests` (wraps the client's stream),
    # then `unary` or `stream` around the rest of the chain (`invoke()`), and `end` however the call
    # ended unless `begin` aborted it. Hooks abort the call with `context.abort`, which raises.

    def intercept_service(self, continuation, handler_call_details):
        """The handler wrapped by this interceptor's hooks; public methods and unknown ones unwrapped."""
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_public(method):
            return handler
        for kind, make in HANDLER_KINDS.items():
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                wrapped = getattr(self, f"_{kind}")(behaviour, method)
                return make(wrapped, handler.request_deserializer, handler.response_serializer)
        return handler

    # ---- the hooks

    def start(self, context: grpc.ServicerContext, method: str, kind: str) -> CallRecord:
        """The call's record, started by the outermost interceptor."""
        return CALLS[context]

    def begin(self, call: CallRecord, context: grpc.ServicerContext) -> None:
        """Before the request is looked at."""

    def request(self, call: CallRecord, context: grpc.ServicerContext, request) -> None:
        """A unary request, before the rest of the chain sees it."""

    def requests(self, call: CallRecord, context: grpc.ServicerContext, requests: Iterator) -> Iterator:
        """The client's stream of messages as the rest of the chain will read it."""
        return requests

    def unary(self, call: CallRecord, context: grpc.ServicerContext, invoke: Callable[[], Any]) -> Any:
        """Around the rest of a call that returns one response: `invoke()` runs it."""
        return invoke()

    def stream(self, call: CallRecord, context: grpc.ServicerContext, invoke: Callable[[], Iterator]) -> Iterator:
        """Around the rest of a call that streams responses: `invoke()` returns them."""
        return invoke()

    def end(self, call: CallRecord, context: grpc.ServicerContext) -> None:
        """After the call, however it ended (unless `begin` aborted it)."""

    # ---- one wrapper per handler kind

    def _unary_unary(self, behaviour: Callable, method: str) -> Callable:
        def handle(request, context):
            call = self.start(context, method, "unary_unary")
            self.begin(call, context)
            try:
                self.request(call, context, request)
                return self.unary(call, context, lambda: behaviour(request, context))
            finally:
                self.end(call, context)

        return handle

    def _unary_stream(self, behaviour: Callable, method: str) -> Callable:
        def handle(request, context):
            call = self.start(context, method, "unary_stream")
            self.begin(call, context)
            try:
                self.request(call, context, request)
                yield from self.stream(call, context, lambda: behaviour(request, context))
            finally:
                self.end(call, context)

        return handle

    def _stream_unary(self, behaviour: Callable, method: str) -> Callable:
        def handle(request_iterator, context):
            call = self.start(context, method, "stream_unary")
            self.begin(call, context)
            try:
                requests = self.requests(call, context, request_iterator)
                return self.unary(call, context, lambda: behaviour(requests, context))
            finally:
                self.end(call, context)

        return handle

    def _stream_stream(self, behaviour: Callable, method: str) -> Callable:
        def handle(request_iterator, context):
            call = self.start(context, method, "stream_stream")
            self.begin(call, context)
            try:
                requests = self.requests(call, context, request_iterator)
                yield from self.stream(call, context, lambda: behaviour(requests, context))
            finally:
                self.end(call, context)

        return handle


def request_id_of(metadata) -> str:
    """The request id the client offered when it is valid, else a new uuid4 hex."""
    offered = next((v for k, v in metadata if k == REQUEST_ID_KEY and isinstance(v, str)), "")
    return offered if REQUEST_ID_PATTERN.fullmatch(offered) else uuid.uuid4().hex


class RequestIdInterceptor(CallInterceptor):
    """The outermost interceptor: starts each call's record under its request id, echoed before anything aborts."""

    record: type[CallRecord] = CallRecord  # the class of the records it starts

    def start(self, context: grpc.ServicerContext, method: str, kind: str) -> CallRecord:
        """A new record for the call, under the offered request id or a new one (sent as initial metadata)."""
        request_id = request_id_of(context.invocation_metadata() or ())
        context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
        call = CALLS[context] = self.record(method, kind, request_id)
        return call

    def end(self, call: CallRecord, context: grpc.ServicerContext) -> None:
        """Forget the call's record."""
        CALLS.pop(context, None)
