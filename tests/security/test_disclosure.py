"""Model names a caller may not use stay out of error messages and out of anonymous per-model health."""

from __future__ import annotations

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as kpb

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.serving import build_server
from mmfusion.serving.server import SERVICE_NAME
from tests.security.conftest import Channel, status_of, write_keys

KEYS = {"line": "key-line-0123456789", "admin": "key-admin-0123456789"}
POLICY = {"roles": {"line": {"rpcs": ["*"], "models": ["pcb-*"]}, "admin": {"rpcs": ["*"], "models": ["*"]}}}


def key(role: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"ApiKey {KEYS[role]}"),)


@pytest.fixture(scope="module")
def secured(security_models, tmp_path_factory):
    """pcb-a and tiny loaded; role `line` may use pcb-* only (every RPC), `admin` everything."""
    from mmfusion.security.auth import AuthConfig

    folder = tmp_path_factory.mktemp("disclosure")
    (folder / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    auth = AuthConfig(write_keys(folder / "keys.yaml", KEYS))
    server = build_server(["tiny", "pcb-a"], model_root=security_models, auth=auth, policy_path=folder / "policy.yaml")
    with server:
        channel = Channel(server.port)
        yield server, channel
        channel.close()


# (call, expected status, the message the `line` role gets): every list cut to pcb-a
LINE_CASES = {
    "Inspect unknown": (
        lambda c: c.inspection.Inspect(pb.InspectRequest(model="pcb-zzz", text="x"), metadata=key("line")),
        grpc.StatusCode.NOT_FOUND,
        "model 'pcb-zzz' is not loaded; loaded: pcb-a",
    ),
    "Inspect empty": (
        lambda c: c.inspection.Inspect(pb.InspectRequest(text="x"), metadata=key("line")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model: empty; expected one of the loaded models: pcb-a",
    ),
    "UnloadModel unknown": (
        lambda c: c.inspection.UnloadModel(pb.UnloadModelRequest(name="pcb-zzz"), metadata=key("line")),
        grpc.StatusCode.NOT_FOUND,
        "model 'pcb-zzz' is not loaded; loaded: pcb-a",
    ),
    "LoadModel empty": (
        lambda c: c.inspection.LoadModel(pb.LoadModelRequest(), metadata=key("line")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "name: empty; expected one of pcb-a",
    ),
    "ModelInfer unknown": (
        lambda c: c.kserve.ModelInfer(kpb.ModelInferRequest(model_name="pcb-zzz"), metadata=key("line")),
        grpc.StatusCode.NOT_FOUND,
        "model 'pcb-zzz' is not loaded; loaded: pcb-a",
    ),
    "RepositoryModelLoad empty": (
        lambda c: c.kserve.RepositoryModelLoad(kpb.RepositoryModelLoadRequest(), metadata=key("line")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model_name: empty; expected one of pcb-a",
    ),
}


@pytest.mark.parametrize("case", LINE_CASES.values(), ids=LINE_CASES.keys())
def test_error_messages_list_only_the_models_of_the_callers_role(secured, case):
    _, channel = secured
    call, code, message = case
    assert status_of(lambda: call(channel)) == (code, message)


def test_repository_errors_list_only_the_callers_models_and_admin_sees_all(secured):
    _, channel = secured
    code, details = status_of(
        lambda: channel.inspection.GetModel(pb.GetModelRequest(name="pcb-zzz"), metadata=key("line"))
    )
    assert code == grpc.StatusCode.NOT_FOUND and details.endswith("; available: pcb-a") and "tiny" not in details
    code, details = status_of(lambda: channel.inspection.GetModel(pb.GetModelRequest(name="x"), metadata=key("admin")))
    assert code == grpc.StatusCode.NOT_FOUND and details.endswith("; available: pcb-a, tiny")
    code, details = status_of(lambda: channel.inspection.Inspect(pb.InspectRequest(text="x"), metadata=key("admin")))
    assert details == "model: empty; expected one of the loaded models: pcb-a, tiny"


def test_per_model_health_is_not_published_with_auth(secured):
    server, _ = secured
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:  # anonymous, as health allows
        health = health_pb2_grpc.HealthStub(channel)

        def check(service: str):
            return status_of(lambda: health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10))

        assert check("") == check(SERVICE_NAME) == (grpc.StatusCode.OK, "")
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
        # a loaded model answers exactly like a name that does not exist: nothing to enumerate
        assert check("pcb-a") == check("tiny") == check("no-such-model")
        assert check("tiny")[0] == grpc.StatusCode.NOT_FOUND
