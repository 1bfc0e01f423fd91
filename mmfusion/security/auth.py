"""Authentication: API keys (mmfusion.security.apikeys) and JWTs (HS256 or RS256) -> a Caller."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import jwt

from mmfusion.security.apikeys import KeyTable, load_api_keys
from mmfusion.security.apikeys import generate_api_key as generate_api_key  # re-exported: the key tools' home
from mmfusion.security.apikeys import hash_api_key as hash_api_key
from mmfusion.security.apikeys import read_yaml_file as read_yaml_file
from mmfusion.security.limits import FailureLimit, TokenBuckets
from mmfusion.types import InputError

LOG = logging.getLogger(__name__)
GENERIC_MESSAGE = "authentication failed: send valid credentials (authorization: Bearer <jwt> or ApiKey <key>)"
MIN_HMAC_SECRET_BYTES = 32
MAX_CREDENTIAL_CHARS = 8192
DEFAULT_MAX_TOKEN_LIFETIME_S = 24 * 3600.0
TOKEN_TYPES = ("jwt", "at+jwt", "application/at+jwt")  # the header `typ` values accepted (case-insensitive)
RELOAD_CHECK_S = 1.0  # how often a call looks whether the API key file changed on disk
Metadata = Iterable[tuple[str, str | bytes]]


class AuthenticationError(Exception):
    """Credentials missing or wrong; str() is always GENERIC_MESSAGE, `reason` is for the server log only."""

    def __init__(self, reason: str) -> None:
        super().__init__(GENERIC_MESSAGE)
        self.reason = reason


@dataclass(frozen=True)
class Caller:
    """Who made a call: a key id or a JWT subject, and the role the policy knows them by."""

    id: str
    role: str


class TooManyFailures(Exception):
    """A client address over its budget of failed authentications; refused before any credential is checked."""

    def __init__(self, client: str, wait_s: float, limit: FailureLimit) -> None:
        self.client = client
        self.retry_ms = max(1, math.ceil(wait_s * 1000))
        super().__init__(
            f"{limit.failures} failed authentications per {limit.window_s:g} s reached for {client}; "
            f"retry after {self.retry_ms} ms"
        )


def _read_pem_key(path: str | Path) -> str:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise InputError(f"--jwt-public-key {path}: cannot read ({error.strerror})") from None
    if "-----BEGIN PUBLIC KEY-----" not in text:
        raise InputError(f"--jwt-public-key {path}: expected a PEM public key ('-----BEGIN PUBLIC KEY-----')")
    return text


@dataclass(frozen=True)
class JwtConfig:
    """How bearer tokens are checked: HS256 with `secret` and/or RS256 with `public_key` (PEM text)."""

    secret: str | None = None
    public_key: str | None = None
    audience: str | None = None
    issuer: str | None = None
    role_claim: str = "role"
    leeway_s: float = 0.0
    max_lifetime_s: float = DEFAULT_MAX_TOKEN_LIFETIME_S  # exp - iat (exp - now without iat) may be at most this
    require_audience: bool = True  # False: no audience configured, tokens must then carry no `aud`

    def __post_init__(self) -> None:
        if self.secret is None and self.public_key is None:
            raise InputError("jwt: neither a secret (HS256) nor a public key (RS256); give at least one")
        if self.secret is not None and len(self.secret.encode()) < MIN_HMAC_SECRET_BYTES:
            raise InputError(
                f"jwt secret: {len(self.secret.encode())} bytes; expected at least {MIN_HMAC_SECRET_BYTES}"
            )
        if not self.max_lifetime_s > 0:
            raise InputError(f"jwt max lifetime {self.max_lifetime_s!r}: expected seconds > 0")
        if not self.audience and self.require_audience:
            raise InputError(
                f"jwt audience: {self.audience!r}; expected the 'aud' claim your tokens carry (--jwt-audience NAME), "
                "or --jwt-no-audience to accept tokens meant for any service of the issuer"
            )

    @classmethod
    def from_options(
        cls,
        secret_env: str | None = None,
        public_key_file: str | Path | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        max_lifetime_s: float = DEFAULT_MAX_TOKEN_LIFETIME_S,
        require_audience: bool = True,
    ) -> JwtConfig:
        """From the serve flags: the secret is read from an environment variable, never from the command line."""
        secret = None
        if secret_env is not None:
            secret = os.environ.get(secret_env)
            if not secret:
                raise InputError(f"--jwt-secret-env {secret_env}: the variable is unset or empty")
        public_key = _read_pem_key(public_key_file) if public_key_file is not None else None
        return cls(
            secret, public_key, audience, issuer, max_lifetime_s=max_lifetime_s, require_audience=require_audience
        )

    def decode(self, token: str) -> Caller:
        """Check header, signature, exp, nbf, iat, lifetime, aud and iss; the caller is `sub` with the role claim."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise AuthenticationError(f"jwt header: {error}") from None
        algorithm, kind = header.get("alg"), header.get("typ")
        if not isinstance(algorithm, str):
            raise AuthenticationError(f"jwt header alg: a {type(algorithm).__name__}; expected a string")
        if kind is not None and (not isinstance(kind, str) or kind.lower() not in TOKEN_TYPES):
            raise AuthenticationError(f"jwt header typ {str(kind)[:24]!r}: expected JWT or at+jwt")
        key = {"HS256": self.secret, "RS256": self.public_key}.get(algorithm)
        if key is None:
            raise AuthenticationError(f"jwt alg {str(algorithm)[:16]!r}: not accepted by this server")
        required = ["exp", "sub"] + (["aud"] if self.audience else []) + (["iss"] if self.issuer else [])
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": required, "verify_signature": True},
            )
        except jwt.PyJWTError as error:
            raise AuthenticationError(f"jwt: {error}") from None
        self._check_lifetime(claims)
        role, subject = claims.get(self.role_claim), claims.get("sub")
        if not isinstance(role, str) or not role or not isinstance(subject, str) or not subject:
            raise AuthenticationError(f"jwt: claims 'sub' and {self.role_claim!r} must be non-empty strings")
        return Caller(subject, role)

    def _check_lifetime(self, claims: dict) -> None:
        """`iat`, when present, is not in the future; exp - iat (exp - now without iat) is at most the maximum."""
        now = time.time()
        try:
            issued = float(claims["iat"]) if claims.get("iat") is not None else None
            lifetime = float(claims["exp"]) - (issued if issued is not None else now)
        except (TypeError, ValueError, OverflowError):
            raise AuthenticationError("jwt: exp or iat is not a number of seconds in range") from None
        if issued is not None and issued > now + self.leeway_s:
            raise AuthenticationError(f"jwt: iat {issued:.0f} is in the future (now {now:.0f})")
        if not lifetime <= self.max_lifetime_s + self.leeway_s:
            raise AuthenticationError(f"jwt: lifetime {lifetime:.0f} s; the most accepted is {self.max_lifetime_s:g} s")


