"""KServe v2 / Triton protocol on the Inspection server's port, exercised with tritonclient itself."""

from __future__ import annotations

import queue
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc
from tritonclient.utils import InferenceServerException

from mmfusion import __version__
from mmfusion.proto import inspection_pb2 as pb
from mmfusion.proto import inspection_pb2_grpc as pb_grpc
from mmfusion.serving import build_server
from mmfusion.serving.convert import wav_bytes
from mmfusion.serving.kserve import KSERVE_SERVICE_NAME
from mmfusion.types import Modality
from tests.conftest import random_image, random_waveform
from tests.serving.test_server import WAIT_S, hold_scheduler, on_pipeline, tiny_audio_model
from tests.test_pipeline import BLUE, RED, tiny_model

LABELS = ("red", "blue")


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    tiny_model(root / "tiny")
    tiny_audio_model(root / "tiny-audio")
    (root / "broken").mkdir()
    (root / "broken" / "config.yaml").write_text("name: broken\nencoders: 3\n")
    return root


@pytest.fixture(scope="module")
def server(model_root):
    with build_server(["tiny"], port=0, model_root=model_root) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    connected = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield connected
    connected.close()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


def predicted_scores(server, model="tiny", head="colour", labels=LABELS, **inputs) -> np.ndarray:
    """Pipeline.predict's scores of one head, in label order, from the server's own loaded pipeline."""
    prediction = on_pipeline(server, model, lambda pipeline: pipeline.predict(**inputs))
    scores = prediction.outputs[head]["scores"]
    return np.asarray([scores[label] for label in labels], np.float32)


def preprocess(server, modality: Modality, items: list) -> dict[str, np.ndarray]:
    return on_pipeline(server, "tiny", lambda pipeline: pipeline.encoder(modality).preprocess(items))


def infer_input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def pixels_input(server, images: list[np.ndarray]) -> triton.InferInput:
    return infer_input("image.pixels", preprocess(server, Modality.IMAGE, images)["pixels"], "FP32")


def test_server_live_ready_metadata_health_and_reflection(client, server, channel):
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert (metadata.name, metadata.version) == ("mmfusion", __version__)
    assert set(metadata.extensions) == {"model_repository", "model_configuration", "statistics", "binary_tensor_data"}
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=KSERVE_SERVICE_NAME))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert KSERVE_SERVICE_NAME in set(ProtoReflectionDescriptorDatabase(channel).get_services())


def test_model_ready_follows_name_and_version(client):
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("tiny", "7")
    assert not client.is_model_ready("nope")


def test_model_metadata_lists_graph_tensors(client):
    metadata = client.get_model_metadata("tiny")
    assert (metadata.name, list(metadata.versions), metadata.platform) == ("tiny", ["1"], "mmfusion_torch")
    inputs = {t.name: (t.datatype, list(t.shape)) for t in metadata.inputs}
    assert inputs == {
        "image.pixels": ("FP32", [-1, 3, 64, 64]),
        "text.input_ids": ("INT64", [-1, -1]),
        "text.attention_mask": ("INT64", [-1, -1]),
    }
    outputs = {t.name: (t.datatype, list(t.shape)) for t in metadata.outputs}
    assert outputs == {
        "colour.probabilities": ("FP32", [-1, 2]),
        "flags.probabilities": ("FP32", [-1, 2]),
        "embedding.embedding": ("FP32", [-1, 1280]),
    }
    config = client.get_model_config("tiny").config
    optional = {i.name: (i.optional, list(i.dims)) for i in config.input}
    assert optional["image"] == (True, [-1]) and optional["text"] == (True, [-1])
    assert optional["image.pixels"] == (True, [-1, 3, 64, 64])
    with pytest.raises(InferenceServerException, match="model 'nope' is not loaded") as error:
        client.get_model_metadata("nope")
    assert error.value.status() == "StatusCode.NOT_FOUND"


def test_infer_pixels_equals_pipeline_predict(client, server):
    images = [RED + 5, BLUE + 5, random_image(3)]
    result = client.infer("tiny", [pixels_input(server, images)], request_id="req-42")
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("req-42", "tiny", "1")
    assert {o.name for o in response.outputs} == {"colour.probabilities", "flags.probabilities", "embedding.embedding"}
    probabilities = result.as_numpy("colour.probabilities")
    assert probabilities.shape == (3, 2) and result.as_numpy("embedding.embedding").shape == (3, 1280)
    expected = np.stack([predicted_scores(server, image=image) for image in images])
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert probabilities[0].argmax() == 0 and probabilities[1].argmax() == 1  # red, blue


