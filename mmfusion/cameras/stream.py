"""A camera's StreamInspect call: the newest frame at the camera's rate, in order, with k-of-n smoothing on the server.

Each camera holds one call open to the server (local or remote). Frames go out at most `fps` per
second and only while fewer than `max_pending_frames` are unanswered (a model that is behind leaves the
frames in the camera's one-frame slot, where a newer one replaces them at no cost), cropped to the ROI
and JPEG-encoded; a golden-template camera sends its reference on the
first frame of each call (the server keeps it for the stream). Answers come back in order; every
answer is matched with the frame it judged and handed to the listeners. A call that fails (server
restarting, network) is opened again with backoff; sequence numbers keep increasing across calls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from mmfusion.cameras.capture import CameraReader, CapturedFrame
from mmfusion.cameras.config import CameraSpec, ReconnectSpec
from mmfusion.client import InspectionClient, ServerError
from mmfusion.media import decode_image
from mmfusion.proto import inspection_pb2 as pb

LOG = logging.getLogger(__name__)
TAKE_WAIT_S = 0.2  # how long the sender waits for a frame before looking whether it should stop


@dataclass(frozen=True)
class CameraResult:
    """One judged frame: the pixels sent (after the ROI crop), the server's answer, and timings."""

    camera: str
    sequence_number: int
    image: np.ndarray  # (H, W, 3) uint8 RGB, as sent
    answer: pb.FrameResult
    captured_wall: float  # when the reader decoded the frame (time.time())
    latency_s: float  # decoded -> answer received
    skipped: int  # frames the server dropped unserved since the previous answer

    @property
    def verdict(self) -> str:
        return self.answer.result.verdict if self.answer.HasField("result") else ""

    @property
    def smoothed(self) -> str:
        return self.answer.smoothed_verdict or self.verdict

    @property
    def is_defect(self) -> bool:
        return is_defect(self.smoothed)


def is_defect(verdict: str) -> bool:
    """A verdict that is not a pass (models say pass, good or ok) nor empty."""
    return verdict not in ("", "pass", "good", "ok")


def crop(image: np.ndarray, spec: CameraSpec) -> np.ndarray:
    """The ROI of a frame (clipped to the frame); the whole frame without one."""
    if spec.roi is None:
        return image
    roi = spec.roi
    return image[roi.y : roi.y + roi.height, roi.x : roi.x + roi.width]


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"frame {image.shape}: JPEG encoding failed")
    return data.tobytes()


@dataclass
class StreamStats:
    """Totals since start, for metrics and the live page."""

    sent: int = 0
    answered: int = 0
    server_dropped: int = 0  # frames sent but dropped by the server (it was behind)
    errors: int = 0  # frames answered with an error
    calls: int = 0  # StreamInspect calls opened
    connected: bool = False
    last_error: str = ""


Listener = Callable[[CameraResult], None]