def _file_stamp(path: Path) -> tuple | None:
    """What tells a changed file apart: inode, size, mtime and ctime (None when it cannot be stat'ed)."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _credential(metadata: Metadata | None) -> tuple[str, str]:
    """("apikey" or "bearer", the credential) from the call's one `authorization` or `x-api-key` value."""
    found: dict[str, list[str]] = {}
    for key, value in metadata or ():
        if key in ("authorization", "x-api-key"):
            found.setdefault(key, []).append(value if isinstance(value, str) else "")
    if not found:
        raise AuthenticationError("no authorization or x-api-key metadata")
    if sum(map(len, found.values())) > 1:
        raise AuthenticationError("more than one credential in the metadata")
    ((name, (value,)),) = found.items()
    if len(value) > MAX_CREDENTIAL_CHARS:
        raise AuthenticationError(f"{name}: longer than {MAX_CREDENTIAL_CHARS} characters")
    if name == "x-api-key":
        return "apikey", value.strip()
    scheme, _, credential = value.strip().partition(" ")
    credential = credential.strip()
    if not credential:
        raise AuthenticationError("authorization: no credential after the scheme")
    if scheme.lower() in ("apikey", "bearer"):
        return scheme.lower(), credential
    raise AuthenticationError("authorization: unknown scheme; expected Bearer or ApiKey")