def test_concurrent_infers_are_concatenated_into_one_backend_call(client, server, monkeypatch):
    entry = server.models.get("tiny")
    pixels = preprocess(server, Modality.IMAGE, [RED + 5, BLUE + 5, random_image(6), random_image(7), BLUE])["pixels"]
    parts = [pixels[0:1], pixels[1:3], pixels[3:4], pixels[4:5]]  # 1 + 2 + 1 + 1 rows
    expected = [client.infer("tiny", [infer_input("image.pixels", part, "FP32")]) for part in parts]
    rows_run: list[int] = []
    run = entry.pipeline.backend.run

    def recording(arrays):
        rows_run.append(arrays["image.pixels"].shape[0])
        return run(arrays)

    monkeypatch.setattr(entry.pipeline.backend, "run", recording)
    release = hold_scheduler(entry)
    with ThreadPoolExecutor(len(parts)) as pool:
        calls = [pool.submit(client.infer, "tiny", [infer_input("image.pixels", part, "FP32")]) for part in parts]
        deadline = time.monotonic() + WAIT_S
        while entry.scheduler.queued < len(parts) and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        results = [call.result(WAIT_S) for call in calls]
    assert rows_run == [5]  # four requests, one backend call
    for result, alone in zip(results, expected):
        for name in ("colour.probabilities", "embedding.embedding"):
            np.testing.assert_allclose(result.as_numpy(name), alone.as_numpy(name), atol=1e-5)


def test_bytes_inputs_go_through_the_pipeline(client, server):
    images = [png(RED + 5), png(random_image(5))]
    texts = ["a red part", "a scratched surface"]
    image_only = client.infer("tiny", [infer_input("image", np.array(images, dtype=object), "BYTES")])
    expected = np.stack([predicted_scores(server, image=image) for image in images])
    np.testing.assert_allclose(image_only.as_numpy("colour.probabilities"), expected, atol=1e-5)
    both = client.infer(
        "tiny",
        [
            infer_input("image", np.array(images, dtype=object).reshape(2, 1), "BYTES"),
            infer_input("text", np.array([t.encode() for t in texts], dtype=object), "BYTES"),
        ],
    )
    expected = np.stack([predicted_scores(server, image=i, text=t) for i, t in zip(images, texts)])
    np.testing.assert_allclose(both.as_numpy("colour.probabilities"), expected, atol=1e-5)


def test_typed_contents_equal_raw_contents(client, server, channel):
    texts = ["first note", "a second, longer note"]
    arrays = preprocess(server, Modality.TEXT, texts)
    request = kpb.ModelInferRequest(model_name="tiny", id="typed")
    for array_name in ("input_ids", "attention_mask"):
        tensor = request.inputs.add(name=f"text.{array_name}", datatype="INT64", shape=arrays[array_name].shape)
        tensor.contents.int64_contents.extend(arrays[array_name].ravel().tolist())
    request.outputs.add(name="colour.probabilities")
    typed = kpb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert typed.id == "typed" and [o.name for o in typed.outputs] == ["colour.probabilities"]
    probabilities = np.frombuffer(typed.raw_output_contents[0], "<f4").reshape(typed.outputs[0].shape)
    expected = np.stack([predicted_scores(server, text=text) for text in texts])
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_requested_outputs_only(client, server):
    requested = [triton.InferRequestedOutput("flags.probabilities"), triton.InferRequestedOutput("embedding.embedding")]
    result = client.infer("tiny", [pixels_input(server, [RED])], outputs=requested)
    assert [o.name for o in result.get_response().outputs] == ["flags.probabilities", "embedding.embedding"]
    assert result.as_numpy("colour.probabilities") is None
    embedding = result.as_numpy("embedding.embedding")
    assert embedding.shape == (1, 1280) and np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-4)


