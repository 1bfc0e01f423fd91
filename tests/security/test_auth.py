"""Authentication: API key hashes, JWT checks, and one generic UNAUTHENTICATED message for every failure."""

from __future__ import annotations

import base64
import json
import time

import grpc
import jwt
import pytest
import yaml

from mmfusion.client import InspectionClient, ServerError
from mmfusion.proto import inspection_pb2 as pb
from mmfusion.security.auth import (
    GENERIC_MESSAGE,
    AuthConfig,
    AuthenticationError,
    Caller,
    JwtConfig,
    hash_api_key,
    load_api_keys,
)
from mmfusion.serving import build_server
from mmfusion.types import InputError
from tests.security.conftest import (
    API_KEYS,
    AUDIENCE,
    ISSUER,
    JWT_SECRET,
    Channel,
    api_key,
    auth_config,
    bearer,
    status_of,
    token,
    write_keys,
)


@pytest.fixture(scope="module")
def server(security_files):
    with build_server([], auth=auth_config(security_files), policy_path=security_files["policy"]) as running:
        channel = Channel(running.port)
        yield running, channel
        channel.close()


def _list(channel: Channel, metadata) -> tuple[grpc.StatusCode, str]:
    return status_of(lambda: channel.inspection.ListModels(pb.ListModelsRequest(), metadata=metadata))


def _tampered(value: str) -> str:
    """The token with its payload's role changed to admin and the signature kept."""
    header, payload, signature = value.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"{header}.{forged}.{signature}"


def _bad_metadata():
    good = token("operator")
    return {
        "no metadata": (),
        "expired": bearer("operator", lifetime_s=-10),
        "not yet valid": bearer("operator", claims={"nbf": time.time() + 600}),
        "tampered payload": (("authorization", f"Bearer {_tampered(good)}"),),
        "wrong audience": bearer("operator", claims={"aud": "someone-else"}),
        "no audience": bearer("operator", claims={"aud": None}),
        "wrong issuer": bearer("operator", claims={"iss": "https://evil.test"}),
        "no expiry": bearer("operator", claims={"exp": None}),
        "no subject": bearer("operator", claims={"sub": None}),
        "no role": bearer("operator", claims={"role": None}),
        "wrong secret": bearer("operator", key="another-secret-of-at-least-32-bytes!!"),
        "alg none": (("authorization", "Bearer " + jwt.encode({"sub": "x", "role": "admin"}, None, algorithm="none")),),
        "garbage token": (("authorization", "Bearer not.a.jwt"),),
        "wrong api key": (("authorization", "ApiKey not-the-key"),),
        "wrong x-api-key": (("x-api-key", "not-the-key"),),
        "unknown scheme": (("authorization", "Basic dXNlcjpwYXNz"),),
        "scheme only": (("authorization", "Bearer"),),
        "two credentials": api_key("admin") + (("x-api-key", API_KEYS["admin"]),),
        "long credential": (("authorization", "ApiKey " + "k" * 6000),),  # under grpc's 8 KiB metadata limit
    }


BAD_CASES = [
    "no metadata",
    "expired",
    "not yet valid",
    "tampered payload",
    "wrong audience",
    "no audience",
    "wrong issuer",
    "no expiry",
    "no subject",
    "no role",
    "wrong secret",
    "alg none",
    "garbage token",
    "wrong api key",
    "wrong x-api-key",
    "unknown scheme",
    "scheme only",
    "two credentials",
    "long credential",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_every_credential_failure_is_unauthenticated_with_one_message(server, case):
    _, channel = server
    assert _list(channel, _bad_metadata()[case]) == (grpc.StatusCode.UNAUTHENTICATED, GENERIC_MESSAGE)


def test_rs256_token_from_an_untrusted_key_is_refused(server):
    from cryptography.hazmat.primitives.asymmetric import rsa

    untrusted = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _, channel = server
    metadata = bearer("operator", key=untrusted, algorithm="RS256")
    assert _list(channel, metadata) == (grpc.StatusCode.UNAUTHENTICATED, GENERIC_MESSAGE)


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param(lambda rsa_key: api_key("operator"), id="authorization ApiKey"),
        pytest.param(lambda rsa_key: (("x-api-key", API_KEYS["operator"]),), id="x-api-key"),
        pytest.param(lambda rsa_key: bearer("operator"), id="HS256"),
        pytest.param(lambda rsa_key: bearer("operator", key=rsa_key, algorithm="RS256"), id="RS256"),
    ],
)
def test_valid_credentials_are_accepted(server, rsa_key, metadata):
    _, channel = server
    assert _list(channel, metadata(rsa_key)) == (grpc.StatusCode.OK, "")


