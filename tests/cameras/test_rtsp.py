"""A real RTSP camera (GStreamer's RTSP server, H.264) read by the cameras and judged through StreamInspect."""

from __future__ import annotations

import numpy as np
import pytest

from mmfusion.cameras.capture import CameraReader
from mmfusion.cameras.config import ReconnectSpec
from mmfusion.cameras.system import CameraSystem
from mmfusion.client import InspectionClient
from tests.cameras.conftest import MODEL, TEMPLATE, camera_file, wait_for
from tests.cameras.rtsp import RtspCamera, read_stamp, rtsp_unavailable


def test_an_rtsp_h264_camera_is_decoded_newest_first(tmp_path, rtsp_camera, tested_board):
    spec = camera_file([{"name": "rtsp", "url": rtsp_camera.url(0), "model": MODEL}], tmp_path).cameras[0]
    assert spec.kind == "rtsp"
    reader = CameraReader(spec, ReconnectSpec(initial_s=0.1, max_s=0.5)).start()
    try:
        stamps, number = [], 0
        for _ in range(6):
            frame = reader.latest.take(after=number, timeout=15)
            assert frame is not None, "no frame from the RTSP camera"
            stamps.append(read_stamp(frame.image))
            number = frame.number
        assert frame.image.shape == tested_board.shape
        body = (slice(64, None), slice(None))  # below the stamp strip
        assert np.abs(frame.image[body].astype(int) - tested_board[body]).mean() < 8  # H.264 of the same board
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # frames in order, each new
        assert stamps[-1] in rtsp_camera.pushes["/cam0"]  # the stamp names a frame the camera really pushed
    finally:
        reader.stop()


def test_a_camera_sending_preencoded_h264_in_a_loop_is_read_in_order(tmp_path, tested_board):
    reason = rtsp_unavailable()
    if reason:
        pytest.skip(reason)
    camera = RtspCamera([tested_board], tmp_path / "frames.rgb", fps=15, encoded_loop=30).start()
    spec = camera_file([{"name": "loop", "url": camera.url(0), "model": MODEL}], tmp_path).cameras[0]
    reader = CameraReader(spec, ReconnectSpec(initial_s=0.1, max_s=0.5)).start()
    try:
        stamps, number = [], 0
        while len(stamps) < 40:  # past the loop's end: frame 29 is followed by frame 0
            frame = reader.latest.take(after=number, timeout=15)
            assert frame is not None, "no frame from the looping RTSP camera"
            stamps.append(read_stamp(frame.image))
            number = frame.number
        body = (slice(64, None), slice(None))
        assert np.abs(frame.image[body].astype(int) - tested_board[body]).mean() < 8
        assert all(0 <= s < 30 for s in stamps)
        steps = [(later - earlier) % 30 for earlier, later in zip(stamps, stamps[1:])]
        assert all(1 <= step <= 3 for step in steps), stamps  # in order, newest first, across the wrap
        assert any(later < earlier for earlier, later in zip(stamps, stamps[1:]))  # it did wrap
        assert set(camera.pushes["/cam0"]) <= set(range(30))  # pushes are logged by loop position
    finally:
        reader.stop()
        camera.stop()


def test_rtsp_cameras_find_the_defects_end_to_end(tmp_path, server, rtsp_camera):
    cameras = [
        {"name": f"rtsp{n}", "url": rtsp_camera.url(n), "model": MODEL, "reference": str(TEMPLATE), "fps": 2}
        for n in range(2)
    ]
    results = []
    system = CameraSystem(
        camera_file(cameras, tmp_path),
        lambda: InspectionClient(server.target, timeout=None),
        listeners=[results.append],
    )
    with system:
        for name in ("rtsp0", "rtsp1"):
            wait_for(lambda n=name: sum(r.camera == n for r in results) >= 3, 90, what=f"3 answers of {name}")
    for name in ("rtsp0", "rtsp1"):
        judged = [r for r in results if r.camera == name]
        assert all(r.verdict == "defect" and r.answer.result.boxes for r in judged)
        assert judged[-1].smoothed == "defect"
        assert system.cameras[name].reader.stats.frames > system.cameras[name].stream.stats.sent  # 15 fps in, 2 out
