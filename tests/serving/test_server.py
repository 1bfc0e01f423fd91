"""gRPC server on a real loopback port: every RPC, bad input, streams, health, reflection, unload."""

from __future__ import annotations

import gc
import logging
import os
import re
import signal
import socket
import struct
import threading
import time
import urllib.request
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
import yaml
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from mmfusion.client import InspectionClient, ServerError, frames_from_images, image_message
from mmfusion.proto import inspection_pb2 as pb
from mmfusion.serving import build_server, serve
from mmfusion.serving.batching import Call, Predict
from mmfusion.serving.convert import wav_bytes
from mmfusion.serving.dispatch import submit
from mmfusion.serving.models import ModelEntry, ModelManager, ModelNotFound
from mmfusion.serving.server import SERVICE_NAME
from mmfusion.types import Inputs
from tests.conftest import random_image, random_waveform
from tests.test_pipeline import BLUE, RED, tiny_model

MAX_MESSAGE_BYTES = 1_000_000
WAIT_S = 20.0


def on_pipeline(server, model: str, function):
    """function(pipeline) run on the model's scheduler thread, the one thread that may touch the pipeline."""
    return server.models.get(model).scheduler.submit(Call(function)).result(WAIT_S).unwrap()


def hold_scheduler(entry: ModelEntry) -> threading.Event:
    """Keep the model's scheduler busy until the returned event is set, so later work only queues."""
    release, running = threading.Event(), threading.Event()

    def hold(_pipeline) -> None:
        running.set()
        release.wait(WAIT_S)

    entry.scheduler.submit(Call(hold))
    assert running.wait(WAIT_S)
    return release


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def tiny_audio_model(folder: Path) -> Path:
    """A small random-weight whisper-encoder + text pipeline with a classification head."""
    folder.mkdir(parents=True)
    config = {
        "name": folder.name,
        "version": 2,
        "encoders": {
            "audio": {"name": "speech.whisper", "params": {"n_audio_state": 64, "n_audio_head": 2, "n_audio_layer": 2}},
            "text": {"name": "text.hf", "params": {"weights": "random", "max_length": 16}},
        },
        "fusion": {"name": "late", "params": {"width": 64}},
        "heads": {"tone": {"name": "classification", "labels": ["low", "high"]}},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    tiny_model(root / "tiny")
    tiny_audio_model(root / "tiny-audio")
    return root


@pytest.fixture(scope="module")
def server(model_root):
    with build_server(["tiny"], port=0, model_root=model_root, max_message_bytes=MAX_MESSAGE_BYTES) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with InspectionClient(f"127.0.0.1:{server.port}", timeout=30) as connected:
        connected.wait_ready(10)
        yield connected


def test_inspect_image_maps_every_head(client):
    red = client.inspect("tiny", image=png(RED + 5))
    blue = client.inspect("tiny", image=png(BLUE + 5), include_embedding=True)
    assert (red.verdict, blue.verdict) == ("red", "blue")
    assert red.model == "tiny" and red.model_version == "1" and list(red.modalities) == ["image"]
    assert set(red.scores) == {"red", "blue"} and red.scores["red"] == pytest.approx(red.verdict_score)
    assert red.heads["colour"].kind == "classification" and red.heads["colour"].label == "red"
    assert red.heads["flags"].kind == "multilabel" and "glare" in red.heads["flags"].flags
    assert "glare" in red.flags and set(red.heads["flags"].scores) == {"glare", "blur"}
    assert len(red.heads["embedding"].embedding) == 0  # only on request
    embedding = np.asarray(blue.heads["embedding"].embedding)
    assert embedding.shape == (1280,) and np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-4)
    assert 0 < red.timings.compute_ms <= red.timings.total_ms


def test_raw_pixels_equal_png_and_mixed_modalities(client):
    image = random_image(4)
    from_png = client.inspect("tiny", image=png(image), text="a note")
    from_raw = client.inspect("tiny", image=image, text="a note")
    assert list(from_raw.modalities) == ["image", "text"]
    assert dict(from_raw.scores) == pytest.approx(dict(from_png.scores), abs=1e-6)
    text_only = client.inspect("tiny", text="a note")
    assert list(text_only.modalities) == ["text"] and text_only.verdict in {"red", "blue"}


def _png_claiming(width: int, height: int) -> bytes:
    header = png(RED)
    return header[:16] + struct.pack(">II", width, height) + header[24:]


