"""Fuzzing a running server with auth on: 10,000 malformed requests and metadata, then it still serves.

Requests carry a marker string in their bodies (text, image, audio and tensor bytes, never in
metadata or model names, which are logged as identifiers); with an audit cipher configured no file
the server wrote may contain it in plain text, and the audit chain must verify.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as kpb

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.security.auth import GENERIC_MESSAGE, AuthConfig, JwtConfig, hash_api_key
from mmfusion.security.limits import RateLimit
from mmfusion.serving import build_server
from tests.security.conftest import (
    AUDIENCE,
    ISSUER,
    JWT_SECRET,
    POLICY,
    ROOMY_FAILURES,
    Channel,
    named_tiny_model,
    token,
)

MARKER = "SECRET-MARKER-3b9f1c"
OPERATOR_KEY = "mmk_fuzz-operator_key-0123456789"  # names its id: random keys cost no scrypt
BATCH = 25
EXAMPLES = 400  # x BATCH = 10,000 requests
EXPECTED_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
RAW_BYTES_CODE = grpc.StatusCode.INTERNAL  # grpc's own answer to bytes that do not parse as the request message

printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
model_names = st.one_of(st.sampled_from(["pcb-a", "tiny", "", "pcb-*", "../pcb-a"]), st.text(max_size=30))
# never "pcb-a": an unload of the served model would be a legitimate call, not a malformed one
unload_names = st.text(max_size=30).filter(lambda name: name != "pcb-a")
roles = st.one_of(st.sampled_from(["operator", "analyst", "ghost", ""]), printable).filter(lambda role: role != "admin")


@st.composite
def signed_tokens(draw) -> str:
    """Tokens signed with the right secret but random claims (never an admin role)."""
    claims = {
        "aud": draw(st.sampled_from([AUDIENCE, "other", None])),
        "iss": draw(st.sampled_from([ISSUER, "other", None])),
        "exp": draw(st.sampled_from([time.time() + 600, time.time() - 5, None])),
        "nbf": draw(st.sampled_from([None, time.time() + 600])),
        "sub": draw(st.one_of(st.none(), printable)),
    }
    return token(role=draw(roles), claims=claims)


credentials = st.one_of(
    st.just(()),
    printable.map(lambda value: (("authorization", value),)),
    printable.map(lambda value: (("authorization", f"Bearer {value}"),)),
    printable.map(lambda value: (("authorization", f"ApiKey {value}"),)),
    printable.map(lambda value: (("x-api-key", value),)),
    signed_tokens().map(lambda value: (("authorization", f"Bearer {value}"),)),
    st.just((("authorization", f"ApiKey {OPERATOR_KEY}"),)),
    st.just((("x-api-key", OPERATOR_KEY),)),
    st.builds(lambda: (("authorization", f"Bearer {token('analyst')}"),)),
)
extra_metadata = st.lists(
    st.one_of(
        st.tuples(
            st.from_regex(r"x-[a-z0-9-]{1,12}", fullmatch=True).filter(lambda k: not k.endswith("-bin")), printable
        ),
        st.tuples(st.sampled_from(["x-request-id", "x-fuzz"]), printable),
        st.tuples(st.just("x-blob-bin"), st.binary(max_size=40)),
    ),
    max_size=3,
)
# Image bytes never decode: at least 49 random bytes, and RAW sizes of at most 4x4 pixels need fewer.
junk_images = st.builds(
    pb.Image,
    data=st.binary(min_size=49, max_size=200).map(lambda data: data + MARKER.encode()),
    encoding=st.sampled_from([0, 1, 2, 3, 4, 99]),
    width=st.integers(0, 4),
    height=st.integers(0, 4),
)
marked_text = printable.map(lambda text: f"{text} {MARKER}")
inspect_requests = st.builds(
    pb.InspectRequest,
    model=model_names,
    version=st.one_of(st.just(""), printable),
    image=junk_images,
    frames=st.lists(junk_images, max_size=2),
    text=marked_text,
    audio=st.one_of(st.none(), st.builds(pb.Audio, data=st.binary(max_size=60), encoding=st.integers(0, 5))),
    include_heatmap=st.booleans(),
    include_embedding=st.booleans(),
)
unary_calls = st.one_of(
    inspect_requests.map(lambda r: ("inspection", "Inspect", r)),
    model_names.map(lambda m: ("inspection", "GetModel", pb.GetModelRequest(name=m))),
    model_names.map(lambda m: ("inspection", "LoadModel", pb.LoadModelRequest(name=m, backend="torch"))),
    unload_names.map(lambda m: ("inspection", "UnloadModel", pb.UnloadModelRequest(name=m))),
    st.booleans().map(lambda b: ("inspection", "ListModels", pb.ListModelsRequest(include_available=b))),
    st.builds(
        lambda m, raw: ("kserve", "ModelInfer", kpb.ModelInferRequest(model_name=m, raw_input_contents=[raw])),
        model_names,
        st.binary(max_size=64).map(lambda data: MARKER.encode() + data),
    ),
    model_names.map(lambda m: ("kserve", "ModelMetadata", kpb.ModelMetadataRequest(name=m))),
    st.binary(max_size=80).map(lambda data: ("raw", "/mmfusion.v1.Inspection/Inspect", data + MARKER.encode())),
    printable.map(lambda name: ("raw", f"/mmfusion.v1.Inspection/{name or 'X'}", MARKER.encode())),
)
frame_streams = st.lists(
    st.builds(
        pb.Frame,
        stream_id=st.sampled_from(["cam", "", "other"]),
        sequence_number=st.integers(0, 3),
        model=model_names,
        image=junk_images,
        text=marked_text,
    ),
    max_size=3,
)
audio_streams = st.lists(
    st.builds(
        pb.AudioChunk,
        model=model_names,
        encoding=st.integers(0, 3),
        sample_rate=st.integers(0, 20000),
        data=st.binary(max_size=80).map(lambda data: MARKER.encode() + data),
        text=marked_text,
    ),
    max_size=3,
)
calls = st.one_of(
    unary_calls,
    unary_calls,
    unary_calls,
    frame_streams.map(lambda frames: ("stream", "StreamInspect", frames)),
    audio_streams.map(lambda chunks: ("stream", "AnalyzeAudio", chunks)),
)
requests = st.tuples(calls, credentials, extra_metadata)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    from mmfusion.security.crypto import FieldCipher, KeyStore

    folder = tmp_path_factory.mktemp("fuzz")
    models = folder / "models"
    named_tiny_model(models / "pcb-a")
    keys = folder / "keys.yaml"
    keys.write_text(
        yaml.safe_dump({"keys": [{"id": "fuzz-operator", "role": "operator", "hash": hash_api_key(OPERATOR_KEY)}]})
    )
    keys.chmod(0o600)
    policy = folder / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    written = folder / "server"
    auth = AuthConfig(keys, JwtConfig(JWT_SECRET, audience=AUDIENCE, issuer=ISSUER), failure_limit=ROOMY_FAILURES)
    cipher = FieldCipher(KeyStore.generate())
    server = build_server(
        ["pcb-a"],
        model_root=models,
        auth=auth,
        policy_path=policy,
        audit_path=written / "audit.jsonl",
        audit_cipher=cipher,
        audit_fsync="never",
        rate_limit=RateLimit(rate=5000, burst=5000, max_streams=64),
    ).start()
    return server, written, cipher


def _outcome(future) -> tuple[grpc.StatusCode, str]:
    error = future.exception()
    return (grpc.StatusCode.OK, "") if error is None else (error.code(), error.details())


def _stream_outcome(channel: Channel, method: str, messages, metadata) -> tuple[grpc.StatusCode, str]:
    try:
        if method == "StreamInspect":
            list(channel.inspection.StreamInspect(iter(messages), metadata=metadata, timeout=20))
        else:
            channel.inspection.AnalyzeAudio(iter(messages), metadata=metadata, timeout=20)
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def test_ten_thousand_malformed_requests_then_valid_ones_still_succeed(fuzzed):
    server, written, cipher = fuzzed
    channel = Channel(server.port)
    raw = {}
    sent, unaudited, codes = [0], [0], {}
    pool = ThreadPoolExecutor(4)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(requests, min_size=BATCH, max_size=BATCH))
    def fuzz(batch):
        pending = []
        for (kind, method, message), credential, extra in batch:
            metadata = tuple(credential) + tuple(extra)
            if kind == "raw":
                call = raw.setdefault(method, channel.channel.unary_unary(method))
                pending.append((kind, call.future(message, metadata=metadata, timeout=20)))
            elif kind == "stream":
                pending.append((kind, pool.submit(_stream_outcome, channel, method, message, metadata)))
            else:
                stub = channel.inspection if kind == "inspection" else channel.kserve
                pending.append((kind, getattr(stub, method).future(message, metadata=metadata, timeout=20)))
        for kind, future in pending:
            code, details = future.result() if kind == "stream" else _outcome(future)
            sent[0] += 1
            unaudited[0] += kind == "raw"  # unparsable bytes and unknown methods never reach a handler
            codes[code] = codes.get(code, 0) + 1
            allowed = EXPECTED_CODES | ({RAW_BYTES_CODE} if kind == "raw" else set())
            assert code in allowed, (kind, code, details)
            if code == grpc.StatusCode.UNAUTHENTICATED:
                assert details == GENERIC_MESSAGE

    started = time.monotonic()
    fuzz()
    elapsed = time.monotonic() - started
    assert sent[0] >= 10_000
    assert {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    } <= set(codes), codes
    print(f"fuzz: {sent[0]} requests in {elapsed:.1f} s: { ({code.name: n for code, n in codes.items()}) }")

    operator = (("authorization", f"ApiKey {OPERATOR_KEY}"),)
    result = channel.inspection.Inspect(pb.InspectRequest(model="pcb-a", text="a valid note"), metadata=operator)
    assert result.model == "pcb-a" and result.verdict in {"red", "blue"}
    listed = channel.inspection.ListModels(pb.ListModelsRequest(), metadata=operator)
    assert [model.name for model in listed.models] == ["pcb-a"]
    channel.close()
    pool.shutdown()
    server.stop(grace=1.0)

    from mmfusion.security.audit import decrypt_record, rotated_paths, verify

    paths = rotated_paths(written / "audit.jsonl")
    report = verify(paths, keystore=cipher.keystore)  # the chain is keyed by the cipher's key store
    assert report.ok, report.problem
    assert report.records >= sent[0] - unaudited[0]
    files = [path for path in written.rglob("*") if path.is_file()]
    assert files and all(MARKER.encode() not in path.read_bytes() for path in files)
    import json

    last_call = next(
        json.loads(line) for line in reversed((written / "audit.jsonl").read_text().splitlines()) if '"call"' in line
    )
    assert set(last_call["result"]) == {"enc"} and decrypt_record(last_call, cipher)["result"] == "models=1"