def test_repository_index_lists_ready_and_unavailable(client):
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert set(index) == {"tiny", "tiny-audio", "broken"}
    assert (index["tiny"].state, index["tiny"].version) == ("READY", "1")
    assert (index["tiny-audio"].state, index["tiny-audio"].version) == ("UNAVAILABLE", "2")
    assert [m.name for m in client.get_model_repository_index().models if m.state == "READY"] == ["tiny"]
    assert index["broken"].state == "UNAVAILABLE" and "encoders" in index["broken"].reason
    with pytest.raises(InferenceServerException, match="broken") as error:
        client.load_model("broken")
    assert error.value.status() == "StatusCode.FAILED_PRECONDITION"


def test_unload_and_load_share_the_inspection_model_manager(client, server, channel):
    inspection = pb_grpc.InspectionStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    client.unload_model("tiny")
    assert not client.is_model_ready("tiny")
    models = inspection.ListModels(pb.ListModelsRequest(include_available=True)).models
    assert {m.name: m.state for m in models}["tiny"] == pb.MODEL_STATE_AVAILABLE
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="tiny")).status == health_pb2.HealthCheckResponse.NOT_SERVING
    )
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert (index["tiny"].state, index["tiny"].reason) == ("UNAVAILABLE", "not loaded")
    with pytest.raises(InferenceServerException, match="model 'tiny' is not loaded") as error:
        client.infer("tiny", [infer_input("text", np.array([b"hello"], dtype=object), "BYTES")])
    assert error.value.status() == "StatusCode.NOT_FOUND"
    client.unload_model("tiny")  # unloading a repository model that is not loaded is a no-op, as in Triton
    client.load_model("tiny")
    assert client.is_model_ready("tiny", "1")
    assert [m.name for m in inspection.ListModels(pb.ListModelsRequest()).models] == ["tiny"]
    assert health.Check(health_pb2.HealthCheckRequest(service="tiny")).status == health_pb2.HealthCheckResponse.SERVING
    result = client.infer("tiny", [pixels_input(server, [BLUE + 5])])
    np.testing.assert_allclose(
        result.as_numpy("colour.probabilities")[0], predicted_scores(server, image=BLUE + 5), atol=1e-5
    )


def test_load_another_model_and_send_it_wav_bytes(client, server):
    assert not client.is_model_ready("tiny-audio")
    client.load_model("tiny-audio")
    try:
        assert client.is_model_ready("tiny-audio", "2") and not client.is_model_ready("tiny-audio", "1")
        inputs = {t.name for t in client.get_model_metadata("tiny-audio").inputs}
        assert inputs == {"audio.mel", "audio.valid_frames", "text.input_ids", "text.attention_mask"}
        clip = wav_bytes(random_waveform(0.5), 16000)
        result = client.infer("tiny-audio", [infer_input("audio", np.array([clip], dtype=object), "BYTES")])
        expected = predicted_scores(server, "tiny-audio", "tone", ("low", "high"), audio=clip)
        np.testing.assert_allclose(result.as_numpy("tone.probabilities")[0], expected, atol=1e-5)
        assert result.get_response().model_version == "2"
    finally:
        client.unload_model("tiny-audio")
    assert not client.is_model_ready("tiny-audio")


def _pixels(shape=(1, 3, 64, 64), dtype=np.float32) -> np.ndarray:
    return np.zeros(shape, dtype)