BAD_REQUESTS = [
    (pb.InspectRequest(), grpc.StatusCode.INVALID_ARGUMENT, "model: empty; expected one of the loaded models: tiny"),
    (pb.InspectRequest(model="nope", text="x"), grpc.StatusCode.NOT_FOUND, "model 'nope' is not loaded; loaded: tiny"),
    (
        pb.InspectRequest(model="tiny", version="7", text="x"),
        grpc.StatusCode.NOT_FOUND,
        "version '7'.*loaded version: 1",
    ),
    (pb.InspectRequest(model="tiny"), grpc.StatusCode.INVALID_ARGUMENT, "request: no input"),
    (pb.InspectRequest(model="tiny", image=pb.Image()), grpc.StatusCode.INVALID_ARGUMENT, r"image\.data: empty"),
    (
        pb.InspectRequest(model="tiny", image=pb.Image(data=np.random.default_rng(0).bytes(5000))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "image: 5000 bytes are not a decodable image",
    ),
    (
        pb.InspectRequest(model="tiny", image=pb.Image(data=png(random_image(1))[:60])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "image: 60 bytes are not a decodable image",
    ),
    (
        pb.InspectRequest(model="tiny", image=pb.Image(data=_png_claiming(100_000, 100_000))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "image: 100000x100000 pixels; expected at most",
    ),
    (
        pb.InspectRequest(model="tiny", image=pb.Image(data=b"\0" * 10, encoding=pb.IMAGE_ENCODING_RAW_RGB8)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "image: IMAGE_ENCODING_RAW_RGB8 needs width and height; got 0x0",
    ),
    (
        pb.InspectRequest(
            model="tiny", image=pb.Image(data=b"\0" * 10, encoding=pb.IMAGE_ENCODING_RAW_RGB8, width=4, height=4)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"image\.data: IMAGE_ENCODING_RAW_RGB8 4x4 needs 48 bytes, got 10",
    ),
    (
        pb.InspectRequest(
            model="tiny", image=pb.Image(data=b"\0", encoding=pb.IMAGE_ENCODING_RAW_RGB8, width=90_000, height=90_000)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "image: 90000x90000 pixels; expected at most",
    ),
    (
        pb.InspectRequest(model="tiny", text="x", reference_image=pb.Image(data=b"x")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "reference_image: ",
    ),
    (
        pb.InspectRequest(model="tiny", audio=pb.Audio(data=b"\0\0" * 100, encoding=pb.AUDIO_ENCODING_PCM16)),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"audio\.sample_rate: 0 Hz; PCM16 needs 8000\.\.192000 Hz",
    ),
    (
        pb.InspectRequest(model="tiny", audio=pb.Audio(data=b"\0\0" * 100, sample_rate=5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"audio\.sample_rate: 5 Hz; expected 8000\.\.192000 Hz",
    ),
    (
        pb.InspectRequest(model="tiny", audio=pb.Audio(data=wav_bytes(random_waveform(0.2), 16000))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tiny has no encoder for audio; it reads image, text",
    ),
    (pb.InspectRequest(model="tiny", text="   "), grpc.StatusCode.INVALID_ARGUMENT, "empty text"),
]


def test_malformed_requests_are_named_and_the_server_keeps_serving(client):
    for request, code, message in BAD_REQUESTS:
        with pytest.raises(ServerError, match=message) as raised:
            client._call(client.stub.Inspect, request)
        assert raised.value.code == code, request
    assert client.inspect("tiny", image=png(RED)).verdict == "red"


def _rss_mib() -> float:
    """Resident memory of this process (the server runs in it), from /proc."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc (Linux only)")
def test_memory_stays_bounded_under_a_stream_of_malformed_requests(client):
    def one_round() -> None:
        for request, _, _ in BAD_REQUESTS:
            with pytest.raises(ServerError):
                client._call(client.stub.Inspect, request)

    for _ in range(3):  # warm up allocator pools and caches
        one_round()
    before = _rss_mib()
    for _ in range(20):  # 20 x 16 malformed requests
        one_round()
    grown = _rss_mib() - before
    assert grown < 40, f"RSS grew {grown:.1f} MiB over 320 malformed requests"
    assert client.inspect("tiny", image=png(RED)).verdict == "red"


def test_wrong_message_type_and_oversized_messages(server, client):
    random_bytes = np.random.default_rng(1).bytes(300)
    raw_call = client.channel.unary_unary("/mmfusion.v1.Inspection/Inspect")
    with pytest.raises(grpc.RpcError) as raised:
        raw_call(random_bytes, timeout=10)  # bytes that do not parse as an InspectRequest
    assert raised.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(ServerError) as raised:
        client.inspect("tiny", image=b"\xff" * (MAX_MESSAGE_BYTES + 10))
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.inspect("tiny", text="after the flood").model == "tiny"


def _frame(stream_id: str, sequence: int, image: np.ndarray, **fields) -> pb.Frame:
    frame = pb.Frame(stream_id=stream_id, sequence_number=sequence, image=image_message(png(image)), **fields)
    frame.capture_time.FromNanoseconds(1_000_000 * (sequence + 1))
    return frame


def test_stream_results_in_order_per_stream_with_smoothing(client):
    options = pb.StreamOptions(max_pending_frames=100, smoothing_window=3)
    colours = [RED, RED, BLUE, RED, BLUE, BLUE]
    frames = []
    for index, colour in enumerate(colours):
        first = {"model": "tiny", "options": options} if index == 0 else {}
        frames.append(_frame("cam-a", 10 + 2 * index, colour, **first))
        frames.append(_frame("cam-b", index, colour, **first))
    results = list(client.stream(frames))
    by_stream = {s: [r for r in results if r.stream_id == s] for s in ("cam-a", "cam-b")}
    assert [r.sequence_number for r in by_stream["cam-a"]] == [10 + 2 * i for i in range(6)]
    assert [r.sequence_number for r in by_stream["cam-b"]] == list(range(6))
    assert all(not r.skipped_sequence_numbers and not r.HasField("error") for r in results)
    verdicts = [r.result.verdict for r in by_stream["cam-a"]]
    assert verdicts == ["red", "red", "blue", "red", "blue", "blue"]
    assert [r.smoothed_verdict for r in by_stream["cam-a"]] == ["red", "red", "red", "red", "blue", "blue"]
    assert [r.result.verdict for r in by_stream["cam-b"]] == verdicts
    assert results[0].stream_id == "cam-a" and results[1].stream_id == "cam-b"  # round-robin, not one stream first
    assert by_stream["cam-a"][2].capture_time.ToNanoseconds() == 1_000_000 * 15


def test_stream_drops_oldest_frames_and_says_which(client):
    sent = list(range(40))
    frames = frames_from_images(
        [random_image(s % 3, 96, 96) for s in sent], "fast-cam", "tiny", pb.StreamOptions(max_pending_frames=1)
    )
    results = list(client.stream(frames))
    served = [r.sequence_number for r in results]
    skipped = [s for r in results for s in r.skipped_sequence_numbers]
    assert served == sorted(served) and served[-1] == sent[-1]
    assert sorted(served + skipped) == sent  # every frame is either answered or reported as dropped
    assert skipped, "40 frames sent at once with one pending slot: some must be dropped"
    for result in results:  # a result reports only frames dropped before it
        assert all(s < result.sequence_number for s in result.skipped_sequence_numbers)


def test_stream_bad_frames(client):
    good, corrupt = _frame("cam", 0, RED, model="tiny"), pb.Frame(stream_id="cam", sequence_number=1)
    corrupt.image.data = b"not an image"
    results = list(client.stream([good, corrupt, _frame("cam", 2, BLUE)]))
    assert [r.sequence_number for r in results] == [0, 1, 2]
    assert results[1].error.code == "INVALID_ARGUMENT" and "frame.image: 12 bytes" in results[1].error.message
    assert results[2].result.verdict == "blue"
    protocol_errors = [
        (
            [_frame("cam", 5, RED, model="tiny"), _frame("cam", 5, RED)],
            "frame.sequence_number: 5 on stream 'cam' after 5",
        ),
        ([_frame("cam", 0, RED)], "frame.model: empty on the first frame of stream 'cam'"),
        ([_frame("", 0, RED, model="tiny")], "frame.stream_id: empty"),
        ([], "request stream: no frames"),
    ]
    for frames, message in protocol_errors:
        with pytest.raises(ServerError, match=message) as raised:
            list(client.stream(frames))
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ServerError, match="model 'nope' is not loaded") as raised:
        list(client.stream([_frame("cam", 0, RED, model="nope")]))
    assert raised.value.code == grpc.StatusCode.NOT_FOUND


def test_generate_report_without_report_head_is_unimplemented(client):
    with pytest.raises(ServerError, match="model 'tiny' has no report head .*colour: classification") as raised:
        list(client.generate_report("tiny", images=[png(RED)], text="x"))
    assert raised.value.code == grpc.StatusCode.UNIMPLEMENTED


def test_list_get_models(client):
    assert [m.name for m in client.list_models()] == ["tiny"]
    every = {m.name: m for m in client.list_models(include_available=True)}
    assert every["tiny"].state == pb.MODEL_STATE_LOADED and every["tiny-audio"].state == pb.MODEL_STATE_AVAILABLE
    tiny = client.get_model("tiny")
    assert list(tiny.modalities) == ["image", "text"] and tiny.backend == "torch"
    assert [(h.name, h.kind, list(h.labels)) for h in tiny.heads][0] == ("colour", "classification", ["red", "blue"])
    for call, request, code, message in [
        (client.get_model, "nope", grpc.StatusCode.NOT_FOUND, "available: tiny, tiny-audio"),
        (client.get_model, "", grpc.StatusCode.INVALID_ARGUMENT, "name: empty"),
        (client.load_model, "../tiny", grpc.StatusCode.NOT_FOUND, "not in the model repository"),
        (client.unload_model, "tiny-audio", grpc.StatusCode.NOT_FOUND, "'tiny-audio' is not loaded; loaded: tiny"),
    ]:
        with pytest.raises(ServerError, match=message) as raised:
            call(request)
        assert raised.value.code == code


def test_load_analyze_audio_unload_frees_the_pipeline(server, client):
    assert client.health("tiny") == "SERVING" and client.health("") == "SERVING"
    with pytest.raises(ServerError, match="NOT_FOUND"):
        client.health("tiny-audio")
    loaded = client.load_model("tiny-audio")
    assert loaded.state == pb.MODEL_STATE_LOADED and loaded.version == "2"
    assert client.health("tiny-audio") == "SERVING"

    waveform = random_waveform(1.0)
    pcm = (waveform * 32767).astype("<i2")
    pcm_8k = pcm[::2].tobytes()
    as_pcm = client.analyze_audio(
        "tiny-audio", pcm_8k, sample_rate=8000, encoding=pb.AUDIO_ENCODING_PCM16, text="a hum", chunk_bytes=1000
    )
    as_wav = client.analyze_audio("tiny-audio", wav_bytes(waveform[::2], 8000), chunk_bytes=777)
    assert list(as_pcm.modalities) == ["audio", "text"] and list(as_wav.modalities) == ["audio"]
    assert as_pcm.model_version == "2" and as_pcm.verdict in {"low", "high", ""}
    assert set(as_wav.scores) == {"low", "high"}
    for chunks, code, message in [
        ([], grpc.StatusCode.INVALID_ARGUMENT, "request stream: no audio chunks"),
        (
            [pb.AudioChunk(model="tiny-audio", data=b"\1\2" * 50, encoding=pb.AUDIO_ENCODING_PCM16, sample_rate=4000)],
            grpc.StatusCode.INVALID_ARGUMENT,
            r"audio\.sample_rate: 4000 Hz; expected 8000\.\.192000",
        ),
        (
            [pb.AudioChunk(model="tiny-audio", data=b"\1\2\3", encoding=pb.AUDIO_ENCODING_PCM16, sample_rate=16000)],
            grpc.StatusCode.INVALID_ARGUMENT,
            r"audio\.data: 3 bytes is not a whole number",
        ),
        (
            [pb.AudioChunk(model="tiny-audio", data=b"RIFF" + b"\0" * 40)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "audio: 44 bytes are not decodable audio",
        ),
        ([pb.AudioChunk(data=b"\0\0")], grpc.StatusCode.INVALID_ARGUMENT, "model: empty"),
    ]:
        with pytest.raises(grpc.RpcError) as raised:
            client.stub.AnalyzeAudio(iter(chunks), timeout=30)
        assert raised.value.code() == code
        assert re.search(message, raised.value.details()), raised.value.details()

    pipeline_ref = weakref.ref(server.models.get("tiny-audio").pipeline)
    unloaded = client.unload_model("tiny-audio")
    assert unloaded.state == pb.MODEL_STATE_AVAILABLE
    assert client.health("tiny-audio") == "NOT_SERVING"
    gc.collect()
    assert pipeline_ref() is None  # nothing in the server keeps the unloaded model alive
    with pytest.raises(ServerError, match="'tiny-audio' is not loaded") as raised:
        client.analyze_audio("tiny-audio", wav_bytes(waveform, 16000))
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    assert client.health("tiny") == "SERVING" and [m.name for m in client.list_models()] == ["tiny"]


def test_reflection_lists_the_services(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= services
        descriptor = database.FindFileContainingSymbol(SERVICE_NAME)
        assert descriptor.name == "mmfusion/v1/inspection.proto"
        methods = {m.name for m in descriptor.service[0].method}
    assert methods == {
        "Inspect",
        "StreamInspect",
        "AnalyzeAudio",
        "StreamCall",
        "GenerateReport",
        "ListModels",
        "GetModel",
        "LoadModel",
        "UnloadModel",
    }


def test_stop_finishes_and_unloads(model_root):
    running = build_server(["tiny"], port=0, model_root=model_root).start()
    with InspectionClient(f"127.0.0.1:{running.port}", timeout=10) as client:
        assert client.inspect("tiny", text="last words").model == "tiny"
        running.stop(grace=2.0)
        assert running.models.loaded_names() == []
        with pytest.raises(ServerError) as raised:
            client.inspect("tiny", text="too late")
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE


def test_port_in_use_is_refused(server, model_root):
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        build_server([], port=server.port, model_root=model_root)


def test_concurrent_requests_match_one_at_a_time_predictions(server, client):
    texts = [f"note number {i}" for i in range(8)]
    alone = [on_pipeline(server, "tiny", lambda p, text=text: p.predict(text=text)) for text in texts]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda text: client.inspect("tiny", text=text).scores, texts))
    for one, other in zip(alone, concurrent):
        assert one.outputs["colour"]["scores"] == pytest.approx(dict(other), abs=1e-5)


def test_graceful_stop_refuses_new_calls_and_ends_open_streams(model_root):
    running = build_server(["tiny"], port=0, model_root=model_root).start()
    release = threading.Event()

    def frames():
        yield _frame("cam", 0, RED, model="tiny")
        release.wait(10)
        yield _frame("cam", 1, BLUE)

    with InspectionClient(f"127.0.0.1:{running.port}", timeout=20) as client:
        results = client.stream(frames())
        assert next(results).result.verdict == "red"
        stopping = threading.Thread(target=running.stop, kwargs={"grace": 10.0})
        stopping.start()
        time.sleep(0.3)
        with pytest.raises(ServerError) as raised:  # no new calls once stopping
            client.inspect("tiny", text="new call")
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(ServerError) as ended:  # an open stream takes no new frame once stopping (issue 19 #16)
            next(results)
        assert ended.value.code == grpc.StatusCode.UNAVAILABLE and "server shutting down" in str(ended.value)
        release.set()
        started = time.monotonic()
        stopping.join(10)
    assert time.monotonic() - started < 5 and not stopping.is_alive()
    assert running.models.loaded_names() == []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_exits_zero_on_sigterm(model_root, caplog):
    caplog.set_level(logging.INFO, logger="mmfusion.serving.server")
    port, metrics_port = free_port(), free_port()
    answers = []
    handler_before = signal.getsignal(signal.SIGTERM)

    def call_then_terminate():
        try:
            with InspectionClient(f"127.0.0.1:{port}", timeout=20) as client:
                client.wait_ready(20)
                model = client.inspect("tiny", text="hello").model
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
                    counted = 'nv_inference_request_success{model="tiny",version="1"} 1.0' in response.read().decode()
                answers.append((client.health(), model, counted))
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # serve() handles it: stop accepting, finish, return

    caller = threading.Thread(target=call_then_terminate)
    caller.start()
    assert serve(["tiny"], port, model_root=model_root, grace=2.0, metrics_port=metrics_port) == 0
    caller.join(10)
    assert answers == [("SERVING", "tiny", True)]
    assert [record.getMessage() for record in caplog.records if record.name == "mmfusion.serving.server"] == [
        f"serving tiny on 127.0.0.1:{port}",
        f"metrics on http://127.0.0.1:{metrics_port}/metrics",
        "server stopped",
    ]
    with pytest.raises(OSError):  # the metrics endpoint closed with the server
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
    assert signal.getsignal(signal.SIGTERM) == handler_before  # serve() puts the previous handler back


def test_unload_serves_queued_work_then_frees_the_backend(model_root):
    manager = ModelManager(model_root)
    entry = manager.load("tiny")
    blocker = hold_scheduler(entry)
    queued = entry.scheduler.submit(Predict(Inputs(text="queued before unload")))
    unloading = threading.Thread(target=manager.unload, args=("tiny",))
    unloading.start()
    time.sleep(0.2)
    assert unloading.is_alive() and entry.pipeline.backend.graph is not None  # a batch is running on it
    with pytest.raises(ModelNotFound, match="'tiny' was unloaded while this request waited"):
        submit(entry, Predict(Inputs(text="too late")))
    blocker.set()
    unloading.join(10)
    assert not unloading.is_alive() and entry.pipeline.backend.graph is None
    assert queued.result(0).unwrap().model == "tiny"  # queued work was served before the backend closed
