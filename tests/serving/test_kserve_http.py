"""KServe v2 over HTTP/REST on a second port, exercised with tritonclient.http and plain curl."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
import yaml
from tritonclient.utils import InferenceServerException

from mmfusion import __version__
from mmfusion.security.auth import GENERIC_MESSAGE, AuthConfig
from mmfusion.security.limits import FailureLimit
from mmfusion.security.tls import TlsFiles, find_nginx, make_dev_certificates
from mmfusion.serving import build_server, serve
from mmfusion.serving.kserve_json import infer_request
from mmfusion.types import InputError, Modality
from tests.security.conftest import API_KEYS, POLICY, write_keys
from tests.serving.test_kserve import png, predicted_scores, preprocess
from tests.serving.test_server import WAIT_S, free_port, tiny_audio_model
from tests.test_pipeline import BLUE, RED, tiny_model

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    tiny_model(root / "tiny")
    tiny_audio_model(root / "tiny-audio")
    return root


@pytest.fixture(scope="module")
def server(model_root):
    with build_server(["tiny"], port=0, model_root=model_root, http_port=0) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    connected = triton.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    yield connected
    connected.close()


def url(server, path: str) -> str:
    return f"http://127.0.0.1:{server.http_port}{path}"


def curl(*arguments: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one curl call."""
    ran = subprocess.run(
        [CURL, "-s", "-S", "-D", "-", "--max-time", "30", *arguments], capture_output=True, timeout=60, check=True
    )
    head, _, body = ran.stdout.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def pixels(server, images: list[np.ndarray]) -> np.ndarray:
    return preprocess(server, Modality.IMAGE, images)["pixels"]


