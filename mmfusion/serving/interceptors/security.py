"""A server's security settings (authentication, policy, limits, audit log), built from its options."""

from __future__ import annotations

import logging
from pathlib import Path

from mmfusion.security.auth import AuthConfig
from mmfusion.security.limits import RateLimit, StreamSlots, TokenBuckets
from mmfusion.security.rbac import PolicyStore
from mmfusion.serving.interceptors.auth import current_caller

LOG = logging.getLogger(__name__)


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
        """Append an event to the audit log, if any; a failure to write it is logged, not raised."""
        if self.audit is None:
            return
        try:
            self.audit.append(event)
        except Exception:  # the audit log must not take the service down; the failure itself is logged
            LOG.exception("audit event not written: %s", {k: event.get(k) for k in ("kind", "rpc", "status")})

    def on_model_change(self, name: str, loaded: bool) -> None:
        """ModelManager listener: a config event naming the caller whose call loaded or unloaded the model."""
        caller = current_caller()
        action = "load" if loaded else "unload"
        self.record({"kind": "config", "action": action, "model": name, "caller": caller.id, "role": caller.role})

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
