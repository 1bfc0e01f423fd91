"""RBAC: the role's RPC patterns, the model each request message names, and model listings cut to the role."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as kpb

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.security.rbac import PermissionDenied, PolicyStore
from mmfusion.serving.interceptors.call import CallInterceptor, CallRecord, close

# Which field of a request message names the model it acts on (a dotted path into a sub-message, whose
# `version` field then names the version); messages not listed name none.
MODEL_FIELDS = {
    pb.InspectRequest.DESCRIPTOR.full_name: "model",
    pb.Frame.DESCRIPTOR.full_name: "model",
    pb.AudioChunk.DESCRIPTOR.full_name: "model",
    pb.CallRequest.DESCRIPTOR.full_name: "config.model",
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


def _holder(message, path: str):
    """The (sub-)message that holds the last field of a dotted path, and that field's name."""
    *parents, name = path.split(".")
    for parent in parents:
        message = getattr(message, parent)
    return message, name


def model_of(message) -> str | None:
    """The model a request message names; None when it names none (or leaves the field empty)."""
    path = MODEL_FIELDS.get(message.DESCRIPTOR.full_name)
    if not path:
        return None
    holder, name = _holder(message, path)
    return getattr(holder, name) or None


def version_of(message) -> str:
    """The model version a request message asks for; empty for the current one."""
    holder, _ = _holder(message, MODEL_FIELDS.get(message.DESCRIPTOR.full_name, ""))
    for name in ("version", "model_version"):
        if name in holder.DESCRIPTOR.fields_by_name:
            return getattr(holder, name)
    return ""


def deny(context: grpc.ServicerContext, error: PermissionDenied) -> None:
    """Abort the call PERMISSION_DENIED, saying why."""
    context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))


class RpcPermissionInterceptor(CallInterceptor):
    """Lets a call through only when the caller's role may use its RPC."""

    def __init__(self, policy: PolicyStore) -> None:
        self.policy = policy

    def begin(self, call: CallRecord, context: grpc.ServicerContext) -> None:
        """Check the RPC against the role's patterns; aborts PERMISSION_DENIED."""
        try:
            self.policy.policy.check_rpc(call.caller.role, call.method)
        except PermissionDenied as error:
            deny(context, error)


class ModelInterceptor(CallInterceptor):
    """Notes each request message (hash, model) for the audit and checks its model against the caller's role."""

    # A client stream's first message is read and checked before the servicer runs; every later one
    # as the servicer reads it: a denied one raises PermissionDenied there and ends the call.

    def __init__(self, policy: PolicyStore | None) -> None:
        self.policy = policy

    def begin(self, call: CallRecord, context: grpc.ServicerContext) -> None:
        """Error messages that list models name only those the caller's role may use (serving/errors.py)."""
        if self.policy is not None:
            policy, role = self.policy, call.caller.role
            call.visible = lambda model: policy.policy.allows_model(role, model)

    def check(self, call: CallRecord, message) -> None:
        """Hash a request message and check the model it names; raises PermissionDenied."""
        call.hash_message(message)
        model = model_of(message)
        if model is None:
            return
        if not call.model:
            call.model, call.version = model, version_of(message)
        if self.policy is not None:
            try:
                self.policy.policy.check_model(call.caller.role, model)
            except PermissionDenied as error:
                call.model = model
                call.denied = error
                raise

    def request(self, call: CallRecord, context: grpc.ServicerContext, request) -> None:
        """Check a unary request; aborts PERMISSION_DENIED."""
        try:
            self.check(call, request)
        except PermissionDenied as error:
            deny(context, error)

    def requests(self, call: CallRecord, context: grpc.ServicerContext, requests: Iterator) -> Iterator:
        """Read and check the client's first message before the servicer runs; the later ones as they come."""
        first = next(requests, None)
        if first is None:
            return iter(())
        self.request(call, context, first)
        return self._checked(call, first, requests)

    def _checked(self, call: CallRecord, first, rest: Iterator) -> Iterator:
        yield first
        for message in rest:
            self.check(call, message)
            yield message

    def unary(self, call: CallRecord, context: grpc.ServicerContext, invoke: Callable[[], Any]) -> Any:
        """The response, filtered; a later message that was denied ends the call whatever the servicer did."""
        try:
            response = invoke()
        except BaseException:
            if call.denied is None:
                raise
            response = None  # a later message named a model the role may not use
        if call.denied is not None:
            deny(context, call.denied)
        return self.filter(call, response)

    def stream(self, call: CallRecord, context: grpc.ServicerContext, invoke: Callable[[], Iterator]) -> Iterator:
        """Yield a server stream's responses; a later message that was denied ends the call."""
        responses = invoke()
        try:
            for response in responses:
                if call.denied is not None:
                    break
                yield response
        except PermissionDenied:
            pass
        finally:
            close(responses)  # a servicer generator left early still runs its clean-up
        if call.denied is not None:
            deny(context, call.denied)

    def filter(self, call: CallRecord, response):
        """Model listings (and KServe statistics of every model) show only the models the caller's role may use."""
        if self.policy is not None and isinstance(response, kpb.ModelStatisticsResponse):
            current = self.policy.policy
            kept = [stats for stats in response.model_stats if current.allows_model(call.caller.role, stats.name)]
            return kpb.ModelStatisticsResponse(model_stats=kept)
        if self.policy is None or not isinstance(response, LISTINGS):
            return response
        current = self.policy.policy
        kept = [model for model in response.models if current.allows_model(call.caller.role, model.name)]
        filtered = type(response)()
        filtered.models.extend(kept)
        return filtered
