"""Server interceptor: request id, authentication, rate and stream limits, RBAC on RPC and model, audit.

Every call (except health checks and KServe liveness/readiness, which load balancers probe without
credentials) goes through, in order: request id (echoed as `x-request-id` initial metadata),
authentication (UNAUTHENTICATED, one generic message), the caller's token bucket and stream cap
(RESOURCE_EXHAUSTED with `retry-after-ms` trailing metadata), the role's RPC patterns and then the
model named by the request (PERMISSION_DENIED) before the servicer sees it: for client streams the
first message is read and checked first, and every later message that names a model is checked
as it arrives. Each call appends one audit event; model loads and unloads append config events.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import math
import re
import struct
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as kpb

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.security.auth import GENERIC_MESSAGE, AuthConfig, AuthenticationError, Caller
from mmfusion.security.limits import RateLimit, StreamSlots, TokenBuckets
from mmfusion.security.rbac import PermissionDenied, PolicyStore, split_method

LOG = logging.getLogger(__name__)
PUBLIC_SERVICES = ("grpc.health.v1.Health",)
PUBLIC_METHODS = ("inference.GRPCInferenceService/ServerLive", "inference.GRPCInferenceService/ServerReady")
REQUEST_ID_KEY = "x-request-id"
RETRY_AFTER_KEY = "retry-after-ms"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
ANONYMOUS = Caller("anonymous", "")
SERVER_CALLER = Caller("server", "")
MAX_RESULT_CHARS = 200
# Which field of a request message names the model it acts on; messages not listed name none.
MODEL_FIELDS = {
    pb.InspectRequest.DESCRIPTOR.full_name: "model",
    pb.Frame.DESCRIPTOR.full_name: "model",
    pb.AudioChunk.DESCRIPTOR.full_name: "model",
    pb.ReportRequest.DESCRIPTOR.full_name: "model",
    pb.GetModelRequest.DESCRIPTOR.full_name: "name",
    pb.LoadModelRequest.DESCRIPTOR.full_name: "name",
    pb.UnloadModelRequest.DESCRIPTOR.full_name: "name",
    kpb.ModelReadyRequest.DESCRIPTOR.full_name: "name",
    kpb.ModelMetadataRequest.DESCRIPTOR.full_name: "name",
    kpb.ModelConfigRequest.DESCRIPTOR.full_name: "name",
    kpb.ModelStatisticsRequest.DESCRIPTOR.full_name: "name",
    kpb.ModelInferRequest.DESCRIPTOR.full_name: "model_name",
    kpb.RepositoryModelLoadRequest.DESCRIPTOR.full_name: "model_name",
    kpb.RepositoryModelUnloadRequest.DESCRIPTOR.full_name: "model_name",
    kpb.TraceSettingRequest.DESCRIPTOR.full_name: "model_name",
}
LISTINGS = (pb.ListModelsResponse, kpb.RepositoryIndexResponse)  # filtered down to the models a role may use
_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("mmfusion_caller", default=None)


def model_of(message) -> str | None:
    """The model a request message names; None when it names none (or leaves the field empty)."""
    name = MODEL_FIELDS.get(message.DESCRIPTOR.full_name)
    return getattr(message, name) or None if name else None


def version_of(message) -> str:
    for name in ("version", "model_version"):
        if name in message.DESCRIPTOR.fields_by_name:
            return getattr(message, name)
    return ""


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
    if isinstance(first, pb.ReportChunk):
        return f"chunks={len(responses)}"
    return type(first).__name__


def _peer_host(context: grpc.ServicerContext) -> str:
    return context.peer().rpartition(":")[0] or context.peer()


@dataclass
class CallRecord:
    """What the audit event of one call says; filled in as the call goes."""

    method: str
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
    done: bool = False

    def hash_message(self, message) -> None:
        data = message.SerializeToString(deterministic=True)
        if self.messages == 0:
            self.first_message = data
        else:  # streams: length-prefixed so that message boundaries count
            if self.messages == 1:
                self.digest.update(struct.pack(">Q", len(self.first_message)) + self.first_message)
            self.digest.update(struct.pack(">Q", len(data)) + data)
        self.messages += 1

    def input_sha256(self) -> str:
        if self.messages == 1:  # a unary request: the sha256 of its serialized bytes
            return hashlib.sha256(self.first_message).hexdigest()
        return self.digest.hexdigest()


class ServerSecurity:
    """Authentication, policy, limits and audit of one server; `reload()` re-reads keys and policy (SIGHUP)."""

    def __init__(
        self,
        auth: AuthConfig | None = None,
        policy: PolicyStore | None = None,
        audit=None,
        rate_limit: RateLimit | None = None,
    ) -> None:
        self.auth = auth
        self.policy = policy
        self.audit = audit
        self.rate_limit = rate_limit
        self.buckets = TokenBuckets(rate_limit) if rate_limit is not None else None
        self.streams = StreamSlots(rate_limit.max_streams) if rate_limit is not None else None

    def reload(self) -> bool:
        """Re-read the API key file and the policy file; each keeps its old contents if its file is broken."""
        keys_ok = self.auth.reload() if self.auth is not None else True
        policy_ok = self.policy.reload() if self.policy is not None else True
        return keys_ok and policy_ok

    def record(self, event: dict) -> None:
        if self.audit is None:
            return
        try:
            self.audit.append(event)
        except Exception:  # the audit log must not take the service down; the failure itself is logged
            LOG.exception("audit event not written: %s", {k: event.get(k) for k in ("kind", "rpc", "status")})

    def on_model_change(self, name: str, loaded: bool) -> None:
        """ModelManager listener: a config event naming the caller whose call loaded or unloaded the model."""
        caller = _CALLER.get() or SERVER_CALLER
        action = "load" if loaded else "unload"
        self.record({"kind": "config", "action": action, "model": name, "caller": caller.id, "role": caller.role})

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()


class SecurityInterceptor(grpc.ServerInterceptor):
    """Wraps every handler so each call is identified, authenticated, limited, authorised and audited."""

    def __init__(self, security: ServerSecurity) -> None:
        self.security = security

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        service, _ = split_method(method)
        if handler is None or service in PUBLIC_SERVICES or method.lstrip("/") in PUBLIC_METHODS:
            return handler
        kinds = {
            "unary_unary": grpc.unary_unary_rpc_method_handler,
            "unary_stream": grpc.unary_stream_rpc_method_handler,
            "stream_unary": grpc.stream_unary_rpc_method_handler,
            "stream_stream": grpc.stream_stream_rpc_method_handler,
        }
        for kind, make in kinds.items():
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                wrapped = getattr(self, f"_{kind}")(behaviour, method)
                return make(wrapped, handler.request_deserializer, handler.response_serializer)
        return handler

    # ---- the steps of a call

    def _begin(self, method: str, context: grpc.ServicerContext) -> CallRecord:
        """Request id, authentication, token bucket, RPC permission; aborts the call on failure."""
        metadata = context.invocation_metadata() or ()
        offered = next((v for k, v in metadata if k == REQUEST_ID_KEY and isinstance(v, str)), "")
        request_id = offered if REQUEST_ID_PATTERN.fullmatch(offered) else uuid.uuid4().hex
        context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
        call = CallRecord(method, request_id)
        security = self.security
        if security.auth is not None:
            try:
                call.caller = security.auth.authenticate(metadata)
            except AuthenticationError as error:
                LOG.info(
                    "call %s %s from %s: unauthenticated: %s",
                    request_id,
                    method,
                    context.peer(),
                    error.reason,
                )
                self._abort(call, context, grpc.StatusCode.UNAUTHENTICATED, GENERIC_MESSAGE)
        if security.buckets is not None:
            call.limit_key = key = call.caller.id if security.auth is not None else _peer_host(context)
            wait = security.buckets.take(key)
            if wait > 0:
                milliseconds = max(1, math.ceil(wait * 1000))
                context.set_trailing_metadata(((RETRY_AFTER_KEY, str(milliseconds)),))
                limit = security.rate_limit
                self._abort(
                    call,
                    context,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"rate limit of {limit.rate:g} calls/s (burst {limit.capacity:g}) reached for "
                    f"{key}; retry after {milliseconds} ms",
                )
        if security.policy is not None:
            try:
                security.policy.policy.check_rpc(call.caller.role, method)
            except PermissionDenied as error:
                self._abort(call, context, grpc.StatusCode.PERMISSION_DENIED, str(error))
        return call

    def _check(self, call: CallRecord, message) -> None:
        """Hash a request message and check the model it names; raises PermissionDenied."""
        call.hash_message(message)
        model = model_of(message)
        if model is None:
            return
        if not call.model:
            call.model, call.version = model, version_of(message)
        if self.security.policy is not None:
            try:
                self.security.policy.policy.check_model(call.caller.role, model)
            except PermissionDenied as error:
                call.model = model
                call.denied = error
                raise

    def _checked(self, call: CallRecord, first, rest: Iterator) -> Iterator:
        """The client's messages with the already-checked first one in front; a denied one ends the stream."""
        yield first
        for message in rest:
            self._check(call, message)
            yield message

    def _enter_stream(self, call: CallRecord, context: grpc.ServicerContext) -> bool:
        slots = self.security.streams
        if slots is None:
            return False
        if not slots.enter(call.limit_key):
            self._abort(
                call,
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{call.limit_key} has {slots.max_streams} streams open, the most allowed; retry when one of them ends",
            )
        return True

    def _filter(self, call: CallRecord, response):
        """Model listings show only the models the caller's role may use."""
        policy = self.security.policy
        if policy is None or not isinstance(response, LISTINGS):
            return response
        current = policy.policy
        kept = [model for model in response.models if current.allows_model(call.caller.role, model.name)]
        filtered = type(response)()
        filtered.models.extend(kept)
        return filtered

    def _abort(self, call: CallRecord, context, code: grpc.StatusCode, message: str) -> None:
        self._finish(call, context, "", code, message)
        context.abort(code, message)

    def _finish(
        self, call: CallRecord, context, result: str, code: grpc.StatusCode | None = None, message: str = ""
    ) -> None:
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
            }
        )

    def _deny(self, call: CallRecord, context, error: PermissionDenied) -> None:
        self._abort(call, context, grpc.StatusCode.PERMISSION_DENIED, str(error))

    def _failed(self, call: CallRecord, context, error: BaseException) -> None:
        """Audit a call whose behaviour raised (an abort carries its status; anything else is UNKNOWN)."""
        if isinstance(error, GeneratorExit):
            self._finish(call, context, "", grpc.StatusCode.CANCELLED, "the client cancelled the call")
        elif context.code() is None:
            self._finish(call, context, "", grpc.StatusCode.UNKNOWN, f"{type(error).__name__}")
        else:
            self._finish(call, context, "")

    # ---- one wrapper per handler kind

    def _unary_unary(self, behaviour: Callable, method: str) -> Callable:
        def handle(request, context):
            call = self._begin(method, context)
            try:
                self._check(call, request)
            except PermissionDenied as error:
                self._deny(call, context, error)
            token = _CALLER.set(call.caller)
            try:
                response = self._filter(call, behaviour(request, context))
            except BaseException as error:
                self._failed(call, context, error)
                raise
            finally:
                _CALLER.reset(token)
            self._finish(call, context, summarize([response]))
            return response

        return handle

    def _respond(self, call: CallRecord, context, responses: Iterator) -> Iterator:
        """Yield a server stream's responses; a later message that was denied ends the call."""
        seen = []
        try:
            for response in responses:
                if call.denied is not None:
                    break
                seen.append(response)
                yield response
        except PermissionDenied:
            pass
        except BaseException as error:
            self._failed(call, context, error)
            raise
        finally:
            close = getattr(responses, "close", None)
            if close is not None:
                close()  # a servicer generator left early still runs its clean-up
        if call.denied is not None:
            self._deny(call, context, call.denied)
        self._finish(call, context, summarize(seen))

    def _leave_stream(self, call: CallRecord, entered: bool) -> None:
        if entered:
            self.security.streams.leave(call.limit_key)

    def _unary_stream(self, behaviour: Callable, method: str) -> Callable:
        def handle(request, context):
            call = self._begin(method, context)
            entered = self._enter_stream(call, context)
            try:
                try:
                    self._check(call, request)
                except PermissionDenied as error:
                    self._deny(call, context, error)
                yield from self._respond(call, context, behaviour(request, context))
            finally:
                self._leave_stream(call, entered)

        return handle

    def _first_checked(self, call: CallRecord, context, request_iterator) -> Iterator:
        """Read and check the client's first message before the servicer runs."""
        first = next(request_iterator, None)
        if first is None:
            return iter(())
        try:
            self._check(call, first)
        except PermissionDenied as error:
            self._deny(call, context, error)
        return self._checked(call, first, request_iterator)

    def _stream_unary(self, behaviour: Callable, method: str) -> Callable:
        def handle(request_iterator, context):
            call = self._begin(method, context)
            entered = self._enter_stream(call, context)
            try:
                messages = self._first_checked(call, context, request_iterator)
                try:
                    response = behaviour(messages, context)
                except BaseException as error:
                    if call.denied is None:
                        self._failed(call, context, error)
                        raise
                    response = None  # a later message named a model the role may not use
            finally:
                self._leave_stream(call, entered)
            if call.denied is not None:
                self._deny(call, context, call.denied)
            self._finish(call, context, summarize([response]))
            return response

        return handle

    def _stream_stream(self, behaviour: Callable, method: str) -> Callable:
        def handle(request_iterator, context):
            call = self._begin(method, context)
            entered = self._enter_stream(call, context)
            try:
                messages = self._first_checked(call, context, request_iterator)
                yield from self._respond(call, context, behaviour(messages, context))
            finally:
                self._leave_stream(call, entered)

        return handle


def build_security(
    auth: AuthConfig | None = None,
    policy_path: str | Path | None = None,
    audit_path: str | Path | None = None,
    rate_limit: RateLimit | None = None,
    audit_cipher=None,
    audit_fsync: str = "always",
) -> ServerSecurity | None:
    """The server's security from its options; None when none is configured (no interceptor at all)."""
    if auth is None and policy_path is not None:
        raise ValueError(f"policy {policy_path}: an access policy needs authentication (API keys or JWT) to know roles")
    if auth is None and audit_path is None and rate_limit is None:
        return None
    policy = PolicyStore(policy_path) if auth is not None else None
    audit = None
    if audit_path is not None:
        from mmfusion.security.audit import AuditLog

        audit = AuditLog(audit_path, cipher=audit_cipher, fsync=audit_fsync)
    return ServerSecurity(auth, policy, audit, rate_limit)
