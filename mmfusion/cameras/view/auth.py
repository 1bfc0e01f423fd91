"""Who may watch: the service's own API keys and JWTs (security.auth), a session cookie after one login, roles.

A request carries `authorization: ApiKey <key>` / `Bearer <jwt>` (or `x-api-key`) checked exactly as the
gRPC service checks it, or the cookie a login with the same credential gave (HttpOnly, SameSite=Strict,
at most SESSION_S long and never past the token's expiry). Any role may watch, a read-only one too: with
an access policy, the role must be in it and sees only the cameras whose model its `models:` allow.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

import jwt

from mmfusion.security.auth import AuthConfig, AuthenticationError, Caller, TooManyFailures
from mmfusion.security.rbac import PolicyStore

SESSION_COOKIE = "mmfusion_view"
SESSION_S = 8 * 3600.0
MAX_SESSIONS = 10_000
ANONYMOUS = Caller("anonymous", "")


class NotAllowed(Exception):
    """The caller is authenticated but its role is not in the access policy."""


@dataclass(frozen=True)
class Session:
    caller: Caller
    expires: float


def _expiry(credential: str) -> float:
    """When a session opened with this credential ends: SESSION_S from now, or a JWT's exp if sooner."""
    ends = time.time() + SESSION_S
    if credential.lower().startswith("bearer "):
        try:
            claims = jwt.decode(credential.split(" ", 1)[1].strip(), options={"verify_signature": False})
            ends = min(ends, float(claims.get("exp", ends)))
        except (jwt.PyJWTError, TypeError, ValueError):
            pass  # already verified by authenticate(); an odd exp only shortens nothing
    return ends


class ViewAuth:
    """Authenticates page requests; without `auth` everyone is let in (the CLI allows that on loopback only)."""

    def __init__(self, auth: AuthConfig | None = None, policy: PolicyStore | None = None) -> None:
        self.auth = auth
        self.policy = policy
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.auth is not None

    def check_role(self, caller: Caller) -> Caller:
        if self.policy is not None and caller.role not in self.policy.policy.roles:
            raise NotAllowed(f"role {caller.role!r} is not in the access policy")
        return caller

    def allows_model(self, caller: Caller, model: str) -> bool:
        """Whether the caller may watch a camera of this model."""
        if self.policy is None:
            return True
        return self.policy.policy.allows_model(caller.role, model)

    def authenticate(self, headers: dict[str, str], cookie: str | None, client: str | None) -> Caller:
        """The caller of a request; raises AuthenticationError, TooManyFailures or NotAllowed."""
        if self.auth is None:
            return ANONYMOUS
        metadata = [(key, value) for key, value in headers.items() if key in ("authorization", "x-api-key")]
        if not metadata and cookie:
            session = self._session(cookie)
            if session is not None:
                return self.check_role(session.caller)
        return self.check_role(self.auth.authenticate(metadata, client))

    def login(self, credential: str, client: str | None) -> tuple[str, Session]:
        """A new session for `ApiKey <key>`, `Bearer <jwt>`, or a bare key or JWT (three dotted base64 parts)."""
        if self.auth is None:
            raise AuthenticationError("no authentication configured")
        credential = credential.strip()
        if not credential.lower().startswith(("apikey ", "bearer ")):
            is_jwt = credential.startswith("eyJ") and credential.count(".") == 2  # header.payload.signature
            credential = f"Bearer {credential}" if is_jwt else f"ApiKey {credential}"
        caller = self.check_role(self.auth.authenticate([("authorization", credential)], client))
        session = Session(caller, _expiry(credential))
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._expire()
            if len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions, key=lambda key: self._sessions[key].expires)
                del self._sessions[oldest]
            self._sessions[token] = session
        return token, session

    def logout(self, cookie: str | None) -> None:
        with self._lock:
            self._sessions.pop(cookie or "", None)

    def _session(self, token: str) -> Session | None:
        with self._lock:
            session = self._sessions.get(token)
            if session is not None and session.expires <= time.time():
                del self._sessions[token]
                return None
            return session

    def _expire(self) -> None:
        now = time.time()
        for token in [token for token, session in self._sessions.items() if session.expires <= now]:
            del self._sessions[token]


__all__ = ["ViewAuth", "NotAllowed", "AuthenticationError", "TooManyFailures", "SESSION_COOKIE", "ANONYMOUS"]