class CameraStream:
    """Sends one camera's frames on a StreamInspect call and passes each answer to the listeners."""

    def __init__(
        self,
        spec: CameraSpec,
        reader: CameraReader,
        connect: Callable[[], InspectionClient],
        reconnect: ReconnectSpec,
        listeners: list[Listener] | None = None,
    ) -> None:
        self.spec = spec
        self.reader = reader
        self.stats = StreamStats()
        self.listeners = list(listeners or [])
        self._connect = connect
        self._reconnect = reconnect
        self._reference = pb.Image(data=encode_jpeg(decode_image(spec.reference), 95)) if spec.reference else None
        self._stop = threading.Event()
        self._sequence = 0
        self._in_flight: dict[int, tuple[CapturedFrame, np.ndarray]] = {}
        self._call = 0  # which call is current: an ended call's frame generator must not send or hold room
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._run, name=f"camera-stream-{spec.name}", daemon=True)

    def start(self) -> CameraStream:
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Ask the call to end (answers of frames already sent still come); `stop()` also waits for it."""
        self._stop.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _options(self) -> pb.StreamOptions:
        smoothing = self.spec.smoothing
        return pb.StreamOptions(
            max_pending_frames=self.spec.max_pending_frames,
            smoothing_window=smoothing.window,
            smoothing_min_count=smoothing.min_count,
            include_heatmap=self.spec.heatmap,
            heatmap_max_side=self.spec.heatmap_max_side,
        )

    def _has_room(self, call: int) -> bool:
        return len(self._in_flight) < self.spec.max_pending_frames or self._stop.is_set() or call != self._call

    def _frames(self, call: int) -> Iterator[pb.Frame]:
        """Frame messages of call number `call`: the newest frame, no more often than fps, until stopped.

        gRPC reads this generator on a thread of its own, which can still be inside it when the call has failed
        and the next one started: once `call` is not the current call it sends nothing and takes no room (a
        frame of a dead call counted in flight would leave the next call no room to send: the camera stalled).
        """
        interval = 1.0 / self.spec.fps
        first, last_number, next_due = True, 0, time.monotonic()
        while not self._stop.is_set() and call == self._call:
            wait = next_due - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                return
            # At most max_pending_frames unanswered: a frame the model cannot take yet stays in the camera's
            # slot, where a newer one replaces it for free, instead of being encoded, sent and dropped there.
            with self._lock:
                if not self._room.wait_for(lambda: self._has_room(call), TAKE_WAIT_S):
                    continue
            captured = self.reader.latest.take(last_number, TAKE_WAIT_S)
            if captured is None:
                continue
            last_number = captured.number
            image = crop(captured.image, self.spec)
            self._sequence += 1
            frame = pb.Frame(
                stream_id=self.spec.name,
                sequence_number=self._sequence,
                image=pb.Image(data=encode_jpeg(image, self.spec.jpeg_quality)),
            )
            frame.capture_time.FromNanoseconds(int(captured.wall_time * 1e9))
            if first:
                frame.model, first = self.spec.model, False
                frame.options.CopyFrom(self._options())
                if self._reference is not None:
                    frame.reference_image.CopyFrom(self._reference)
            with self._lock:
                if call != self._call:
                    return
                self._in_flight[self._sequence] = (captured, image)
            self.stats.sent += 1
            next_due = max(next_due + interval, time.monotonic() - interval)  # no burst after a stall
            yield frame

    def _run(self) -> None:
        delay = self._reconnect.initial_s
        while not self._stop.is_set():
            try:
                with self._connect() as client:
                    self.stats.calls += 1
                    for answer in client.stream(self._frames(self._call)):
                        if not self.stats.connected:
                            self.stats.connected, delay = True, self._reconnect.initial_s
                        self._answered(answer)
            except ServerError as error:
                self.stats.last_error = f"camera {self.spec.name}: server: {error}"
                LOG.warning("%s; calling again in %.2f s", self.stats.last_error, delay)
            except Exception as error:  # noqa: BLE001 - the camera must keep going after any one failure
                self.stats.last_error = f"camera {self.spec.name}: {type(error).__name__}: {error}"
                LOG.exception("camera %s: stream failed; calling again in %.2f s", self.spec.name, delay)
            finally:
                self.stats.connected = False
                with self._lock:
                    self._call += 1  # the ended call's generator stops; its frames in flight are forgotten
                    self._in_flight.clear()
                    self._room.notify_all()
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self._reconnect.max_s)

    def _answered(self, answer: pb.FrameResult) -> None:
        received = time.monotonic()
        with self._lock:
            for sequence in list(self._in_flight):
                if sequence < answer.sequence_number:
                    del self._in_flight[sequence]  # dropped by the server: listed in skipped_sequence_numbers
            sent = self._in_flight.pop(answer.sequence_number, None)
            self._room.notify_all()
        self.stats.answered += 1
        self.stats.server_dropped += len(answer.skipped_sequence_numbers)
        if answer.HasField("error"):
            self.stats.errors += 1
            self.stats.last_error = f"camera {self.spec.name}: frame {answer.sequence_number}: {answer.error.message}"
        if sent is None:
            return
        captured, image = sent
        result = CameraResult(
            camera=self.spec.name,
            sequence_number=answer.sequence_number,
            image=image,
            answer=answer,
            captured_wall=captured.wall_time,
            latency_s=received - captured.monotonic,
            skipped=len(answer.skipped_sequence_numbers),
        )
        for listener in self.listeners:
            try:
                listener(result)
            except Exception:  # noqa: BLE001 - a broken listener must not stop the camera
                LOG.exception("camera %s: listener %r failed", self.spec.name, listener)
