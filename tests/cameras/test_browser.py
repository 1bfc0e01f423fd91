"""The live page in headless Chromium: the overlay is drawn on a frame with known defects and the tiles update."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

import cv2
import numpy as np
import pytest

from mmfusion.cameras.system import CameraSystem
from mmfusion.cameras.view.app import LiveView
from mmfusion.cameras.view.server import ViewServer
from mmfusion.client import InspectionClient
from tests.cameras.conftest import MODEL, TEMPLATE, camera_file, wait_for

WINDOW = (1280, 900)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless browser: `make system-deps` installs Debian's chromium")


def _screenshot(browser: str, url: str, path) -> np.ndarray:
    """The page after 3 s of (virtual) time, as RGB."""
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
        f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=3000", f"--screenshot={path}", url,
    ]  # fmt: skip
    subprocess.run(command, capture_output=True, timeout=120, check=True)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _red(image: np.ndarray) -> np.ndarray:
    """Pixels of the overlay's defect red: the PCB images themselves are black and white."""
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return (r > 170) & (g < 110) & (b < 110)


def _frame(url: str) -> tuple[int, np.ndarray]:
    with urllib.request.urlopen(url, timeout=10) as response:
        number = int(response.headers["X-Frame-Number"])
        image = cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_COLOR)
    return number, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def test_live_page_draws_the_defects_and_updates(tmp_path, server, mjpeg_camera, tested_board, template_board):
    browser = _chromium()
    cameras = [
        {"name": "bad", "url": mjpeg_camera([tested_board], 8).url, "model": MODEL, "reference": str(TEMPLATE)},
        {"name": "good", "url": mjpeg_camera([template_board], 8).url, "model": MODEL, "reference": str(TEMPLATE)},
    ]
    for camera in cameras:
        camera["fps"] = 3
    results = []
    config = camera_file(cameras, tmp_path)
    system = CameraSystem(config, lambda: InspectionClient(server.target, timeout=None), listeners=[results.append])
    with system:
        view = ViewServer(LiveView(system.board)).start()
        try:
            wait_for(lambda: len({r.camera for r in results if r.sequence_number >= 3}) == 2, 90, what="3 frames each")
            first = _screenshot(browser, view.url + "/", tmp_path / "live-1.png")
            second = _screenshot(browser, view.url + "/", tmp_path / "live-2.png")
            detail = _screenshot(browser, view.url + "/camera/bad", tmp_path / "camera-bad.png")
            number_a, drawn = _frame(view.url + "/cameras/bad/frame.jpg")
            wait_for(lambda: system.board.get("bad").sequence > number_a, 30, what="a newer frame")
            number_b, _ = _frame(view.url + "/cameras/bad/frame.jpg")
        finally:
            view.stop()
    print(f"screenshots in {tmp_path}")

    # the drawn frame: red box outlines where the model found defects, on a board that has no red at all
    bad = next(r for r in results if r.camera == "bad" and r.sequence_number <= number_a and r.answer.result.boxes)
    assert not _red(tested_board).any()
    box = bad.answer.result.boxes[0]
    x1, y1, x2, y2 = (int(round(v)) for v in (box.x1, box.y1, box.x2, box.y2))
    outline = np.zeros(drawn.shape[:2], bool)
    outline[y1 : y2 + 1, x1 - 1 : x1 + 2] = outline[y1 : y2 + 1, x2 - 1 : x2 + 2] = True
    assert _red(drawn)[outline].mean() > 0.5, "no box outline drawn where the model found a defect"
    assert np.abs(drawn.astype(int) - tested_board)[outline].mean() > 40  # the overlay differs from the raw frame

    # the page: the defective tile carries red boxes, the good one none; later screenshots show newer frames
    half = WINDOW[0] // 2
    assert _red(first[:, :half]).sum() > 500, "the defective camera's tile shows no boxes"
    assert _red(first[60:600, half:]).sum() < 50, "the good camera's tile shows boxes"
    assert (first != second).any(), "the tiles did not change between two screenshots"
    assert _red(detail).sum() > 500
    assert number_b > number_a