TEXT_IDS = np.array([[101, 2000, 102]], np.int64)
BAD_INFERS = [
    (
        "tiny",
        lambda: [infer_input("image.pixels", _pixels(dtype=np.float64), "FP64")],
        "INVALID_ARGUMENT",
        r"input 'image\.pixels': datatype FP64; expected FP32",
    ),
    (
        "tiny",
        lambda: [infer_input("image.pixels", _pixels((1, 3, 32, 32)), "FP32")],
        "INVALID_ARGUMENT",
        r"input 'image\.pixels': shape \[1, 3, 32, 32\]; expected \[-1, 3, 64, 64\]",
    ),
    (
        "tiny",
        lambda: [infer_input("image.pixelz", _pixels(), "FP32")],
        "INVALID_ARGUMENT",
        r"input 'image\.pixelz': unknown; expected image\.pixels, text\.input_ids, .* BYTES inputs image, text",
    ),
    (
        "nope",
        lambda: [infer_input("image.pixels", _pixels(), "FP32")],
        "NOT_FOUND",
        "model 'nope' is not loaded; loaded: tiny",
    ),
    (
        "tiny",
        lambda: [infer_input("text.input_ids", TEXT_IDS, "INT64")],
        "INVALID_ARGUMENT",
        r"text inputs: missing 'text\.attention_mask' \(given 'text\.input_ids'\)",
    ),
    (
        "tiny",
        lambda: [
            infer_input("image.pixels", _pixels((2, 3, 64, 64)), "FP32"),
            infer_input("text", np.array([b"one"], dtype=object), "BYTES"),
        ],
        "INVALID_ARGUMENT",
        r"input 'text': batch size 1; expected 2 like 'image\.pixels'",
    ),
    (
        "tiny",
        lambda: [infer_input("image", np.array([b"\x89PNG garbage"], dtype=object), "BYTES")],
        "INVALID_ARGUMENT",
        r"input 'image'\[0\]: 12 bytes are not a decodable image",
    ),
    (
        "tiny",
        lambda: [infer_input("image", _pixels(), "FP32")],
        "INVALID_ARGUMENT",
        r"input 'image': datatype FP32; expected BYTES",
    ),
    (
        "tiny",
        lambda: [
            infer_input("text", np.array([b"one"], dtype=object), "BYTES"),
            infer_input("text.input_ids", TEXT_IDS, "INT64"),
            infer_input("text.attention_mask", np.ones_like(TEXT_IDS), "INT64"),
        ],
        "INVALID_ARGUMENT",
        "send the text either as BYTES or as tensors, not both",
    ),
    (
        "tiny",
        lambda: [infer_input("text", np.array([b"\xff\xfe"], dtype=object), "BYTES")],
        "INVALID_ARGUMENT",
        r"input 'text'\[0\]: 2 bytes are not UTF-8 text",
    ),
    (
        "tiny",
        lambda: [
            infer_input("text.input_ids", np.array([[101, 10**9, 102]], np.int64), "INT64"),
            infer_input("text.attention_mask", np.ones_like(TEXT_IDS), "INT64"),
        ],
        "INVALID_ARGUMENT",
        "model 'tiny' cannot run these inputs",
    ),
]


@pytest.mark.parametrize(("model", "inputs", "status", "message"), BAD_INFERS)
def test_malformed_infer_is_refused_and_the_server_keeps_serving(client, server, model, inputs, status, message):
    with pytest.raises(InferenceServerException, match=message) as error:
        client.infer(model, inputs())
    assert error.value.status() == f"StatusCode.{status}"
    assert client.infer("tiny", [pixels_input(server, [RED])]).as_numpy("colour.probabilities").shape == (1, 2)


def _raw_request(**fields) -> kpb.ModelInferRequest:
    request = kpb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="image.pixels", datatype="FP32", shape=[1, 3, 64, 64])
    request.MergeFrom(kpb.ModelInferRequest(**fields))
    return request


BAD_RAW_REQUESTS = [
    (
        _raw_request(raw_input_contents=[b"\0" * 100]),
        r"input 'image\.pixels': 100 bytes of raw contents; expected 49152",
    ),
    (_raw_request(raw_input_contents=[b"", b""]), "raw_input_contents: 2 entries for 1 inputs"),
    (_raw_request(), r"input 'image\.pixels': 0 fp32_contents; expected 12288"),
    (kpb.ModelInferRequest(model_name="tiny"), r"inputs: empty; expected some of image\.pixels"),
    (_raw_request(model_version="7"), "model 'tiny' version '7' is not loaded; loaded version: 1"),
    (
        _raw_request(raw_input_contents=[_pixels().tobytes()], outputs=[{"name": "colour.logits"}]),
        r"output 'colour\.logits': unknown; model 'tiny' outputs colour\.probabilities",
    ),
    (
        kpb.ModelInferRequest(
            model_name="tiny",
            inputs=[{"name": "text", "datatype": "BYTES", "shape": [2]}],
            raw_input_contents=[b"\x05\0\0\0hello\xff\xff\0\0"],
        ),
        r"input 'text': BYTES element 1 claims 65535 bytes past the end",
    ),
    (
        _raw_request(
            inputs=[{"name": "image.pixels", "datatype": "FP32", "shape": [1, 3, 64, 64]}],
            raw_input_contents=[_pixels().tobytes()] * 2,
        ),
        r"input 'image\.pixels': given twice",
    ),
]


