"""Camera readers: the newest frame wins (drops counted), sources are reopened with backoff, nothing leaks."""

from __future__ import annotations

import gc
import threading
import time

import av
import numpy as np

from mmfusion.cameras.capture import CameraReader, CapturedFrame, LatestFrame
from mmfusion.cameras.config import ReconnectSpec
from tests.cameras.conftest import camera_file, wait_for

QUICK = ReconnectSpec(initial_s=0.1, max_s=0.5, open_timeout_s=3)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def _frame(number: int) -> CapturedFrame:
    return CapturedFrame(number, np.zeros((2, 2, 3), np.uint8), time.time(), time.monotonic())


def test_latest_frame_keeps_the_newest_and_counts_the_ones_nobody_took():
    slot = LatestFrame()
    assert slot.take(after=0, timeout=0.01) is None
    for number in (1, 2, 3):
        slot.put(_frame(number))
    assert slot.take(after=0, timeout=0.01).number == 3
    assert slot.dropped == 2  # 1 and 2 were replaced before anyone took them
    assert slot.take(after=3, timeout=0.01) is None  # nothing newer yet
    slot.put(_frame(4))
    assert slot.take(after=3, timeout=0.01).number == 4 and slot.dropped == 2


def test_an_mjpeg_camera_is_read_and_its_drops_counted(tmp_path, mjpeg_camera, tested_board):
    camera = mjpeg_camera([tested_board], fps=20)
    spec = camera_file([{"name": "mjpeg", "url": camera.url, "model": "m"}], tmp_path).cameras[0]
    reader = CameraReader(spec, QUICK).start()
    try:
        first = reader.latest.take(after=0, timeout=10)
        assert first is not None and first.image.shape == tested_board.shape
        assert np.abs(first.image.astype(int) - tested_board).mean() < 3  # JPEG round trip of the same board
        wait_for(lambda: reader.stats.frames >= 10, 10, what="10 frames read")
        assert reader.stats.connected and reader.stats.reconnects == 0
        assert reader.latest.dropped >= 5  # nobody took them: all but the newest were replaced
    finally:
        reader.stop()
    assert not reader.alive


def test_a_killed_camera_is_reconnected_within_5_s_and_20_restarts_leak_nothing(tmp_path, mjpeg_camera, tested_board):
    small = tested_board[::4, ::4].copy()  # a cheap source: the test is about reconnecting
    camera = mjpeg_camera([small], fps=30)
    port = camera.port
    spec = camera_file([{"name": "flaky", "url": camera.url, "model": "m"}], tmp_path).cameras[0]
    reader = CameraReader(spec, QUICK).start()
    try:
        wait_for(lambda: reader.stats.connected, 10, what="first connection")
        threads_before, rss_before = None, None
        for restart in range(1, 21):
            camera.stop()
            wait_for(lambda: not reader.stats.connected, 5, what=f"restart {restart}: the reader noticing the kill")
            camera.port = port
            camera.start()
            restarted_at = time.monotonic()
            frames = reader.stats.frames
            wait_for(lambda seen=frames: reader.stats.frames > seen, 5, what=f"restart {restart}: frames again")
            assert time.monotonic() - restarted_at < 5.0
            assert reader.stats.reconnects == restart
            if restart == 3:  # after warm-up: FFmpeg, sockets and threads have reached their working set
                gc.collect()
                threads_before, rss_before = threading.active_count(), _rss_bytes()
        gc.collect()
        assert threading.active_count() <= threads_before
        assert _rss_bytes() - rss_before < 20 * 1024 * 1024, "memory grew over 17 reconnects"
    finally:
        reader.stop()


def test_a_video_file_is_read_at_its_own_rate_and_looped(tmp_path, tested_board):
    video = tmp_path / "board.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=20)
        stream.width, stream.height, stream.pix_fmt = 160, 160, "yuv420p"
        for index in range(10):  # half a second of video
            image = np.ascontiguousarray(tested_board[::4, ::4])
            image[:8, :8] = index * 20
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    spec = camera_file([{"name": "file", "url": str(video), "model": "m", "loop": True}], tmp_path).cameras[0]
    reader = CameraReader(spec, QUICK).start()
    started = time.monotonic()
    try:
        wait_for(lambda: reader.stats.frames >= 25, 10, what="25 frames (the file looped)")
        elapsed = time.monotonic() - started
        assert elapsed > 0.9, f"25 frames of a 20 fps file came in {elapsed:.2f} s: not paced"
        assert reader.stats.reconnects == 0  # looped by seeking, not reopened
    finally:
        reader.stop()
