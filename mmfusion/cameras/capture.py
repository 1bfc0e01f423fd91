"""A camera's reader thread: decode every frame, keep only the newest, reopen the source with backoff when it stops."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mmfusion.cameras.config import CameraSpec, ReconnectSpec
from mmfusion.cameras.sources import FrameSource, SourceError

LOG = logging.getLogger(__name__)


@dataclass(eq=False)
class CapturedFrame:
    """A decoded frame: its number in this reader (from 1), pixels, and when it was decoded (wall and monotonic).

    `pixels` is the RGB array or the decoder's conversion to it, run when `image` is first read: most frames of a
    camera faster than its model are replaced in the slot unread, and then never converted.
    """

    number: int
    pixels: np.ndarray | Callable[[], np.ndarray]
    wall_time: float
    monotonic: float

    @functools.cached_property
    def image(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        return self.pixels() if callable(self.pixels) else self.pixels


class LatestFrame:
    """A one-frame slot: a new frame replaces one nobody took (counted as dropped); takers wait for a newer one."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._frame: CapturedFrame | None = None
        self._taken = True
        self.dropped = 0

    def put(self, frame: CapturedFrame) -> None:
        with self._condition:
            if not self._taken:
                self.dropped += 1
            self._frame, self._taken = frame, False
            self._condition.notify_all()

    def take(self, after: int, timeout: float) -> CapturedFrame | None:
        """The newest frame numbered above `after`, waiting up to `timeout` s; None if none came."""
        with self._condition:
            if not self._condition.wait_for(
                lambda: self._frame is not None and self._frame.number > after, timeout=timeout
            ):
                return None
            self._taken = True
            return self._frame


@dataclass
class ReaderStats:
    """Totals since start (read by the metrics collector and the live page)."""

    frames: int = 0
    reconnects: int = 0  # times the source was opened again after it stopped
    connected: bool = False
    last_error: str = ""


SourceOpener = Callable[[CameraSpec, float], FrameSource]


class CameraReader:
    """Reads one camera on a thread of its own into a LatestFrame; `stop()` ends it."""

    def __init__(self, spec: CameraSpec, reconnect: ReconnectSpec, opener: SourceOpener = FrameSource) -> None:
        self.spec = spec
        self.reconnect = reconnect
        self.latest = LatestFrame()
        self.stats = ReaderStats()
        self._opener = opener
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{spec.name}", daemon=True)
        self._number = 0

    def start(self) -> CameraReader:
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Ask the thread to end (it does after its current read); `stop()` also waits for it."""
        self._stop.set()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout if timeout is not None else self.reconnect.open_timeout_s + 1)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        delay = self.reconnect.initial_s
        opened_before = False
        while not self._stop.is_set():
            try:
                with self._opener(self.spec, self.reconnect.open_timeout_s) as source:
                    if opened_before:
                        self.stats.reconnects += 1
                    opened_before = True
                    LOG.info("camera %s: connected to %s", self.spec.name, self.spec.url)
                    for image in source.frames():
                        if not self.stats.connected:
                            self.stats.connected, delay = True, self.reconnect.initial_s
                        self._publish(image)
                        if self._stop.is_set():
                            return
            except SourceError as error:
                self.stats.last_error = str(error)
                LOG.warning("%s; retrying in %.2f s", error, delay)
            except Exception as error:  # noqa: BLE001 - a reader must outlive any one broken frame or source
                self.stats.last_error = f"camera {self.spec.name}: {type(error).__name__}: {error}"
                LOG.exception("camera %s: reader failed; retrying in %.2f s", self.spec.name, delay)
            finally:
                self.stats.connected = False
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self.reconnect.max_s)

    def _publish(self, image: np.ndarray | Callable[[], np.ndarray]) -> None:
        self._number += 1
        self.stats.frames += 1
        self.latest.put(CapturedFrame(self._number, image, time.time(), time.monotonic()))