@pytest.mark.parametrize(("request_message", "message"), BAD_RAW_REQUESTS)
def test_malformed_raw_request_names_the_tensor(channel, request_message, message):
    stub = kpb_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request_message)
    expected = grpc.StatusCode.NOT_FOUND if "version" in message else grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.code() == expected
    assert re.search(message, error.value.details()), error.value.details()
    valid = stub.ModelInfer(_raw_request(raw_input_contents=[_pixels().tobytes()]))
    assert [o.name for o in valid.outputs][0] == "colour.probabilities"


def test_load_parameters_other_than_backend_are_refused(client):
    with pytest.raises(InferenceServerException, match="parameters 'config': not supported") as error:
        client.load_model("tiny", config='{"max_batch_size": 8}')
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"


def _stats(client, model="tiny") -> dict:
    (stats,) = client.get_inference_statistics(model, as_json=True)["model_stats"]
    return stats


def test_model_statistics_count_requests_batches_and_time(client, server):
    before = _stats(client)
    for _ in range(2):
        client.infer("tiny", [pixels_input(server, [RED])])
    with pytest.raises(InferenceServerException):
        client.infer("tiny", [infer_input("image.pixels", _pixels((1, 3, 32, 32)), "FP32")])
    after = _stats(client)
    assert (after["name"], after["version"]) == ("tiny", "1")
    success, fail = after["inference_stats"]["success"], after["inference_stats"]["fail"]
    assert int(success["count"]) == int(before["inference_stats"]["success"].get("count", 0)) + 2
    assert int(fail["count"]) == int(before["inference_stats"]["fail"].get("count", 0)) + 1
    assert int(success["ns"]) > int(before["inference_stats"]["success"].get("ns", 0))
    assert int(after["inference_count"]) == int(before.get("inference_count", 0)) + 2  # the bad one never ran
    assert int(after["execution_count"]) >= int(before.get("execution_count", 0)) + 1
    assert int(after["last_inference"]) > 0
    queued, compute = after["inference_stats"]["queue"], after["inference_stats"]["compute_infer"]
    assert int(queued["count"]) == int(compute["count"]) == int(after["inference_count"]) and int(compute["ns"]) > 0
    by_size = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in after["batch_stats"]}
    assert sum(size * count for size, count in by_size.items()) == int(after["inference_count"])
    every = client.get_inference_statistics(as_json=True)["model_stats"]
    assert [m["name"] for m in every] == ["tiny"]  # the loaded models
    with pytest.raises(InferenceServerException, match="model 'nope' is not loaded") as error:
        client.get_inference_statistics("nope")
    assert error.value.status() == "StatusCode.NOT_FOUND"


def test_stream_infer_answers_each_request_in_order(client, server):
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    images = [RED + 5, BLUE + 5, RED + 9]
    try:
        for index, image in enumerate(images):
            client.async_stream_infer("tiny", [pixels_input(server, [image])], request_id=f"good-{index}")
            if index == 1:  # a bad request in the middle: answered with its error, the stream goes on
                bad = [infer_input("image.pixelz", _pixels(), "FP32")]
                client.async_stream_infer("tiny", bad, request_id="bad")
        got = [answers.get(timeout=WAIT_S) for _ in range(len(images) + 1)]
    finally:
        client.stop_stream()
    assert [error is None for _, error in got] == [True, True, False, True]
    assert "input 'image.pixelz': unknown" in str(got[2][1])
    results = [result for result, error in got if error is None]
    assert [r.get_response().id for r in results] == ["good-0", "good-1", "good-2"]
    for result, image in zip(results, images):
        np.testing.assert_allclose(
            result.as_numpy("colour.probabilities")[0], predicted_scores(server, image=image), atol=1e-5
        )


def test_stream_infer_with_an_unknown_model_names_it(channel):
    stub = kpb_grpc.GRPCInferenceServiceStub(channel)
    requests = [_raw_request(model_name="nope", id="x"), _raw_request(raw_input_contents=[_pixels().tobytes()])]
    first, second = list(stub.ModelStreamInfer(iter(requests)))
    assert first.error_message == "model 'nope' is not loaded; loaded: tiny" and first.infer_response.id == "x"
    assert not second.error_message and second.infer_response.outputs[0].name == "colour.probabilities"
