"""Malformed JWTs (odd header types, broken JSON, wrong segment counts, huge tokens) end UNAUTHENTICATED, audited."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import grpc
import jwt
import pytest

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.security.auth import GENERIC_MESSAGE, AuthConfig, AuthenticationError, JwtConfig
from mmfusion.serving import build_server
from tests.security.conftest import AUDIENCE, ISSUER, JWT_SECRET, ROOMY_FAILURES, Channel, status_of


def _b64(data) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _signed(header, claims) -> str:
    """A token with this header and payload (any JSON, or raw bytes) and a valid HS256 signature."""
    signing_input = f"{_b64(header)}.{_b64(claims)}"
    signature = hmac.new(JWT_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _claims(**changes) -> dict:
    now = time.time()
    return {"sub": "mallory", "role": "admin", "aud": AUDIENCE, "iss": ISSUER, "exp": now + 300, "iat": now} | changes


HS256 = {"alg": "HS256", "typ": "JWT"}
MALFORMED = {
    "alg list": lambda: _signed({"alg": ["HS256"]}, _claims()),
    "alg dict": lambda: _signed({"alg": {"HS256": True}}, _claims()),
    "alg missing": lambda: _signed({"typ": "JWT"}, _claims()),
    "alg number": lambda: _signed({"alg": 256}, _claims()),
    "kid dict": lambda: _signed(HS256 | {"kid": {"id": 1}}, _claims()),
    "kid list": lambda: _signed(HS256 | {"kid": ["a"]}, _claims()),
    "typ list": lambda: _signed({"alg": "HS256", "typ": ["JWT"]}, _claims()),
    "header a list": lambda: _signed(["HS256"], _claims()),
    "header not json": lambda: _b64(b"{alg: HS256") + "." + _b64(_claims()) + ".c2ln",
    "payload a list": lambda: _signed(HS256, [1, 2]),
    "payload not json": lambda: _signed(HS256, b"{sub: x"),
    "exp out of float range": lambda: _signed(HS256, _claims(exp=10**400)),
    "iss a dict": lambda: _signed(HS256, _claims(iss={"x": 1})),
    "aud a dict": lambda: _signed(HS256, _claims(aud={"x": 1})),
    "two segments": lambda: "abc.def",
    "four segments": lambda: "a.b.c.d",
    "huge token": lambda: _signed(HS256, _claims(pad="x" * 7000)),
}
# gRPC itself refuses metadata over its 8 KiB soft limit at random before a handler runs: the huge token is
# checked against AuthConfig directly (longer than MAX_CREDENTIAL_CHARS), the others through a server too
OVER_THE_WIRE = sorted(set(MALFORMED) - {"huge token"})


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_token_is_an_authentication_error(case):
    config = AuthConfig(jwt=JwtConfig(JWT_SECRET, audience=AUDIENCE, issuer=ISSUER))
    with pytest.raises(AuthenticationError) as failed:
        config.authenticate([("authorization", f"Bearer {MALFORMED[case]()}")])
    assert not failed.value.reason.startswith("malformed credential")  # each case is named, none is a crash


@pytest.fixture(scope="module")
def audited_server(tmp_path_factory):
    audit = tmp_path_factory.mktemp("jwt-audit") / "audit.jsonl"
    auth = AuthConfig(jwt=JwtConfig(JWT_SECRET, audience=AUDIENCE, issuer=ISSUER), failure_limit=ROOMY_FAILURES)
    with build_server([], auth=auth, audit_path=audit) as server:
        channel = Channel(server.port)
        yield channel, audit
        channel.close()


def _audited(audit, request_id: str) -> dict:
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    return next(event for event in events if event.get("request_id") == request_id)


@pytest.mark.parametrize("case", OVER_THE_WIRE)
def test_a_malformed_token_ends_unauthenticated_with_an_audit_record(audited_server, case):
    channel, audit = audited_server
    request_id = f"malformed-{case.replace(' ', '-')}"
    metadata = (("authorization", f"Bearer {MALFORMED[case]()}"), ("x-request-id", request_id))
    result = status_of(lambda: channel.inspection.ListModels(pb.ListModelsRequest(), metadata=metadata))
    assert result == (grpc.StatusCode.UNAUTHENTICATED, GENERIC_MESSAGE)
    event = _audited(audit, request_id)
    assert (event["status"], event["caller"]) == ("UNAUTHENTICATED", "anonymous")
    assert event["rpc"] == "/mmfusion.v1.Inspection/ListModels"


def test_a_crash_inside_the_check_is_unauthenticated_not_unknown(audited_server, monkeypatch):
    channel, audit = audited_server

    def broken(*args, **kwargs):
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(jwt, "decode", broken)
    token = _signed(HS256, _claims())
    metadata = (("authorization", f"Bearer {token}"), ("x-request-id", "crash-in-auth"))
    result = status_of(lambda: channel.inspection.ListModels(pb.ListModelsRequest(), metadata=metadata))
    assert result == (grpc.StatusCode.UNAUTHENTICATED, GENERIC_MESSAGE)
    assert _audited(audit, "crash-in-auth")["status"] == "UNAUTHENTICATED"
    config = AuthConfig(jwt=JwtConfig(JWT_SECRET, audience=AUDIENCE, issuer=ISSUER))
    with pytest.raises(AuthenticationError) as failed:
        config.authenticate([("authorization", f"Bearer {token}")])
    assert failed.value.reason == "malformed credential (TypeError)"