def infer_input(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def test_health_and_metadata_with_tritonclient_and_curl(client, server):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("tiny", "7") and not client.is_model_ready("nope")
    metadata = client.get_server_metadata()
    assert (metadata["name"], metadata["version"]) == ("mmfusion", __version__)
    assert {"binary_tensor_data", "statistics", "model_repository"} <= set(metadata["extensions"])
    grpc_client = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        grpc_metadata = grpc_client.get_model_metadata("tiny", as_json=True)
    finally:
        grpc_client.close()
    http_metadata = client.get_model_metadata("tiny")
    assert http_metadata["inputs"] == [{**t, "shape": [int(d) for d in t["shape"]]} for t in grpc_metadata["inputs"]]
    assert [o["name"] for o in http_metadata["outputs"]] == [o["name"] for o in grpc_metadata["outputs"]]
    config = client.get_model_config("tiny")
    assert {i["name"]: i["data_type"] for i in config["input"]}["image"] == "TYPE_STRING"
    if CURL is None:
        return
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/tiny/ready", "/v2/models/tiny/versions/1/ready"):
        assert curl(url(server, path))[0] == 200, path
    status, headers, body = curl(url(server, "/v2/models/tiny"))
    assert status == 200 and headers["content-type"].startswith("application/json") and headers["x-request-id"]
    assert json.loads(body) == http_metadata
    status, _, body = curl(url(server, "/v2/models/tiny/versions/7/ready"))
    assert (status, json.loads(body)) == (503, {"error": "model 'tiny' version '7' is not ready"})


def test_infer_json_and_binary_equal_pipeline_predict(client, server):
    images = [RED + 5, BLUE + 5]
    expected = np.stack([predicted_scores(server, image=image) for image in images])
    array = pixels(server, images)
    binary = client.infer("tiny", [infer_input("image.pixels", array, "FP32")], request_id="bin-1")
    assert binary.get_response()["id"] == "bin-1"
    np.testing.assert_allclose(binary.as_numpy("colour.probabilities"), expected, atol=1e-5)
    assert binary.as_numpy("embedding.embedding").shape == (2, 1280)
    as_json = client.infer(
        "tiny",
        [infer_input("image.pixels", array, "FP32", binary=False)],
        outputs=[triton.InferRequestedOutput("colour.probabilities", binary_data=False)],
    )
    (output,) = as_json.get_response()["outputs"]
    assert output["name"] == "colour.probabilities" and "data" in output and "parameters" not in output
    np.testing.assert_allclose(as_json.as_numpy("colour.probabilities"), expected, atol=1e-5)
    texts = ["a red part", "a blue part"]
    raw = client.infer(
        "tiny",
        [
            infer_input("image", np.array([png(image) for image in images], dtype=object), "BYTES"),
            infer_input("text", np.array([t.encode() for t in texts], dtype=object), "BYTES", binary=False),
        ],
        request_compression_algorithm="gzip",
        response_compression_algorithm="deflate",
    )
    expected = np.stack([predicted_scores(server, image=png(i), text=t) for i, t in zip(images, texts)])
    np.testing.assert_allclose(raw.as_numpy("colour.probabilities"), expected, atol=1e-5)


@needs_curl
def test_curl_infers_json_and_binary_tensors(server, tmp_path):
    request = {
        "id": "curl-1",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a red part"]}],
        "outputs": [{"name": "colour.probabilities"}],
    }
    status, headers, body = curl(
        "-X", "POST", url(server, "/v2/models/tiny/infer"), "--data-binary", json.dumps(request)
    )
    assert status == 200 and headers["content-type"].startswith("application/json")
    answer = json.loads(body)
    assert (answer["id"], answer["model_name"], answer["model_version"]) == ("curl-1", "tiny", "1")
    (output,) = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("colour.probabilities", "FP32", [1, 2])
    np.testing.assert_allclose(output["data"], predicted_scores(server, text="a red part"), atol=1e-5)
    # the binary tensor data extension: JSON header, then the raw little-endian tensor; binary output back
    array = pixels(server, [BLUE + 5])
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image.pixels",
                    "datatype": "FP32",
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": array.nbytes},
                }
            ],
            "outputs": [{"name": "colour.probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    (tmp_path / "body").write_bytes(header + array.astype("<f4").tobytes())
    status, headers, body = curl(
        "-X",
        "POST",
        url(server, "/v2/models/tiny/versions/1/infer"),
        "-H",
        f"Inference-Header-Content-Length: {len(header)}",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        f"@{tmp_path / 'body'}",
    )
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    length = int(headers["inference-header-content-length"])
    answer = json.loads(body[:length])
    (output,) = answer["outputs"]
    assert output["parameters"] == {"binary_data_size": 8} and len(body) == length + 8
    scores = np.frombuffer(body[length:], "<f4").reshape(output["shape"])
    np.testing.assert_allclose(scores[0], predicted_scores(server, image=BLUE + 5), atol=1e-5)


def test_statistics_over_http_match_grpc(client, server):
    client.infer("tiny", [infer_input("image.pixels", pixels(server, [RED]), "FP32")])
    (stats,) = client.get_inference_statistics("tiny")["model_stats"]
    assert stats["name"] == "tiny" and stats["inference_count"] >= 1 and stats["execution_count"] >= 1
    assert stats["inference_stats"]["success"]["count"] >= 1 and stats["inference_stats"]["success"]["ns"] > 0
    assert isinstance(stats["inference_stats"]["queue"]["ns"], int)  # numbers, not strings as in proto3 JSON
    grpc_client = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        (same,) = grpc_client.get_inference_statistics("tiny", as_json=True)["model_stats"]
    finally:
        grpc_client.close()
    assert int(same["inference_count"]) == stats["inference_count"]
    assert int(same["inference_stats"]["success"]["count"]) == stats["inference_stats"]["success"]["count"]
    assert [m["name"] for m in client.get_inference_statistics()["model_stats"]] == ["tiny"]


def test_repository_over_http(client, server):
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["tiny"]["state"] == "READY" and index["tiny-audio"]["state"] == "UNAVAILABLE"
    client.load_model("tiny-audio")
    try:
        assert client.is_model_ready("tiny-audio", "2")
        assert {t["name"] for t in client.get_model_metadata("tiny-audio")["inputs"]} >= {"audio.mel"}
    finally:
        client.unload_model("tiny-audio")
    assert not client.is_model_ready("tiny-audio")
    with pytest.raises(InferenceServerException, match="parameters 'config': not supported") as error:
        client.load_model("tiny", config='{"max_batch_size": 8}')
    assert error.value.status() == "400"


BAD_REQUESTS = [
    ("nope", {"inputs": []}, 404, "model 'nope' is not loaded; loaded: tiny"),
    (
        "tiny",
        {"inputs": [{"name": "image.pixels", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0] * 3072}]},
        400,
        r"input 'image\.pixels': shape \[1, 3, 32, 32\]; expected \[-1, 3, 64, 64\]",
    ),
    (
        "tiny",
        {"inputs": [{"name": "image.pixels", "datatype": "FP32", "shape": [1, 3, 64, 64], "data": [0.5]}]},
        400,
        r"input 'image\.pixels'\.data: 1 values; its shape needs 12288",
    ),
    (
        "tiny",
        {"inputs": [{"name": "text.input_ids", "datatype": "INT64", "shape": [1, 2], "data": [1.5, 2]}]},
        400,
        r"input 'text\.input_ids'\.data: expected whole numbers for INT64",
    ),
    (
        "tiny",
        {"inputs": [{"name": "image.pixelz", "datatype": "FP32", "shape": [1], "data": [0.5]}]},
        400,
        r"input 'image\.pixelz': unknown; expected image\.pixels",
    ),
    (
        "tiny",
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}], "outputs": [{"name": "nah"}]},
        400,
        r"output 'nah': unknown; model 'tiny' outputs colour\.probabilities",
    ),
    ("tiny", {"input": []}, 400, "request: unknown key 'input'; expected some of id, parameters, inputs, outputs"),
    ("tiny", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}]}, 400, r"input 'text': no data"),
    ("tiny", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": "1", "data": ["x"]}]}, 400, r"'text'\.shape"),
]