def test_the_client_sends_an_api_key_or_a_token(server):
    running, _ = server
    with InspectionClient(f"127.0.0.1:{running.port}", timeout=10, api_key=API_KEYS["analyst"]) as client:
        assert client.list_models() == []
    with InspectionClient(f"127.0.0.1:{running.port}", timeout=10, token=token("analyst")) as client:
        assert client.list_models() == []
    with InspectionClient(f"127.0.0.1:{running.port}", timeout=10, api_key="wrong") as client:
        with pytest.raises(ServerError) as refused:
            client.list_models()
        assert (refused.value.code, refused.value.message) == (grpc.StatusCode.UNAUTHENTICATED, GENERIC_MESSAGE)
    with pytest.raises(ValueError, match="api_key and token"):
        InspectionClient("127.0.0.1:1", api_key="a", token="b")


def test_api_key_hashes_are_salted_and_verify(tmp_path):
    first, second = hash_api_key("secret-key"), hash_api_key("secret-key")
    assert first != second and first.startswith("scrypt$16384$8$1$") and "secret-key" not in first
    path = write_keys(tmp_path / "keys.yaml", {"operator": "secret-key"})
    assert "secret-key" not in path.read_text()
    config = AuthConfig(path)
    assert config.authenticate([("x-api-key", "secret-key")]) == Caller("operator-key", "operator")
    assert config.authenticate([("authorization", "ApiKey secret-key")]) == Caller("operator-key", "operator")
    with pytest.raises(AuthenticationError) as failed:
        config.authenticate([("x-api-key", "secret-kez")])
    assert str(failed.value) == GENERIC_MESSAGE and "no stored hash" in failed.value.reason
    with pytest.raises(AuthenticationError):
        config.authenticate([("authorization", f"Bearer {token()}")])  # no JWT configured
    with pytest.raises(AuthenticationError) as failed:
        config.authenticate([("x-api-key", "k" * 9000)])
    assert failed.value.reason == "x-api-key: longer than 8192 characters"


def test_reloaded_keys_take_effect_and_a_broken_file_keeps_the_old_ones(tmp_path):
    path = write_keys(tmp_path / "keys.yaml", {"operator": "old-key"})
    config = AuthConfig(path)
    assert config.authenticate([("x-api-key", "old-key")]).role == "operator"
    write_keys(path, {"admin": "new-key"})
    assert config.reload()
    assert config.authenticate([("x-api-key", "new-key")]).role == "admin"
    with pytest.raises(AuthenticationError):
        config.authenticate([("x-api-key", "old-key")])  # the verified-keys memo was dropped with the old keys
    path.write_text("keys: [{id: x}]")
    assert not config.reload()
    assert config.authenticate([("x-api-key", "new-key")]).role == "admin"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("keys: 3", "expected a mapping with a 'keys' list"),
        ("keys: [{id: a, role: r}]", "keys[0]: {'id': 'a', 'role': 'r'}; expected exactly the keys id, role, hash"),
        ("keys: [{id: a, role: r, hash: plaintext}]", "keys[0].hash: 'plaintext'...; expected scrypt$N$r$p$salt$hash"),
        ("keys: [{id: '', role: r, hash: x}]", "keys[0].id: ''; expected a non-empty string"),
    ],
)
def test_a_bad_key_file_is_refused_naming_the_entry(tmp_path, document, message):
    path = tmp_path / "keys.yaml"
    path.write_text(document)
    path.chmod(0o600)
    with pytest.raises(InputError) as refused:
        load_api_keys(path)
    assert message in str(refused.value)


def test_duplicate_key_ids_are_refused(tmp_path):
    entry = {"id": "same", "role": "admin", "hash": hash_api_key("k")}
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [entry, entry]}))
    path.chmod(0o600)
    with pytest.raises(InputError, match="keys\\[1\\].id: 'same' appears twice"):
        load_api_keys(path)


