"""Shared fixtures of the security tests: two tiny models, API keys, JWT keys, a policy and an authenticated server."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mmfusion.proto import inspection_pb2_grpc as pb_grpc
from mmfusion.security.apikeys import MIN_SCRYPT_N
from mmfusion.security.auth import AuthConfig, JwtConfig, hash_api_key
from mmfusion.security.limits import FailureLimit
from tests.test_pipeline import tiny_model

JWT_SECRET = "a-test-secret-of-at-least-32-bytes-long!"
AUDIENCE, ISSUER = "mmfusion-tests", "https://issuer.test"
API_KEYS = {"operator": "key-operator-0123456789", "analyst": "key-analyst-0123456789", "admin": "key-admin-0123"}
CHEAP_SCRYPT_N = MIN_SCRYPT_N  # stored hashes carry their own cost; tests use the cheapest the server accepts
ROOMY_FAILURES = FailureLimit(10_000)  # test servers see many failed logins from 127.0.0.1 on purpose
POLICY = {
    "roles": {
        "operator": {"rpcs": ["Inspect", "StreamInspect", "ListModels", "GetModel"], "models": ["pcb-*"]},
        "analyst": {
            "rpcs": ["AnalyzeAudio", "StreamCall", "GenerateReport", "ListModels", "GetModel"],
            "models": ["*"],
        },
        "admin": {"rpcs": ["*"], "models": ["*"]},
    }
}


def named_tiny_model(folder: Path) -> Path:
    """tiny_model under the folder's name (a model's name must match its folder)."""
    tiny_model(folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["name"] = folder.name
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def write_keys(path: Path, keys: dict[str, str]) -> Path:
    """A key file with one key per role; the key id is `<role>-key`."""
    entries = [
        {"id": f"{role}-key", "role": role, "hash": hash_api_key(key, n=CHEAP_SCRYPT_N)} for role, key in keys.items()
    ]
    path.write_text(yaml.safe_dump({"keys": entries}))
    path.chmod(0o600)  # key files that other users can read are refused
    return path


def token(
    role: str = "admin",
    subject: str = "alice",
    lifetime_s: float = 300,
    key=JWT_SECRET,
    algorithm: str = "HS256",
    claims: dict | None = None,
) -> str:
    """A JWT for the test audience and issuer; `claims` override the defaults (None removes a claim)."""
    now = time.time()
    payload = {"sub": subject, "role": role, "aud": AUDIENCE, "iss": ISSUER, "exp": now + lifetime_s, "iat": now}
    payload.update(claims or {})
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, key, algorithm=algorithm)


def bearer(role: str = "admin", **options) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token(role, **options)}"),)


def api_key(role: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"ApiKey {API_KEYS[role]}"),)


@pytest.fixture(scope="session")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def security_files(tmp_path_factory, rsa_key) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("security")
    public = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (folder / "jwt.pub").write_bytes(public)
    (folder / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    return {
        "keys": write_keys(folder / "keys.yaml", API_KEYS),
        "policy": folder / "policy.yaml",
        "public": folder / "jwt.pub",
    }


@pytest.fixture(scope="session")
def security_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    tiny_model(root / "tiny")
    named_tiny_model(root / "pcb-a")
    return root


def auth_config(files: dict[str, Path]) -> AuthConfig:
    jwt_config = JwtConfig(JWT_SECRET, files["public"].read_text(), audience=AUDIENCE, issuer=ISSUER)
    return AuthConfig(files["keys"], jwt_config, failure_limit=ROOMY_FAILURES)


class Channel:
    """A loopback channel with the stubs of both services."""

    def __init__(self, port: int) -> None:
        from tritonclient.grpc import service_pb2_grpc as kpb_grpc

        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.inspection = pb_grpc.InspectionStub(self.channel)
        self.kserve = kpb_grpc.GRPCInferenceServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()


def status_of(call) -> tuple[grpc.StatusCode, str]:
    """Run call(); (OK, "") or the RpcError's code and details."""
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""