def test_tritonclient_sees_http_status_and_message(client):
    with pytest.raises(InferenceServerException, match="model 'nope' is not loaded") as error:
        client.infer("nope", [infer_input("image.pixels", np.zeros((1, 3, 64, 64), np.float32), "FP32")])
    assert error.value.status() == "404"
    with pytest.raises(InferenceServerException, match=r"input 'image\.pixels': datatype FP64; expected FP32") as error:
        client.infer("tiny", [infer_input("image.pixels", np.zeros((1, 3, 64, 64), np.float64), "FP64")])
    assert error.value.status() == "400"


@pytest.mark.parametrize(("model", "request_body", "status", "message"), BAD_REQUESTS)
@needs_curl
def test_bad_requests_with_curl(server, model, request_body, status, message):
    got, headers, body = curl("-X", "POST", url(server, f"/v2/models/{model}/infer"), "-d", json.dumps(request_body))
    assert got == status and headers["content-type"].startswith("application/json")
    answer = json.loads(body)
    assert set(answer) == {"error"}
    assert re.search(message, answer["error"]), answer["error"]
    assert curl(url(server, "/v2/health/ready"))[0] == 200  # the server keeps serving


@needs_curl
def test_unknown_endpoints_bodies_and_methods(server):
    status, _, body = curl(url(server, "/v2/nothing"))
    assert (status, json.loads(body)) == (404, {"error": "/v2/nothing: no such KServe v2 endpoint"})
    status, _, body = curl("-X", "DELETE", url(server, "/v2/models/tiny/infer"))
    assert status == 405 and "method not allowed" in json.loads(body)["error"]
    status, _, body = curl("-X", "POST", url(server, "/v2/models/tiny/infer"), "-d", "{not json")
    assert status == 400 and json.loads(body)["error"].startswith("request body: not JSON")
    status, _, body = curl(
        "-X", "POST", url(server, "/v2/models/tiny/infer"), "-H", "Inference-Header-Content-Length: 999", "-d", "{}"
    )
    assert status == 400 and "Inference-Header-Content-Length: 999" in json.loads(body)["error"]
    status, _, body = curl("-X", "POST", url(server, "/v2/models/tiny/infer"), "-H", "Content-Encoding: br", "-d", "{}")
    assert status == 415 and "Content-Encoding br" in json.loads(body)["error"]


