"""Resource bombs against a server in its own process: image bombs of every format, 10,000-frame requests and
long compressed audio each get a clean INVALID_ARGUMENT, the server's peak RSS stays under 2 GB, and it still serves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as kpb

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.serving.convert import MAX_REQUEST_IMAGES
from tests.security import bombs
from tests.security.conftest import Channel

REPO = Path(__file__).resolve().parents[2]
MAX_PEAK_RSS = 2 * 2**30
SERVER = """
import sys
from pathlib import Path
from mmfusion.serving import build_server
from tests.security.conftest import named_tiny_model
named_tiny_model(Path(sys.argv[1]) / "pcb-a")
server = build_server(["pcb-a"], model_root=sys.argv[1], max_workers=4).start()
print(server.port, flush=True)
sys.stdin.read()  # until the test closes our stdin
server.stop(grace=0)
"""
TOO_LARGE = "pixels; expected at most 64000000 pixels"
TOO_LONG = "declares 600.0 s of audio; expected at most 300 s"


@pytest.fixture(scope="module")
def server_process(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bomb-models")
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(folder)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(process.stdout.readline())
        yield process, port
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _peak_rss(pid: int) -> int:
    """The process's resident high-water mark (VmHWM) in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _tiny_png() -> bytes:
    return cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()


def _cases() -> list[tuple[str, pb.InspectRequest, str]]:
    """(name, request, a phrase its INVALID_ARGUMENT details must hold)."""
    cases = [
        (f"image {kind}", pb.InspectRequest(model="pcb-a", image=pb.Image(data=data)), f"{side}x{side} {TOO_LARGE}")
        for kind, (side, data) in bombs.IMAGE_BOMBS.items()
    ]
    tiff = pb.Image(data=bombs.tiff(bombs.BOMB_SIDE, bombs.BOMB_SIDE))
    cases.append(("reference tiff", pb.InspectRequest(model="pcb-a", text="x", reference_image=tiff), TOO_LARGE))
    frames = [pb.Image(data=_tiny_png())] * 10_000
    cases.append(
        ("10,000 frames", pb.InspectRequest(model="pcb-a", frames=frames), f"expected at most {MAX_REQUEST_IMAGES}")
    )
    large = [pb.Image(data=bombs.png(8000, 8000))] * 40  # 64 MP each, allowed alone: 2.5 G pixels together
    cases.append(("40 large frames", pb.InspectRequest(model="pcb-a", frames=large), "pixels in all; expected at most"))
    for name, (format, subtype) in {"flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS")}.items():
        audio = pb.Audio(data=bombs.silent_audio(600, format, subtype))
        cases.append((f"600 s {name}", pb.InspectRequest(model="pcb-a", audio=audio), TOO_LONG))
    pcm = pb.Audio(data=b"\0\0" * 600 * 16_000, encoding=pb.AUDIO_ENCODING_PCM16, sample_rate=16_000)
    cases.append(("600 s pcm16", pb.InspectRequest(model="pcb-a", audio=pcm), "claims 600.0 s of audio"))
    return cases


def test_bombs_get_clean_statuses_and_the_server_stays_small(server_process):
    process, port = server_process
    channel = Channel(port)
    try:
        inspect = channel.inspection.Inspect
        pending = [(name, inspect.future(request, timeout=60), phrase) for name, request, phrase in _cases()]
        for name, future, phrase in pending:
            error = future.exception()
            assert error is not None, f"{name}: answered OK"
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and phrase in error.details(), (name, error)

        flac = bombs.silent_audio(600, "FLAC", "PCM_16")
        chunks = [pb.AudioChunk(model="pcb-a", data=flac[i : i + 8192]) for i in range(0, len(flac), 8192)]
        with pytest.raises(grpc.RpcError) as refused:
            channel.inspection.AnalyzeAudio(iter(chunks), timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and TOO_LONG in refused.value.details()

        frame = pb.Frame(stream_id="cam", model="pcb-a", image=pb.Image(data=bombs.IMAGE_BOMBS["webp-lossy"][1]))
        (answer,) = list(channel.inspection.StreamInspect(iter([frame]), timeout=60))
        assert answer.error.code == "INVALID_ARGUMENT" and TOO_LARGE in answer.error.message

        bomb = bombs.IMAGE_BOMBS["bmp"][1]
        tensor = kpb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])
        request = kpb.ModelInferRequest(model_name="pcb-a", inputs=[tensor])
        request.inputs[0].contents.bytes_contents.append(bomb)
        with pytest.raises(grpc.RpcError) as refused:
            channel.kserve.ModelInfer(request, timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and TOO_LARGE in refused.value.details()

        result = channel.inspection.Inspect(pb.InspectRequest(model="pcb-a", text="a valid note"), timeout=60)
        assert result.model == "pcb-a" and result.verdict in {"red", "blue"}
        peak = _peak_rss(process.pid)
        print(f"bombs: the server's RSS peaked at {peak / 2**30:.2f} GB")
        assert peak < MAX_PEAK_RSS, f"the server's RSS peaked at {peak / 2**30:.2f} GB"
    finally:
        channel.close()
