"""A server's security settings (authentication, policy, limits, audit log), built from its options."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from mmfusion.security.auth import AuthConfig
from mmfusion.security.limits import RateLimit, StreamSlots, TokenBuckets
from mmfusion.security.network import TrustedProxies
from mmfusion.security.rbac import PolicyStore
from mmfusion.serving.interceptors.auth import current_caller

LOG = logging.getLogger(__name__)


class AuditUnavailable(RuntimeError):
    """A call's audit event cannot be written and the server is fail-closed: the call must not succeed."""


class ServerSecurity:
    """Authentication, policy, limits and audit of one server; `reload()` re-reads keys and policy (SIGHUP)."""

    def __init__(
        self,
        auth: AuthConfig | None = None,
        policy: PolicyStore | None = None,
        audit=None,
        rate_limit: RateLimit | None = None,
        proxies: TrustedProxies | None = None,
        audit_fail_closed: bool = False,
        metrics=None,
    ) -> None:
        self.auth = auth
        self.policy = policy
        self.audit = audit
        self.rate_limit = rate_limit
        self.proxies = proxies  # whose forwarded client address the limits believe (the nginx front, --trusted-proxy)
        self.buckets = TokenBuckets(rate_limit) if rate_limit is not None else None
        self.streams = StreamSlots(rate_limit.max_streams) if rate_limit is not None else None
        self.audit_fail_closed = audit_fail_closed  # a call whose audit event cannot be written fails UNAVAILABLE
        self.audit_failures = 0  # events not written (and calls refused for it), also mmfusion_audit_failures_total
        self._audit_failure_counter = metrics.audit_failures if metrics is not None else None
        self._failures_lock = threading.Lock()

    def reload(self) -> bool:
        """Re-read the API key file and the policy file; each keeps its old contents if its file is broken."""
        keys_ok = self.auth.reload() if self.auth is not None else True
        policy_ok = self.policy.reload() if self.policy is not None else True
        return keys_ok and policy_ok

    def record(self, event: dict, enforce: bool = True) -> None:
        """Append an event to the audit log; a failure is logged, counted, and raised when fail-closed and `enforce`."""
        if self.audit is None:
            return
        try:
            self.audit.append(event)
        except Exception as error:
            self._audit_failed(f"audit event not written: {error}", event)
            if self.audit_fail_closed and enforce:
                raise AuditUnavailable(str(error)) from error

    def check_audit(self) -> None:
        """Fail-closed only: raise AuditUnavailable when the audit log cannot take records (closed, file gone)."""
        if self.audit is None or not self.audit_fail_closed:
            return
        try:
            self.audit.check()
        except Exception as error:
            self._audit_failed(f"call refused, the audit log is unavailable: {error}", {})
            raise AuditUnavailable(str(error)) from error

    def _audit_failed(self, message: str, event: dict) -> None:
        """Log and count an audit failure."""
        with self._failures_lock:
            self.audit_failures += 1
        if self._audit_failure_counter is not None:
            self._audit_failure_counter.inc()
        LOG.error("%s (%s)", message, {k: event.get(k) for k in ("kind", "rpc", "status", "request_id")})

    def on_model_change(self, name: str, loaded: bool) -> None:
        """ModelManager listener: a config event naming the caller whose call loaded or unloaded the model."""
        caller = current_caller()
        action = "load" if loaded else "unload"
        event = {"kind": "config", "action": action, "model": name, "caller": caller.id, "role": caller.role}
        self.record(event, enforce=False)  # the call that changed the model fails on its own event

    def close(self) -> None:
        """Close the audit log."""
        if self.audit is not None:
            self.audit.close()


def build_security(
    auth: AuthConfig | None = None,
    policy_path: str | Path | None = None,
    audit_path: str | Path | None = None,
    rate_limit: RateLimit | None = None,
    audit_cipher=None,
    audit_fsync: str = "always",
    proxies: TrustedProxies | None = None,
    audit_fail_closed: bool = False,
    audit_new_segment: bool = False,
    metrics=None,
    audit_node_id: str | None = None,
) -> ServerSecurity | None:
    """The server's security from its options; None when none is configured (no interceptor at all).

    The audit chain is keyed by `audit_cipher`'s key store (unkeyed without one); `audit_new_segment`
    starts a log that no longer reaches its head checkpoint, with the loss on the record; `audit_node_id`
    names this replica in every record (`node`).
    """
    if auth is None and policy_path is not None:
        raise ValueError(f"policy {policy_path}: an access policy needs authentication (API keys or JWT) to know roles")
    if auth is None and audit_path is None and rate_limit is None:
        return None
    policy = PolicyStore(policy_path) if auth is not None else None
    audit = None
    if audit_path is not None:
        from mmfusion.security.audit import AuditLog

        keystore = audit_cipher.keystore if audit_cipher is not None else None
        audit = AuditLog(
            audit_path,
            cipher=audit_cipher,
            fsync=audit_fsync,
            keystore=keystore,
            new_segment=audit_new_segment,
            node_id=audit_node_id,
        )
    return ServerSecurity(
        auth, policy, audit, rate_limit, proxies=proxies, audit_fail_closed=audit_fail_closed, metrics=metrics
    )