def test_request_parsing_unit():
    header = json.dumps({"inputs": [{"name": "a", "datatype": "INT8", "shape": [2], "data": [1, 300]}]}).encode()
    with pytest.raises(InputError, match=r"input 'a'\.data: values out of the INT8 range"):
        infer_request(header, None, "m", "")
    bools = json.dumps({"inputs": [{"name": "b", "datatype": "BOOL", "shape": [1, 2], "data": [[True, False]]}]})
    message, choice, timeout = infer_request(bools.encode(), None, "m", "")
    assert message.raw_input_contents[0] == b"\x01\x00" and not choice.is_binary("x") and timeout is None
    strings = {
        "parameters": {"binary_data_output": True, "timeout": 2_000_000},
        "inputs": [{"name": "t", "datatype": "BYTES", "shape": [2], "data": ["ab", "c"]}],
    }
    message, choice, timeout = infer_request(json.dumps(strings).encode(), None, "m", "3")
    assert message.raw_input_contents[0] == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"
    assert message.model_version == "3" and choice.is_binary("x") and timeout == 2.0
    extra = json.dumps(
        {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]}
    )
    with pytest.raises(InputError, match="binary data: 2 bytes after the last input"):
        infer_request(extra.encode() + b"\0" * 6, len(extra), "m", "")


