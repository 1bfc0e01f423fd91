"""Errors to gRPC status codes, in one place: user errors, backpressure, deadlines, unloaded models."""

from __future__ import annotations

from concurrent.futures import CancelledError
from contextlib import contextmanager

import grpc

from mmfusion.config import ConfigError
from mmfusion.serving.interceptors.call import CALLS
from mmfusion.serving.models import ListsModels, ModelNotFound
from mmfusion.serving.scheduler import DeadlineExceededError, QueueFullError, SchedulerClosedError
from mmfusion.serving.stream_limits import LimitExceeded
from mmfusion.types import InputError


def one_line(error: BaseException) -> str:
    """An error's message on one line (what a status detail carries)."""
    return " | ".join(line.strip() for line in str(error).splitlines() if line.strip())


def status_of(error: BaseException) -> grpc.StatusCode:
    """The status code of an error a request caused or met; INTERNAL for anything unexpected."""
    if isinstance(error, ModelNotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, ConfigError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(error, InputError | ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED
    if isinstance(error, QueueFullError | LimitExceeded | MemoryError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(error, DeadlineExceededError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(error, SchedulerClosedError):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(error, CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


HANDLED_ERRORS = (
    ModelNotFound,
    ConfigError,
    InputError,
    ValueError,
    NotImplementedError,
    QueueFullError,
    LimitExceeded,
    MemoryError,
    DeadlineExceededError,
    SchedulerClosedError,
    CancelledError,
)


def caller_message(error: BaseException, context: grpc.ServicerContext) -> str:
    """An error's one-line message for the caller: model lists cut to the models the caller's role may use."""
    if isinstance(error, MemoryError):
        return "the server ran out of memory on this request"
    if isinstance(error, ListsModels):
        call = CALLS.get(context)
        return one_line(error.text(call.visible if call is not None else None))
    return one_line(error)


@contextmanager
def rpc_errors(context: grpc.ServicerContext):
    """Turn user errors, backpressure and deadlines into status codes; the server keeps serving after any of them."""
    try:
        yield
    except HANDLED_ERRORS as error:
        context.abort(status_of(error), caller_message(error, context))
