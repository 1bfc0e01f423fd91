"""Authentication: who calls (UNAUTHENTICATED with one generic message otherwise), known to model listeners.

Failed authentications are limited per client address: over the budget, RESOURCE_EXHAUSTED with
`retry-after-ms` before any credential is checked.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any

import grpc

from mmfusion.security.auth import GENERIC_MESSAGE, AuthConfig, AuthenticationError, Caller, TooManyFailures
from mmfusion.security.network import TrustedProxies
from mmfusion.serving.interceptors.call import CallInterceptor, CallRecord
from mmfusion.serving.interceptors.limits import RETRY_AFTER_KEY, client_key

LOG = logging.getLogger(__name__)
SERVER_CALLER = Caller("server", "")
_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("mmfusion_caller", default=None)


def current_caller() -> Caller:
    """The caller of the unary call this thread is serving; the server itself outside calls."""
    return _CALLER.get() or SERVER_CALLER


class AuthInterceptor(CallInterceptor):
    """Authenticates each call (anonymous without auth) and makes its caller current while a unary call runs."""

    def __init__(self, auth: AuthConfig | None, proxies: TrustedProxies | None = None) -> None:
        self.auth = auth
        self.proxies = proxies  # whose forwarded client address counts failures (as for the rate limit)

    def begin(self, call: CallRecord, context: grpc.ServicerContext) -> None:
        """Authenticate the call's metadata; aborts UNAUTHENTICATED, or RESOURCE_EXHAUSTED after too many failures."""
        if self.auth is None:
            return
        try:
            client = client_key(context, self.proxies)
            call.caller = self.auth.authenticate(context.invocation_metadata() or (), client)
        except TooManyFailures as error:
            LOG.info("call %s %s from %s: refused: %s", call.request_id, call.method, context.peer(), error)
            context.set_trailing_metadata(((RETRY_AFTER_KEY, str(error.retry_ms)),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        except AuthenticationError as error:
            LOG.info(
                "call %s %s from %s: unauthenticated: %s",
                call.request_id,
                call.method,
                context.peer(),
                error.reason,
            )
            context.abort(grpc.StatusCode.UNAUTHENTICATED, GENERIC_MESSAGE)
        except Exception:  # never UNKNOWN: whatever went wrong checking credentials, the call is not authenticated
            LOG.exception("call %s %s from %s: credential check failed", call.request_id, call.method, context.peer())
            context.abort(grpc.StatusCode.UNAUTHENTICATED, GENERIC_MESSAGE)

    def unary(self, call: CallRecord, context: grpc.ServicerContext, invoke: Callable[[], Any]) -> Any:
        """Run a unary call with its caller current, so that the models it loads or unloads name it."""
        if call.streaming:
            return invoke()
        token = _CALLER.set(call.caller)
        try:
            return invoke()
        finally:
            _CALLER.reset(token)
