"""Opening a camera and decoding its frames with PyAV (FFmpeg): RTSP (H.264/H.265), HTTP MJPEG, V4L2 devices, files."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator

import av
import numpy as np

from mmfusion.cameras.config import CameraSpec

RTSP_OPTIONS = {"rtsp_transport": "tcp", "fflags": "nobuffer", "flags": "low_delay"}


class SourceError(Exception):
    """A source that cannot be opened or stopped giving frames; the message names the camera and the cause."""


def _device_path(url: str) -> str:
    """`usb:N` -> /dev/videoN; /dev/videoN as is."""
    return f"/dev/video{url.partition(':')[2]}" if url.startswith("usb:") else url


def _open(spec: CameraSpec, timeout_s: float) -> av.container.InputContainer:
    kind = spec.kind
    if kind == "rtsp":
        return av.open(spec.url, options=RTSP_OPTIONS, timeout=(timeout_s, timeout_s))
    if kind == "http":
        return av.open(spec.url, timeout=(timeout_s, timeout_s))
    if kind == "device":
        return av.open(_device_path(spec.url), format="v4l2", options={"framerate": f"{spec.fps:g}"})
    return av.open(spec.url)


class FrameSource:
    """One open source; `frames()` yields each decoded frame's conversion to (H, W, 3) uint8 RGB (a callable).

    Files are read at their own frame rate (like a camera), and from the start again with `loop`;
    live sources as fast as they send.
    """

    def __init__(self, spec: CameraSpec, timeout_s: float = 5.0) -> None:
        self.spec = spec
        try:
            self.container = _open(spec, timeout_s)
        except (av.error.FFmpegError, OSError) as error:
            raise SourceError(f"camera {spec.name}: cannot open {spec.url}: {error}") from None
        if not self.container.streams.video:
            self.container.close()
            raise SourceError(f"camera {spec.name}: {spec.url} has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.codec_context.flags |= av.codec.context.Flags.low_delay

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.container.close()
        except av.error.FFmpegError:
            pass

    def frames(self) -> Iterator[Callable[[], np.ndarray]]:
        """Each decoded frame as its RGB conversion, run by whoever uses the frame (a dropped one costs none)."""
        paced = self.spec.kind == "file"
        while True:
            started, first_time = time.monotonic(), None
            try:
                for frame in self.container.decode(self.stream):
                    if paced and frame.time is not None:
                        first_time = frame.time if first_time is None else first_time
                        delay = started + (frame.time - first_time) - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                    yield functools.partial(frame.to_ndarray, format="rgb24")
            except (av.error.FFmpegError, OSError) as error:
                raise SourceError(f"camera {self.spec.name}: {self.spec.url} stopped: {error}") from None
            if not (paced and self.spec.loop):
                raise SourceError(f"camera {self.spec.name}: {self.spec.url} ended")
            self.container.seek(0)
