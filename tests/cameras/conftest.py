"""Shared fixtures of the camera tests: sample boards, a loopback server with pcb-template, test cameras."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from mmfusion.cameras.config import CamerasConfig, parse_cameras
from mmfusion.cameras.stream import CameraResult
from mmfusion.media import decode_image
from mmfusion.proto import inspection_pb2 as pb
from tests.cameras.mjpeg_camera import MjpegCamera
from tests.cameras.rtsp import RtspCamera, rtsp_unavailable
from tests.conftest import SAMPLES

TEMPLATE = SAMPLES / "frames" / "00_13000002_temp.jpg"  # DeepPCB 13000002: a defect-free board
TESTED = SAMPLES / "frames" / "01_13000002_test.jpg"  # the same board with opens, shorts, spurs, ...
MODEL = "pcb-template"


@pytest.fixture(scope="session")
def template_board() -> np.ndarray:
    return decode_image(TEMPLATE)


@pytest.fixture(scope="session")
def tested_board() -> np.ndarray:
    return decode_image(TESTED)


@pytest.fixture(scope="module")
def server():
    """A loopback gRPC server with the golden-template model; its address is `server.target`."""
    from mmfusion.serving import build_server

    server = build_server([MODEL], port=0).start()
    server.target = f"127.0.0.1:{server.port}"
    yield server
    server.stop(grace=1.0)


@pytest.fixture
def mjpeg_camera():
    """A factory of MJPEG cameras, all killed after the test."""
    cameras: list[MjpegCamera] = []

    def start(frames: list[np.ndarray], fps: float = 10.0) -> MjpegCamera:
        camera = MjpegCamera(frames, fps).start()
        cameras.append(camera)
        return camera

    yield start
    for camera in cameras:
        camera.stop()


@pytest.fixture(scope="module")
def rtsp_camera(tmp_path_factory, template_board, tested_board):
    """A GStreamer RTSP server (system Python) at 15 fps: /cam0 and /cam1 serve the tested board, stamped."""
    reason = rtsp_unavailable()
    if reason:
        pytest.skip(reason)
    frames = tmp_path_factory.mktemp("rtsp") / "frames.rgb"
    camera = RtspCamera([tested_board], frames, mounts=2, fps=15).start()
    yield camera
    camera.stop()


def camera_file(cameras: list[dict], folder: Path, **sections) -> CamerasConfig:
    """A validated camera file with records under `folder` and quick reconnects."""
    raw = {"cameras": cameras, "record": {"folder": str(folder / "records")}, **sections}
    raw.setdefault("reconnect", {"initial_s": 0.1, "max_s": 0.5, "open_timeout_s": 3})
    return parse_cameras(raw, "test cameras", SAMPLES.parent)


def wait_for(condition, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll until `condition()` is truthy; its value, or an AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s")


def judged(camera: str, sequence: int, defect: bool = False, height: int = 120, width: int = 160) -> CameraResult:
    """A synthetic judged frame: a grey image; a defect has one 'short' box and a heatmap hot in it."""
    answer = pb.FrameResult(stream_id=camera, sequence_number=sequence)
    verdict = "defect" if defect else "pass"
    answer.smoothed_verdict = answer.result.verdict = verdict
    answer.result.verdict_score = 0.9 if defect else 0.1
    if defect:
        answer.result.boxes.append(pb.Box(x1=20, y1=40, x2=60, y2=80, label="short", score=0.8))
        heat = np.zeros((height, width), np.uint8)
        heat[40:80, 20:60] = 255
        answer.result.heatmap_png = cv2.imencode(".png", heat)[1].tobytes()
    image = np.full((height, width, 3), 128, np.uint8)
    return CameraResult(camera, sequence, image, answer, time.time(), 0.05, 0)
