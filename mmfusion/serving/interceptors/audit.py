"""Audit: one event per call with its final status, however the call ended and whichever layer ended it."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from tritonclient.grpc import service_pb2 as kpb

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.serving.interceptors.call import CallInterceptor, CallRecord, close
from mmfusion.serving.interceptors.rbac import LISTINGS
from mmfusion.serving.interceptors.security import AuditUnavailable

if TYPE_CHECKING:
    from mmfusion.serving.interceptors.security import ServerSecurity

MAX_RESULT_CHARS = 200
UNAUDITED = "the audit log cannot be written and this server is fail-closed: the call was refused; retry later"


def summarize(responses: list) -> str:
    """A short, content-free summary of what a call returned (verdicts, counts, states)."""
    if not responses:
        return ""
    first = responses[0]
    if isinstance(first, pb.FrameResult):
        verdicts = Counter(r.result.verdict or "-" for r in responses if r.HasField("result"))
        errors = sum(r.HasField("error") for r in responses)
        counted = ",".join(f"{label}:{count}" for label, count in sorted(verdicts.items()))
        return f"frames={len(responses)} verdicts={counted} errors={errors}"
    if isinstance(first, pb.InspectionResult):
        return f"verdict={first.verdict or '-'} score={first.verdict_score:.3f}"
    if isinstance(first, pb.ModelInfo):
        return f"{first.name} {pb.ModelState.Name(first.state)}"
    if isinstance(first, LISTINGS):
        return f"models={len(first.models)}"
    if isinstance(first, kpb.ModelInferResponse):
        return "outputs=" + ",".join(output.name for output in first.outputs)
    if isinstance(first, kpb.ModelStreamInferResponse):
        errors = sum(bool(r.error_message) for r in responses)
        return f"responses={len(responses)} errors={errors}"
    if isinstance(first, kpb.ModelStatisticsResponse):
        return f"models={len(first.model_stats)}"
    if isinstance(first, pb.ReportChunk):
        return f"chunks={len(responses)}"
    if isinstance(first, pb.CallUpdate):
        segments = sum(r.HasField("segment") for r in responses)
        summaries = [r.summary for r in responses if r.HasField("summary")]
        flags = ",".join(summaries[0].flags) if summaries else "-"
        return f"segments={segments} summary={'yes' if summaries else 'no'} flags={flags or '-'}"
    return type(first).__name__


class AuditInterceptor(CallInterceptor):
    """Appends one audit event per call, once it ended: with its summary, or the status that ended it."""

    # Outside authentication, limits and RBAC, so that the calls they abort are audited with the
    # status and message they aborted with (context.abort leaves both on the context).
    # Fail-closed (--audit-fail-closed): a call starts only while the log can take records, and a call
    # whose event is not written ends UNAVAILABLE (a unary response is withheld; a stream that already
    # sent its responses ends with that status). Calls that failed anyway keep their own status.

    def __init__(self, security: ServerSecurity) -> None:
        self.security = security

    def begin(self, call: CallRecord, context: grpc.ServicerContext) -> None:
        """Fail-closed: refuse the call UNAVAILABLE before it runs when the audit log cannot take records."""
        try:
            self.security.check_audit()
        except AuditUnavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, UNAUDITED)

    def unary(self, call: CallRecord, context: grpc.ServicerContext, invoke: Callable[[], Any]) -> Any:
        """Audit a call that returns one response."""
        try:
            response = invoke()
        except BaseException as error:
            self.failed(call, context, error)
            raise
        self.succeeded(call, context, summarize([response]))
        return response

    def stream(self, call: CallRecord, context: grpc.ServicerContext, invoke: Callable[[], Iterator]) -> Iterator:
        """Audit a call that streams responses, once the stream ended."""
        seen = []
        responses = invoke()
        try:
            for response in responses:
                seen.append(response)
                yield response
        except BaseException as error:
            self.failed(call, context, error)
            raise
        finally:
            close(responses)
        self.succeeded(call, context, summarize(seen))

    def succeeded(self, call: CallRecord, context: grpc.ServicerContext, result: str) -> None:
        """Audit a call that ran to its end; fail-closed, a call whose event is not written ends UNAVAILABLE."""
        try:
            self.finish(call, context, result, enforce=True)
        except AuditUnavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, UNAUDITED)

    def failed(self, call: CallRecord, context: grpc.ServicerContext, error: BaseException) -> None:
        """Audit a call that raised (an abort carries its status; a cancellation is CANCELLED; else UNKNOWN)."""
        if isinstance(error, GeneratorExit):
            self.finish(call, context, "", grpc.StatusCode.CANCELLED, "the client cancelled the call")
        elif context.code() is None:
            self.finish(call, context, "", grpc.StatusCode.UNKNOWN, f"{type(error).__name__}")
        else:
            self.finish(call, context, "")

    def finish(
        self,
        call: CallRecord,
        context: grpc.ServicerContext,
        result: str,
        code: grpc.StatusCode | None = None,
        message: str = "",
        enforce: bool = False,
    ) -> None:
        """Append the call's audit event; its status and message from the context unless given."""
        if call.done:
            return
        call.done = True
        if code is None:
            code = context.code() or grpc.StatusCode.OK
            raw = context.details() or b""
            message = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        if code != grpc.StatusCode.OK:
            result = message[:MAX_RESULT_CHARS]
        self.security.record(
            {
                "kind": "call",
                "request_id": call.request_id,
                "caller": call.caller.id,
                "role": call.caller.role,
                "rpc": call.method,
                "model": call.model,
                "version": call.version,
                "input_sha256": call.input_sha256() if call.messages else "",
                "result": result,
                "status": code.name,
                "latency_ms": round((time.monotonic() - call.started) * 1000.0, 3),
            },
            enforce=enforce,
        )