@dataclass
class AuthConfig:
    """API keys (from `api_keys_path`) and/or JWT settings; `authenticate` turns call metadata into a Caller.

    Failed authentications are counted per client address (`failure_limit`); an address over its budget
    is refused before any credential of it is checked, unless it presents an API key already verified.
    The API key file is re-read when it changes on disk (looked at most every `reload_check_s`) or on reload().
    """

    api_keys_path: str | Path | None = None
    jwt: JwtConfig | None = None
    failure_limit: FailureLimit = field(default_factory=FailureLimit)
    reload_check_s: float = RELOAD_CHECK_S
    # the keys and the memo of keys checked against them, swapped together as one reference on reload
    _keys: KeyTable = field(default=None, init=False, repr=False)
    _failures: TokenBuckets = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.api_keys_path is None and self.jwt is None:
            raise InputError("auth: no API key file and no JWT settings; give at least one")
        self._stamp = _file_stamp(Path(self.api_keys_path)) if self.api_keys_path is not None else None
        self._keys = KeyTable(load_api_keys(self.api_keys_path) if self.api_keys_path is not None else ())
        self._failures = TokenBuckets(self.failure_limit.as_rate_limit())
        self._next_check = time.monotonic() + self.reload_check_s
        self._reload_lock = threading.Lock()

    def reload(self) -> bool:
        """Re-read the API key file (atomic swap); a broken or exposed file keeps the old keys and logs why."""
        if self.api_keys_path is None:
            return True
        with self._reload_lock:
            self._stamp = _file_stamp(Path(self.api_keys_path))  # before reading: a later write is seen next time
            try:
                keys = load_api_keys(self.api_keys_path)
            except InputError as error:
                LOG.error("api keys not reloaded, keeping the previous ones: %s", error)
                return False
            self._keys = KeyTable(keys)
        LOG.info("api keys reloaded from %s: %d keys", self.api_keys_path, len(keys))
        return True

    def _current_keys(self) -> KeyTable:
        """The keys, re-read first when the file changed since it was last read (looked at once per interval)."""
        now = time.monotonic()
        if self.api_keys_path is not None and now >= self._next_check:
            self._next_check = now + self.reload_check_s
            if _file_stamp(Path(self.api_keys_path)) != self._stamp:
                self.reload()
        return self._keys

    def _check_api_key(self, key: str) -> Caller:
        keys = self._current_keys()
        if not keys.keys:
            raise AuthenticationError("api keys are not enabled on this server")
        stored = keys.lookup(key)
        if stored is None:
            raise AuthenticationError("api key: matches no stored hash")
        return Caller(stored.id, stored.role)

    def _verified_caller(self, metadata: Metadata | None) -> Caller | None:
        """The caller of an API key already verified (one HMAC, no scrypt); None for anything else."""
        try:
            kind, credential = _credential(metadata)
        except AuthenticationError:
            return None
        if kind != "apikey":
            return None
        known, stored = self._current_keys().remembered(credential)  # a revoked key is forgotten here too
        return Caller(stored.id, stored.role) if known and stored is not None else None

    def authenticate(self, metadata: Metadata | None, client: str | None = None) -> Caller:
        """The Caller of `authorization: Bearer <jwt>` / `authorization: ApiKey <key>` / `x-api-key: <key>`.

        With `client` (its address), raises TooManyFailures while that address is over its failure budget
        and counts a failure against it for every AuthenticationError.
        """
        if client is not None:
            wait = self._failures.wait(client)
            if wait > 0:
                caller = self._verified_caller(metadata)
                if caller is None:
                    raise TooManyFailures(client, wait, self.failure_limit)
                return caller
        try:
            return self._authenticate(metadata)
        except AuthenticationError:
            if client is not None:
                self._failures.charge(client)
            raise

    def _authenticate(self, metadata: Metadata | None) -> Caller:
        try:
            kind, credential = _credential(metadata)
            if kind == "apikey":
                return self._check_api_key(credential)
            if self.jwt is None:
                raise AuthenticationError("bearer tokens are not enabled on this server")
            return self.jwt.decode(credential)
        except AuthenticationError:
            raise
        except Exception as error:  # a malformed credential must end as UNAUTHENTICATED, never as a crash
            LOG.warning("credential check raised %s: refused", type(error).__name__, exc_info=True)
            raise AuthenticationError(f"malformed credential ({type(error).__name__})") from None