@pytest.fixture(scope="module")
def secured(model_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("http-security")
    (folder / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    auth = AuthConfig(write_keys(folder / "keys.yaml", API_KEYS), failure_limit=FailureLimit(10_000))
    with build_server(
        ["tiny"],
        port=0,
        model_root=model_root,
        http_port=0,
        auth=auth,
        policy_path=folder / "policy.yaml",
        audit_path=folder / "audit.jsonl",
        max_message_bytes=1024 * 1024,
    ) as running:
        yield running, folder / "audit.jsonl"


@needs_curl
def test_http_needs_the_same_credentials_roles_and_audit_as_grpc(secured):
    server, audit_log = secured
    request = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a red part"]}]})
    infer = url(server, "/v2/models/tiny/infer")
    status, headers, body = curl("-X", "POST", infer, "-d", request)
    assert (status, json.loads(body)) == (401, {"error": GENERIC_MESSAGE}) and "www-authenticate" in headers
    assert curl(url(server, "/v2/models/tiny"), "-H", "Authorization: ApiKey wrong-key")[0] == 401
    assert curl(url(server, "/v2/health/live"))[0] == 200  # health needs no credentials, as over gRPC
    assert curl(url(server, "/v2/health/ready"))[0] == 200
    status, _, body = curl("-X", "POST", infer, "-d", request, "-H", f"Authorization: ApiKey {API_KEYS['operator']}")
    assert (status, json.loads(body)) == (403, {"error": "role 'operator' may not call ModelInfer"})
    status, headers, body = curl(
        "-X", "POST", infer, "-d", request, "-H", f"x-api-key: {API_KEYS['admin']}", "-H", "x-request-id: http-audit-1"
    )
    assert status == 200 and headers["x-request-id"] == "http-audit-1"
    assert json.loads(body)["outputs"][0]["name"] == "colour.probabilities"
    client = triton.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    try:
        with pytest.raises(InferenceServerException, match="authentication failed") as error:
            client.get_model_metadata("tiny")
        assert error.value.status() == "401"
        admin = {"authorization": f"ApiKey {API_KEYS['admin']}"}
        assert client.get_model_metadata("tiny", headers=admin)["name"] == "tiny"
    finally:
        client.close()
    big = gzip.compress(b" " * (2 * 1024 * 1024))  # small on the wire, over the 1 MiB limit once decoded
    status, _, body = _post_bytes(server, big, {"Content-Encoding": "gzip", "x-api-key": API_KEYS["admin"]})
    assert status == 413 and "once decoded" in json.loads(body)["error"]
    events = [json.loads(line) for line in audit_log.read_text().splitlines() if line.strip()]
    calls = [e for e in events if e.get("kind") == "call" and e.get("rpc", "").endswith("/ModelInfer")]
    assert [(e["caller"], e["status"]) for e in calls][-3:] == [
        ("anonymous", "UNAUTHENTICATED"),
        ("operator-key", "PERMISSION_DENIED"),
        ("admin-key", "OK"),
    ]
    assert calls[-1]["request_id"] == "http-audit-1" and calls[-1]["model"] == "tiny"


def _post_bytes(server, body: bytes, headers: dict[str, str]) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url(server, "/v2/models/tiny/infer"), data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_serve_flag_and_stop_refuses_new_requests(model_root):
    from mmfusion.cli.main import build_parser

    args = build_parser().parse_args(["serve", "tiny", "--http-port", "8000"])
    assert args.http_port == 8000
    server = build_server(["tiny"], port=0, model_root=model_root, http_port=0).start()
    client = triton.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    try:
        assert client.is_server_ready()
        server.http.stop_accepting()
        assert not client.is_server_ready()
    finally:
        client.close()
        server.stop(grace=1.0)
    assert not server.http._thread.is_alive()  # noqa: SLF001


@needs_curl
def test_tls_is_tls13_only_and_mutual_tls_needs_a_client_certificate(model_root, tmp_path):
    if find_nginx() is None:
        pytest.skip("nginx is not installed (the gRPC port's TLS front); run `make system-deps` as root")
    certs = make_dev_certificates(tmp_path / "certs")
    tls = TlsFiles.checked(certs.server_cert, certs.server_key, certs.ca_cert)
    with build_server(["tiny"], port=0, model_root=model_root, http_port=0, tls=tls) as server:
        ready = f"https://127.0.0.1:{server.http_port}/v2/health/ready"
        client_cert = ("--cert", str(certs.client_cert), "--key", str(certs.client_key))
        assert curl("--cacert", str(certs.ca_cert), *client_cert, ready)[0] == 200
        for refused in (
            ("--cacert", str(certs.ca_cert), ready),  # no client certificate
            ("--cacert", str(certs.ca_cert), *client_cert, "--tls-max", "1.2", ready),  # TLS 1.2
        ):
            ran = subprocess.run([CURL, "-s", "--max-time", "10", *refused], capture_output=True, timeout=30)
            assert ran.returncode != 0, refused
        server.http.reload_tls()  # SIGHUP: the same files again; new connections still work
        assert curl("--cacert", str(certs.ca_cert), *client_cert, ready)[0] == 200


def test_statistics_of_every_model_are_cut_to_the_callers_models():
    from tritonclient.grpc import service_pb2 as kpb

    from mmfusion.security.auth import Caller
    from mmfusion.security.rbac import PolicyStore
    from mmfusion.serving.interceptors import CallRecord, ModelInterceptor

    call = CallRecord("/inference.GRPCInferenceService/ModelStatistics", "unary_unary", "id", Caller("op", "operator"))
    every = kpb.ModelStatisticsResponse(model_stats=[{"name": "pcb-a"}, {"name": "tiny"}, {"name": "pcb-b"}])
    kept = ModelInterceptor(PolicyStore()).filter(call, every)  # the built-in policy: operators see pcb-*
    assert [stats.name for stats in kept.model_stats] == ["pcb-a", "pcb-b"]
    assert ModelInterceptor(None).filter(call, every) is every


@needs_curl
def test_serve_answers_curl_on_the_http_port_until_sigterm(model_root, caplog):
    caplog.set_level(logging.INFO, logger="mmfusion.serving.server")
    port, http_port = free_port(), free_port()
    answers = []

    def infer_then_terminate():
        try:
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline:
                ran = subprocess.run([CURL, "-s", "-o", "/dev/null", "-w", "%{http_code}", ready], capture_output=True)
                if ran.stdout == b"200":
                    break
                time.sleep(0.1)
            request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a blue part"]}]}
            answers.append(curl("-X", "POST", infer, "-d", json.dumps(request)))
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    ready = f"http://127.0.0.1:{http_port}/v2/health/ready"
    infer = f"http://127.0.0.1:{http_port}/v2/models/tiny/infer"
    caller = threading.Thread(target=infer_then_terminate)
    caller.start()
    assert serve(["tiny"], port, model_root=model_root, grace=2.0, http_port=http_port) == 0
    caller.join(10)
    ((status, _, body),) = answers
    assert status == 200 and json.loads(body)["outputs"][0]["shape"] == [1, 2]
    logged = [record.getMessage() for record in caplog.records if record.name == "mmfusion.serving.server"]
    assert f"KServe v2 HTTP/REST on 127.0.0.1:{http_port}" in logged
    assert subprocess.run([CURL, "-s", "--max-time", "5", ready], capture_output=True).returncode != 0  # closed
