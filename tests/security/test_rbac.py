"""RBAC on a real loopback server: every role allowed and denied per RPC and model, listings, reload, audit."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import threading
import time

import grpc
import pytest
import yaml
from tritonclient.grpc import service_pb2 as kpb

from mmfusion.client import InspectionClient, ServerError
from mmfusion.proto import inspection_pb2 as pb
from mmfusion.security.rbac import DEFAULT_POLICY, PermissionDenied, Policy, PolicyStore
from mmfusion.serving import build_server, serve
from mmfusion.types import InputError
from tests.security.conftest import API_KEYS, POLICY, Channel, api_key, auth_config, bearer, status_of
from tests.serving.test_server import free_port

ALLOWED, DENIED = "allowed", "denied"
MODELS = ("pcb-a", "tiny")


def _frames(model: str):
    yield pb.Frame(stream_id="cam", sequence_number=0, model=model, text="a frame note")


def _chunks(model: str):
    yield pb.AudioChunk(model=model, data=b"not audio at all")


def _call(model: str):
    yield pb.CallRequest(config=pb.CallConfig(model=model, encoding=pb.AUDIO_ENCODING_PCM16, sample_rate=16000))


# RPC -> a call of it on `model` with `metadata`; each is cheap whatever the outcome behind the gate.
CALLS = {
    "Inspect": lambda c, md, m: c.inspection.Inspect(pb.InspectRequest(model=m, text="a note"), metadata=md),
    "StreamInspect": lambda c, md, m: list(c.inspection.StreamInspect(_frames(m), metadata=md)),
    "AnalyzeAudio": lambda c, md, m: c.inspection.AnalyzeAudio(_chunks(m), metadata=md),
    "StreamCall": lambda c, md, m: list(c.inspection.StreamCall(_call(m), metadata=md)),
    "GenerateReport": lambda c, md, m: list(c.inspection.GenerateReport(pb.ReportRequest(model=m), metadata=md)),
    "ListModels": lambda c, md, m: c.inspection.ListModels(pb.ListModelsRequest(), metadata=md),
    "GetModel": lambda c, md, m: c.inspection.GetModel(pb.GetModelRequest(name=m), metadata=md),
    "LoadModel": lambda c, md, m: c.inspection.LoadModel(pb.LoadModelRequest(name=m), metadata=md),
    "UnloadModel": lambda c, md, m: c.inspection.UnloadModel(pb.UnloadModelRequest(name=f"{m}-absent"), metadata=md),
    "ModelInfer": lambda c, md, m: c.kserve.ModelInfer(kpb.ModelInferRequest(model_name=m), metadata=md),
    "ModelMetadata": lambda c, md, m: c.kserve.ModelMetadata(kpb.ModelMetadataRequest(name=m), metadata=md),
    "ModelReady": lambda c, md, m: c.kserve.ModelReady(kpb.ModelReadyRequest(name=m), metadata=md),
    "RepositoryModelLoad": lambda c, md, m: c.kserve.RepositoryModelLoad(
        kpb.RepositoryModelLoadRequest(model_name=m), metadata=md
    ),
    "RepositoryIndex": lambda c, md, m: c.kserve.RepositoryIndex(kpb.RepositoryIndexRequest(), metadata=md),
    "ServerMetadata": lambda c, md, m: c.kserve.ServerMetadata(kpb.ServerMetadataRequest(), metadata=md),
}
MODEL_FREE = {"ListModels", "RepositoryIndex", "ServerMetadata"}
# (role, rpc) -> the models the role may use it on (the policy in conftest.POLICY); absent: none.
EXPECTED = {
    **{("operator", rpc): {"pcb-a"} for rpc in ("Inspect", "StreamInspect", "ListModels", "GetModel")},
    **{
        ("analyst", rpc): set(MODELS)
        for rpc in ("AnalyzeAudio", "StreamCall", "GenerateReport", "ListModels", "GetModel")
    },
    **{("admin", rpc): set(MODELS) for rpc in CALLS},
}
CASES = [
    (role, rpc, model) for role in ("operator", "analyst", "admin", "stranger") for rpc in CALLS for model in MODELS
]


@pytest.fixture(scope="module")
def secured(security_models, security_files, tmp_path_factory):
    audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    server = build_server(
        ["tiny", "pcb-a"],
        model_root=security_models,
        auth=auth_config(security_files),
        policy_path=security_files["policy"],
        audit_path=audit,
    )
    with server:
        channel = Channel(server.port)
        yield server, channel, audit
        channel.close()


def _metadata(role: str):
    return bearer("ghost") if role == "stranger" else api_key(role)


@pytest.mark.parametrize(("role", "rpc", "model"), CASES, ids=[f"{r}-{c}-{m}" for r, c, m in CASES])
def test_each_role_is_allowed_or_denied_per_rpc_and_model(secured, role, rpc, model):
    _, channel, _ = secured
    code, details = status_of(lambda: CALLS[rpc](channel, _metadata(role), model))
    allowed = (model in EXPECTED.get((role, rpc), set())) or (rpc in MODEL_FREE and (role, rpc) in EXPECTED)
    if allowed:
        assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), details
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED
        if role == "stranger":
            assert details == "role 'ghost' is not in the access policy"
        elif (role, rpc) not in EXPECTED:
            assert details == f"role '{role}' may not call {rpc}"
        else:
            assert details == f"role '{role}' may not use model '{model}'"


def test_health_needs_no_credentials_and_reflection_any_role(secured):
    server, _, _ = secured
    with InspectionClient(f"127.0.0.1:{server.port}", timeout=10) as anonymous:
        assert anonymous.health() == "SERVING"
        with pytest.raises(ServerError) as unknown:  # per-model health is not published with auth (test_disclosure)
            anonymous.health("pcb-a")
        assert unknown.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(ServerError) as refused:
            anonymous.list_models()
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answer = next(iter(stub.ServerReflectionInfo(iter([request]), metadata=api_key("operator"))))
    assert "mmfusion.v1.Inspection" in {service.name for service in answer.list_services_response.service}
    channel.close()


def test_listings_show_only_the_models_a_role_may_use(secured):
    server, channel, _ = secured
    with InspectionClient(f"127.0.0.1:{server.port}", api_key=API_KEYS["operator"]) as operator:
        assert [model.name for model in operator.list_models()] == ["pcb-a"]
    with InspectionClient(f"127.0.0.1:{server.port}", token=bearer("analyst")[0][1].split()[1]) as analyst:
        assert [model.name for model in analyst.list_models()] == ["pcb-a", "tiny"]
    index = channel.kserve.RepositoryIndex(kpb.RepositoryIndexRequest(), metadata=api_key("admin"))
    assert {model.name for model in index.models} >= {"pcb-a", "tiny"}


def test_a_later_frame_naming_a_forbidden_model_ends_the_stream(secured):
    _, channel, _ = secured

    def frames():
        yield pb.Frame(stream_id="cam-1", sequence_number=0, model="pcb-a", text="allowed")
        yield pb.Frame(stream_id="cam-2", sequence_number=0, model="tiny", text="forbidden")

    code, details = status_of(lambda: list(channel.inspection.StreamInspect(frames(), metadata=api_key("operator"))))
    assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, "role 'operator' may not use model 'tiny'")


def _events(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_call_is_audited_with_caller_model_digest_and_status(secured):
    _, channel, audit = secured
    request = pb.InspectRequest(model="pcb-a", text="audited call")
    reply, call = channel.inspection.Inspect.with_call(
        request, metadata=api_key("operator") + (("x-request-id", "req-42"),)
    )
    assert dict(call.initial_metadata())["x-request-id"] == "req-42"
    status_of(
        lambda: channel.inspection.Inspect(pb.InspectRequest(model="tiny", text="x"), metadata=api_key("operator"))
    )
    events = _events(audit)
    ok = next(event for event in events if event.get("request_id") == "req-42")
    assert ok["kind"] == "call" and ok["caller"] == "operator-key" and ok["role"] == "operator"
    assert ok["rpc"] == "/mmfusion.v1.Inspection/Inspect" and ok["model"] == "pcb-a" and ok["status"] == "OK"
    assert ok["input_sha256"] == hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
    assert ok["result"] == f"verdict={reply.verdict or '-'} score={reply.verdict_score:.3f}" and ok["latency_ms"] > 0
    denied = [e for e in events if e.get("model") == "tiny" and e.get("status") == "PERMISSION_DENIED"]
    assert denied and denied[-1]["caller"] == "operator-key"
    starts = [(e["action"], e["model"], e["caller"]) for e in events if e["kind"] == "config"]
    assert ("load", "tiny", "server") in starts and ("load", "pcb-a", "server") in starts


def test_load_and_unload_by_rpc_are_config_events_naming_the_caller(security_models, security_files, tmp_path):
    audit = tmp_path / "audit.jsonl"
    with build_server([], model_root=security_models, auth=auth_config(security_files), audit_path=audit) as server:
        with InspectionClient(f"127.0.0.1:{server.port}", api_key=API_KEYS["admin"]) as admin:
            admin.load_model("tiny")
            admin.unload_model("tiny")
    config = [(e["action"], e["model"], e["caller"], e["role"]) for e in _events(audit) if e["kind"] == "config"]
    assert config == [("load", "tiny", "admin-key", "admin"), ("unload", "tiny", "admin-key", "admin")]
    calls = [(e["rpc"].rsplit("/", 1)[1], e["status"], e["result"]) for e in _events(audit) if e["kind"] == "call"]
    assert calls == [
        ("LoadModel", "OK", "tiny MODEL_STATE_LOADED"),
        ("UnloadModel", "OK", "tiny MODEL_STATE_AVAILABLE"),
    ]
    from mmfusion.security.audit import verify

    assert verify([audit]).ok


def test_policy_rpc_patterns_match_short_and_full_names():
    policy = Policy.from_document(
        {"roles": {"viewer": {"rpcs": ["List*", "inference.GRPCInferenceService/Model*"], "models": ["a-?"]}}}
    )
    policy.check_rpc("viewer", "/mmfusion.v1.Inspection/ListModels")
    policy.check_rpc("viewer", "/inference.GRPCInferenceService/ModelInfer")
    policy.check_rpc("viewer", "/grpc.health.v1.Health/Check")  # always allowed
    with pytest.raises(PermissionDenied, match="may not call Inspect"):
        policy.check_rpc("viewer", "/mmfusion.v1.Inspection/Inspect")
    policy.check_model("viewer", "a-1")
    with pytest.raises(PermissionDenied, match="may not use model 'a-12'"):
        policy.check_model("viewer", "a-12")
    assert set(Policy.from_document(DEFAULT_POLICY).roles) == {"operator", "analyst", "admin"}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"role": {}}, "expected a mapping with only 'roles"),
        ({"roles": {"x": {"rpcs": "Inspect"}}}, "roles.x.rpcs: 'Inspect'; expected a list of non-empty strings"),
        ({"roles": {"x": {"models": ["*"]}}}, "roles.x: {'models': ['*']}; expected keys rpcs (required)"),
        ({"roles": {"x": {"rpcs": ["*"], "hosts": []}}}, "roles.x:"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_key(document, message):
    with pytest.raises(InputError, match=re.escape(message)):
        Policy.from_document(document)


def test_reload_swaps_the_policy_and_a_broken_file_keeps_the_old_one(tmp_path, caplog):
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    store = PolicyStore(path)
    before = store.policy
    path.write_text("roles: [not, a, mapping")
    assert store.reload() is False and store.policy is before
    assert "access policy not reloaded, keeping the previous one" in caplog.text
    path.write_text(yaml.safe_dump({"roles": {"operator": {"rpcs": ["*"], "models": ["*"]}}}))
    assert store.reload() is True and set(store.policy.roles) == {"operator"}


def test_sighup_reloads_the_policy_of_a_running_serve(security_models, security_files, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mmfusion.serving.server")
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    port = free_port()
    seen = []

    def call_reload_call():
        try:
            with InspectionClient(f"127.0.0.1:{port}", timeout=20, api_key=API_KEYS["operator"]) as operator:
                operator.wait_ready(20)
                get = lambda: status_of(lambda: operator.stub.GetModel(pb.GetModelRequest(name="tiny")))[0]  # noqa: E731
                seen.append(get())
                policy.write_text(yaml.safe_dump({"roles": {"operator": {"rpcs": ["GetModel"], "models": ["*"]}}}))
                os.kill(os.getpid(), signal.SIGHUP)
                deadline = time.monotonic() + 10
                while get() != grpc.StatusCode.OK and time.monotonic() < deadline:
                    time.sleep(0.05)
                seen.append(get())
                policy.write_text("roles: {operator: {rpcs: [broken")  # a broken file: the last good one stays
                os.kill(os.getpid(), signal.SIGHUP)
                time.sleep(1.0)
                seen.append(get())
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    handler_before = signal.getsignal(signal.SIGHUP)
    caller = threading.Thread(target=call_reload_call)
    caller.start()
    assert (
        serve([], port, model_root=security_models, grace=1.0, auth=auth_config(security_files), policy_path=policy)
        == 0
    )
    caller.join(20)
    assert seen == [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK, grpc.StatusCode.OK]
    reports = [record.getMessage() for record in caplog.records if record.name == "mmfusion.serving.server"]
    assert "reloaded keys and access policy" in reports
    assert "kept the previous keys and access policy" in reports
    assert signal.getsignal(signal.SIGHUP) == handler_before
