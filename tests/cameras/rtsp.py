"""The GStreamer RTSP test camera (rtsp_camera.py, run by Debian's system Python) from the venv, and its stamps."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import numpy as np

SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT = Path(__file__).with_name("rtsp_camera.py")
STAMP_BITS, STAMP_BLOCK = 16, 16  # as rtsp_camera.py writes them
DEBIAN_PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
    "gstreamer1.0-plugins-ugly gstreamer1.0-rtsp"
)


def rtsp_unavailable() -> str | None:
    """Why the RTSP camera cannot run here (None when it can)."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} is absent; the RTSP test camera needs Debian's Python with GStreamer bindings"
    check = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
        "missing = [e for e in ('appsrc', 'x264enc', 'rtph264pay', 'videoconvert') if not Gst.ElementFactory.find(e)]; "
        "print(' '.join(missing))"
    )
    result = subprocess.run([SYSTEM_PYTHON, "-c", check], capture_output=True, text=True, timeout=60)
    if result.returncode != 0 or result.stdout.strip():
        what = result.stdout.strip() or result.stderr.strip().splitlines()[-1:]
        return f"GStreamer RTSP server unavailable ({what}); `make system-deps` installs {DEBIAN_PACKAGES}"
    return None


def read_stamp(image: np.ndarray) -> int:
    """The frame index rtsp_camera.py --stamp wrote into the top-left blocks of an RGB frame."""
    centre = STAMP_BLOCK // 2
    bits = [image[centre, bit * STAMP_BLOCK + centre].mean() > 127 for bit in range(STAMP_BITS)]
    return sum(int(bit) << index for index, bit in enumerate(bits))


class RtspCamera:
    """rtsp_camera.py serving `frames` (RGB, all one size) on /cam0.. at `fps`; `pushes[mount][index]` = unix time."""

    def __init__(
        self,
        frames: list[np.ndarray],
        frames_file: Path,
        mounts: int = 1,
        fps: int = 15,
        port: int = 0,
        encoded_loop: int = 0,
    ):
        """encoded_loop N: encode N stamped frames once and loop them (stamps repeat every N; see rtsp_camera.py)."""
        height, width = frames[0].shape[:2]
        frames_file.write_bytes(b"".join(np.ascontiguousarray(frame).tobytes() for frame in frames))
        self.command = [
            SYSTEM_PYTHON,
            str(SCRIPT),
            "--frames",
            str(frames_file),
            "--width",
            str(width),
            "--height",
            str(height),
            "--mounts",
            str(mounts),
            "--fps",
            str(fps),
            "--port",
            str(port or _free_port()),
            "--stamp",
            "--log",
            "--encoded-loop",
            str(encoded_loop),
        ]
        self.pushes: dict[str, dict[int, float]] = {f"/cam{n}": {} for n in range(mounts)}
        self.port = 0
        self._process: subprocess.Popen | None = None

    def url(self, mount: int = 0) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam{mount}"

    def start(self, timeout: float = 30.0) -> RtspCamera:
        self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True, bufsize=1)
        deadline = time.monotonic() + timeout
        line = self._process.stdout.readline()
        if not line.startswith("ready ") or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"RTSP test camera did not start: {line!r}")
        self.port = int(line.split()[1])
        threading.Thread(target=self._read_pushes, daemon=True).start()
        return self

    def _read_pushes(self) -> None:
        for line in self._process.stdout:
            parts = line.split()
            if len(parts) == 4 and parts[0] == "push":
                self.pushes[parts[1]][int(parts[2])] = float(parts[3])

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
            self._process = None


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