def test_jwt_settings_are_checked():
    with pytest.raises(InputError, match="jwt secret: 5 bytes; expected at least 32"):
        JwtConfig("short")
    with pytest.raises(InputError, match="neither a secret"):
        JwtConfig()
    with pytest.raises(InputError, match="no API key file and no JWT settings"):
        AuthConfig()
    config = JwtConfig(JWT_SECRET, audience=AUDIENCE, issuer=ISSUER)
    assert config.decode(token("analyst", subject="bob")) == Caller("bob", "analyst")


def test_jwt_secret_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("MMFUSION_TEST_JWT", raising=False)
    with pytest.raises(InputError, match="--jwt-secret-env MMFUSION_TEST_JWT: the variable is unset or empty"):
        JwtConfig.from_options("MMFUSION_TEST_JWT")
    monkeypatch.setenv("MMFUSION_TEST_JWT", JWT_SECRET)
    assert JwtConfig.from_options("MMFUSION_TEST_JWT", audience=AUDIENCE).secret == JWT_SECRET


def test_the_request_id_comes_back_and_a_bad_one_is_replaced(server):
    _, channel = server
    _, call = channel.inspection.ListModels.with_call(
        pb.ListModelsRequest(), metadata=api_key("admin") + (("x-request-id", "abc-123"),)
    )
    assert dict(call.initial_metadata())["x-request-id"] == "abc-123"
    _, call = channel.inspection.ListModels.with_call(
        pb.ListModelsRequest(), metadata=api_key("admin") + (("x-request-id", "bad id with spaces!"),)
    )
    replaced = dict(call.initial_metadata())["x-request-id"]
    assert len(replaced) == 32 and replaced.isalnum()


def test_serve_flags_build_auth_policy_limits_and_tls(tmp_path, security_files, monkeypatch):
    from mmfusion.cli.main import main
    from mmfusion.serving import server as server_module

    calls = []
    monkeypatch.setattr(server_module, "serve", lambda *args, **kwargs: calls.append(kwargs) or 0)
    monkeypatch.setenv("TEST_JWT_SECRET", JWT_SECRET)
    argv = ["serve", "--api-keys", str(security_files["keys"]), "--jwt-secret-env", "TEST_JWT_SECRET"]
    argv += ["--jwt-audience", AUDIENCE, "--jwt-issuer", ISSUER, "--policy", str(security_files["policy"])]
    argv += ["--audit-log", str(tmp_path / "audit.jsonl"), "--audit-unkeyed", "--rate-limit", "20/s", "--burst", "5"]
    assert main(argv) == 0
    options = calls[0]
    assert options["auth"].jwt.audience == AUDIENCE and options["auth"].jwt.secret == JWT_SECRET
    assert options["policy_path"] == str(security_files["policy"])
    assert (options["rate_limit"].rate, options["rate_limit"].burst) == (20.0, 5)
    assert options["tls"] is None and options["audit_cipher"] is None


def test_serve_flags_encrypt_the_audit_log_with_a_key_from_the_environment(tmp_path, monkeypatch):
    import base64
    import os

    from mmfusion.cli.main import main
    from mmfusion.security.crypto import FieldCipher
    from mmfusion.serving import server as server_module

    calls = []
    monkeypatch.setattr(server_module, "serve", lambda *args, **kwargs: calls.append(kwargs) or 0)
    monkeypatch.setenv("TEST_AUDIT_KEY", base64.b64encode(os.urandom(32)).decode())
    assert main(["serve", "--audit-log", str(tmp_path / "a.jsonl"), "--audit-key-env", "TEST_AUDIT_KEY"]) == 0
    assert isinstance(calls[0]["audit_cipher"], FieldCipher) and calls[0]["audit_fsync"] == "always"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--policy", "p.yaml"], "--policy p.yaml: needs --api-keys or a JWT flag"),
        (["--jwt-audience", "a"], "--jwt-audience/--jwt-issuer: need --jwt-secret-env or --jwt-public-key"),
        (["--burst", "3"], "--burst/--max-streams: need --rate-limit"),
        (["--rate-limit", "0"], "rate limit 0.0: expected calls per second > 0"),
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key: give both"),
        (["--jwt-secret-env", "UNSET_VARIABLE_FOR_TEST"], "the variable is unset or empty"),
        (["--audit-key-env", "X"], "--audit-key-file/--audit-key-env: need --audit-log"),
    ],
)
def test_impossible_security_flags_exit_2(capsys, flags, message):
    from mmfusion.cli.main import main

    assert main(["serve", "--port", "0", *flags]) == 2
    error = capsys.readouterr().err
    assert error.startswith("mmfusion: error: ") and message in error
