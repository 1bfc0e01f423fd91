"""The camera section of `mmfusion demo`: the sample boards as camera files through the camera machinery.

Two cameras, built in code (`CamerasConfig`) over lossless video files written to a temp folder:
`boards` plays pcb_template.jpg and pcb_tested.jpg through pcb-template with the template as the
camera's reference; `frames` plays samples/frames/ through defect-anomaly (score and heatmap).
The live page runs on a free loopback port for the duration of the section and stops with it.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np

from mmfusion.cameras.config import CamerasConfig, parse_cameras
from mmfusion.cameras.overlay import draw
from mmfusion.cameras.stream import CameraResult
from mmfusion.media import decode_image

TEMPLATE_MODEL = "pcb-template"
ANOMALY_MODEL = "defect-anomaly"
CAMERA_MODELS = [TEMPLATE_MODEL, ANOMALY_MODEL]
SOURCE_FPS = 3.0  # frames per second in the demo's video files; cameras send up to twice that
SECTION_TIMEOUT_S = 60.0  # gives up waiting for every frame to be judged once


def write_video(images: list[np.ndarray], path: Path, fps: float) -> Path:
    """A lossless (FFV1 in Matroska) video of equal-sized RGB frames, one frame each 1/fps s."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=int(fps))
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "bgr0"  # FFV1's RGB: lossless
        for image in images:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def demo_cameras(samples: Path, folder: Path) -> tuple[CamerasConfig, dict[str, list[str]], dict[str, np.ndarray]]:
    """The demo's camera list, the source frame names per camera, and the source frames by name."""
    boards = ["pcb_template.jpg", "pcb_tested.jpg"]
    frames = [path.name for path in sorted((samples / "frames").glob("*.jpg"))]
    images = {name: decode_image(samples / name) for name in boards}
    images.update({name: decode_image(samples / "frames" / name) for name in frames})
    write_video([images[name] for name in boards], folder / "boards.mkv", SOURCE_FPS)
    write_video([images[name] for name in frames], folder / "frames.mkv", SOURCE_FPS)
    common = {"loop": True, "fps": 2 * SOURCE_FPS, "max_pending_frames": 1, "smoothing": {"window": 1, "min_count": 1}}
    raw = {
        "cameras": [
            {
                "name": "boards",
                "url": "boards.mkv",
                "model": TEMPLATE_MODEL,
                "reference": str((samples / boards[0]).resolve()),
            }
            | common,
            {"name": "frames", "url": "frames.mkv", "model": ANOMALY_MODEL} | common,
        ],
        "record": {"folder": str(folder / "records")},
        "reconnect": {"initial_s": 0.1, "max_s": 0.5, "open_timeout_s": 5.0},
        "view": {"host": "127.0.0.1", "port": 0},
    }
    return parse_cameras(raw, "demo cameras", folder), {"boards": boards, "frames": frames}, images


def _source_name(result: CameraResult, names: list[str], images: dict[str, np.ndarray]) -> str:
    """Which source frame a judged frame is (the files are lossless: the nearest one is exact)."""
    small = result.image[::16, ::16].astype(np.int16)
    return min(names, key=lambda name: np.abs(images[name][::16, ::16].astype(np.int16) - small).mean())


def _describe(result: CameraResult) -> str:
    answer = result.answer
    if answer.HasField("error"):
        return f"error: {answer.error.message}"
    verdict = answer.result
    text = f"{verdict.verdict} {verdict.verdict_score:.2f}"
    if result.camera == "boards":
        labels = sorted({box.label for box in verdict.boxes})
        return f"{text}, {len(verdict.boxes)} boxes" + (f" ({', '.join(labels)})" if labels else "")
    heat = (
        cv2.imdecode(np.frombuffer(verdict.heatmap_png, np.uint8), cv2.IMREAD_GRAYSCALE)
        if verdict.heatmap_png
        else None
    )
    heat_text = (
        f"heatmap {heat.shape[1]}x{heat.shape[0]}, peak {heat.max() / 255:.2f}" if heat is not None else "no heatmap"
    )
    return f"anomaly score {verdict.verdict_score:.2f} -> {verdict.verdict}, {heat_text}, {len(verdict.boxes)} boxes"


def camera_section(
    connect: Callable,
    samples: Path,
    out_dir: Path,
    while_live: Callable[[str], None] | None = None,
) -> dict[str, dict[str, CameraResult]]:
    """Run the demo cameras against the server `connect()` reaches until every source frame is judged once.

    Prints the live page's URL, the verdicts per frame and writes the drawn frames to `out_dir`;
    `while_live(url)` is called while the page and the cameras run. Returns camera -> frame name -> result.
    """
    from mmfusion.cameras.system import CameraSystem
    from mmfusion.cameras.view.app import LiveView
    from mmfusion.cameras.view.server import ViewServer

    out_dir.mkdir(parents=True, exist_ok=True)
    judged: dict[str, dict[str, CameraResult]] = {}
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="mmfusion-demo-cameras-") as temp:
        config, names, images = demo_cameras(samples, Path(temp))
        judged = {camera: {} for camera in names}
        done = threading.Event()

        def listener(result: CameraResult) -> None:
            name = _source_name(result, names[result.camera], images)
            with lock:
                judged[result.camera].setdefault(name, result)
                if all(len(judged[camera]) == len(names[camera]) for camera in names):
                    done.set()

        print(
            f"6. cameras: {len(names['boards'])} boards -> {TEMPLATE_MODEL} (reference pcb_template.jpg), "
            f"{len(names['frames'])} frames from frames/ -> {ANOMALY_MODEL}; video files at {SOURCE_FPS:g} fps, "
            "StreamInspect per camera"
        )
        started = time.perf_counter()
        system = CameraSystem(config, connect, record=False, listeners=[listener])
        view_server = None
        try:
            system.start()
            view_server = ViewServer(LiveView(system.board, None, config.view.max_fps), "127.0.0.1", 0).start()
            print(f"   live page on {view_server.url}/ (it stops with the demo)", flush=True)
            if while_live is not None:
                while_live(view_server.url)
            done.wait(SECTION_TIMEOUT_S)
        finally:
            if view_server is not None:
                view_server.stop()
            system.stop()
        elapsed = time.perf_counter() - started
    for camera, frame_names in names.items():
        model = config.camera(camera).model
        print(f"   {camera} ({model}):")
        for index, name in enumerate(frame_names):
            result = judged[camera].get(name)
            if result is None:
                print(f"   {name:24s} -> not judged in {SECTION_TIMEOUT_S:g} s")
                continue
            cv2.imwrite(str(out_dir / f"{camera}_{index:02d}_{Path(name).stem}.jpg"), draw(result))
            print(f"   {name:24s} -> {_describe(result)} ({result.latency_s * 1000:.0f} ms)")
    print(
        "   (the anomaly model was fitted on synthetic metal surfaces, not boards: refit it on good parts of your own)"
    )
    print(f"   {elapsed:.1f} s; drawn frames in {out_dir}; live page stopped")
    return judged
