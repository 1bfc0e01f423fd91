"""The request id interceptor, observed: the call's request id bound for logs, its RPC span, metrics and access log.

Always the outermost interceptor of the chain (after the stream guard, which only picks a thread),
with or without security. Around the rest of the call it

- binds the call's request id (`x-request-id`, offered or new) to log records (`logs.request_id_bound`),
- opens the RPC's SERVER span (tracing on), continuing the caller's trace when it sent a `traceparent`,
  current while the call's code runs, so the scheduler's queue and batch spans hang below it,
- counts the call and times it (`mmfusion_rpc_requests_total`, `mmfusion_rpc_duration_seconds`) by
  service, method, kind, model (only a loaded model's name: clients cannot mint series) and status code,
- writes one access log line (`mmfusion.serving.access`: INFO, WARNING for the server's own failures).

A streaming call's context is bound around each step of its response generator, never across a `yield`,
so neither the request id nor the span leaks into whatever the thread does between two responses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from mmfusion import tracing
from mmfusion.logs import request_id_bound
from mmfusion.security.rbac import split_method
from mmfusion.serving.interceptors.call import CallRecord, RequestIdInterceptor, close
from mmfusion.serving.interceptors.rbac import model_of
from mmfusion.serving.metrics import ServiceMetrics

ACCESS_LOG = logging.getLogger("mmfusion.serving.access")
KINDS = {
    "unary_unary": "unary",
    "unary_stream": "server_stream",
    "stream_unary": "client_stream",
    "stream_stream": "bidi_stream",
}
# Codes that mean the server failed (OpenTelemetry's rule for gRPC server spans); the rest are the caller's.
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
LOUD_ERRORS = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS})


@dataclass
class ObservedCall(CallRecord):
    """A call's record with what telemetry saw: the model its first request message names."""

    observed_model: str = ""


class TelemetryInterceptor(RequestIdInterceptor):
    """Starts each call's record under its request id and observes the call: logs, span, metrics, access log."""

    record = ObservedCall

    def __init__(self, metrics: ServiceMetrics | None = None, known_model: Callable[[str], bool] | None = None) -> None:
        """known_model(name): whether a model name may label metrics (a loaded model); None: any name."""
        self.metrics = metrics
        self.known_model = known_model

    # ---- what the call asks for

    def request(self, call: CallRecord, context: grpc.ServicerContext, request) -> None:
        """Note the model a unary request names."""
        if isinstance(call, ObservedCall):
            call.observed_model = model_of(request) or ""

    def requests(self, call: CallRecord, context: grpc.ServicerContext, requests: Iterator) -> Iterator:
        """The client's stream, noting the first model a message names as the messages pass."""
        for message in requests:
            if isinstance(call, ObservedCall) and not call.observed_model:
                call.observed_model = model_of(message) or ""
            yield message

    # ---- around the rest of the call

    def unary(self, call: CallRecord, context: grpc.ServicerContext, invoke: Callable[[], Any]) -> Any:
        """Run a call that returns one response with its request id bound and its span current."""
        started = time.monotonic()
        span = self._start_span(call, context)
        try:
            with tracing.use(span), request_id_bound(call.request_id):
                response = invoke()
        except BaseException as error:  # never kept in a local: its traceback holds the call's frames
            self._finish(call, context, span, started, error)
            raise
        self._finish(call, context, span, started, None)
        return response

    def stream(self, call: CallRecord, context: grpc.ServicerContext, invoke: Callable[[], Iterator]) -> Iterator:
        """Relay a call's responses, its request id bound and its span current while each one is made."""
        started = time.monotonic()
        span = self._start_span(call, context)
        responses: Iterator | None = None
        try:
            with tracing.use(span), request_id_bound(call.request_id):
                responses = invoke()
            while True:
                with tracing.use(span), request_id_bound(call.request_id):
                    try:
                        response = next(responses)
                    except StopIteration:
                        break
                yield response
        except BaseException as error:
            self._close(call, span, responses)
            self._finish(call, context, span, started, error)
            raise
        self._close(call, span, responses)
        self._finish(call, context, span, started, None)

    def _close(self, call: CallRecord, span: Any, responses: Iterator | None) -> None:
        """Close the rest of the chain's response generator (its clean-up runs in the call's context)."""
        if responses is not None:
            with tracing.use(span), request_id_bound(call.request_id):
                close(responses)

    # ---- the record of it

    def _start_span(self, call: CallRecord, context: grpc.ServicerContext) -> Any:
        """The call's SERVER span (None while tracing is off), child of the caller's trace when it sent one."""
        if not tracing.enabled():
            return None
        service, method = split_method(call.method)
        attributes = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
            tracing.REQUEST_ID_ATTRIBUTE: call.request_id,
        }
        parent = tracing.extract(context.invocation_metadata() or ())
        return tracing.start_span(call.method.lstrip("/"), attributes, parent=parent, kind="server")

    def _finish(
        self,
        call: CallRecord,
        context: grpc.ServicerContext,
        span: Any,
        started: float,
        error: BaseException | None,
    ) -> None:
        """Count, time and log the ended call; end its span with its status."""
        seconds = time.monotonic() - started
        code, message = _status(context, error)
        model = call.model or (call.observed_model if isinstance(call, ObservedCall) else "")
        if model and self.known_model is not None and not self.known_model(model):
            model = ""  # a name no model has: not a label (clients could mint series with it)
        service, method = split_method(call.method)
        kind = KINDS.get(call.kind, call.kind)
        if self.metrics is not None:
            self.metrics.record_rpc(service, method, kind, model, code.name, seconds)
        if span is not None:
            if model:
                span.set_attribute(tracing.MODEL_ATTRIBUTE, model)
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            tracing.end(span, error if code in SERVER_ERRORS else None, message if code in SERVER_ERRORS else "")
        level = logging.WARNING if code in LOUD_ERRORS else logging.INFO
        if ACCESS_LOG.isEnabledFor(level):
            with request_id_bound(call.request_id):
                ACCESS_LOG.log(
                    level,
                    "%s %s %s %.1f ms%s",
                    call.method.lstrip("/"),
                    model or "-",
                    code.name,
                    seconds * 1000.0,
                    f": {message}" if message and code != grpc.StatusCode.OK else "",
                    extra={"rpc": call.method.lstrip("/"), "model": model, "code": code.name, "ms": seconds * 1e3},
                )


def _status(context: grpc.ServicerContext, error: BaseException | None) -> tuple[grpc.StatusCode, str]:
    """The call's status code and message: an abort's, CANCELLED for a client that left, UNKNOWN for a crash."""
    if isinstance(error, GeneratorExit):
        return grpc.StatusCode.CANCELLED, "the client cancelled the call"
    code = context.code()
    if code is None:
        if error is not None:
            return grpc.StatusCode.UNKNOWN, type(error).__name__
        return grpc.StatusCode.OK, ""
    raw = context.details() or b""
    return code, raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
