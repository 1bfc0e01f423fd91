"""The server's interceptor chain: request id, audit, authentication, rate limit, RBAC, stream limit, models."""

from __future__ import annotations

from mmfusion.serving.interceptors.audit import AuditInterceptor, summarize
from mmfusion.serving.interceptors.auth import AuthInterceptor, current_caller
from mmfusion.serving.interceptors.call import (
    REQUEST_ID_KEY,
    CallInterceptor,
    CallRecord,
    RequestIdInterceptor,
    is_public,
)
from mmfusion.serving.interceptors.limits import RETRY_AFTER_KEY, RateLimitInterceptor, StreamLimitInterceptor
from mmfusion.serving.interceptors.rbac import ModelInterceptor, RpcPermissionInterceptor, model_of
from mmfusion.serving.interceptors.security import ServerSecurity, build_security
from mmfusion.serving.interceptors.telemetry import TelemetryInterceptor

__all__ = [
    "REQUEST_ID_KEY",
    "RETRY_AFTER_KEY",
    "AuditInterceptor",
    "AuthInterceptor",
    "CallInterceptor",
    "CallRecord",
    "ModelInterceptor",
    "RateLimitInterceptor",
    "RequestIdInterceptor",
    "RpcPermissionInterceptor",
    "ServerSecurity",
    "StreamLimitInterceptor",
    "TelemetryInterceptor",
    "build_interceptors",
    "build_security",
    "current_caller",
    "is_public",
    "model_of",
    "summarize",
]

# Every call but the public ones (health, KServe liveness/readiness: load balancers probe them without
# credentials) runs through the chain in this order, the first outermost:
#   request id     starts the call's record; echoes `x-request-id` (initial metadata) before anything aborts;
#                  as TelemetryInterceptor (always, security or not) also binds it for logs, opens the RPC's
#                  span, counts and times the call and writes its access log line,
#   audit          appends the call's event once it ended, with the status of whichever layer ended it,
#   authentication UNAUTHENTICATED with one generic message; the caller is current during unary calls;
#                  a client address over its failed-authentication budget: RESOURCE_EXHAUSTED + `retry-after-ms`
#                  before its credential is checked (an API key verified before still passes),
#   rate limit     the caller's token bucket (without auth: the client's address, as a trusted proxy forwards it,
#                  else the peer's host): RESOURCE_EXHAUSTED + `retry-after-ms`,
#   RPC permission the role's RPC patterns: PERMISSION_DENIED,
#   stream limit   a stream slot of the caller while a streaming call runs: RESOURCE_EXHAUSTED,
#   models         the model each request message names (a client stream's first message before the
#                  servicer runs, later ones as they come): PERMISSION_DENIED; model listings cut to the role.


def build_interceptors(
    security: ServerSecurity | None, telemetry: RequestIdInterceptor | None = None
) -> list[CallInterceptor]:
    """The server's interceptors, outermost first: the request id's (`telemetry`, else a plain one), then only
    the configured security parts (none without security)."""
    chain: list[CallInterceptor] = [telemetry if telemetry is not None else RequestIdInterceptor()]
    if security is None:
        return chain
    authenticated = security.auth is not None
    if security.audit is not None:
        chain.append(AuditInterceptor(security))
    chain.append(AuthInterceptor(security.auth, security.proxies))  # also without auth: anonymous callers load models
    if security.buckets is not None:
        chain.append(RateLimitInterceptor(security.rate_limit, security.buckets, authenticated, security.proxies))
    if security.policy is not None:
        chain.append(RpcPermissionInterceptor(security.policy))
    if security.streams is not None:
        chain.append(StreamLimitInterceptor(security.streams, authenticated, security.proxies))
    chain.append(ModelInterceptor(security.policy))  # also without a policy: notes each call's model and input
    return chain
