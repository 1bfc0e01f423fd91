"""What the live page shows of each camera: the newest judged frame drawn once per frame, history, gallery, rates."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import cv2

from mmfusion.cameras.metrics import FrameRate
from mmfusion.cameras.overlay import draw, to_jpeg
from mmfusion.cameras.stream import CameraResult, is_defect

THUMBNAIL_WIDTH = 320


@dataclass(frozen=True)
class Verdict:
    """One entry of a camera's verdict history."""

    time: float
    frame: int
    verdict: str
    smoothed: str
    score: float
    latency_ms: float


@dataclass(frozen=True)
class DefectShot:
    """One gallery entry: the drawn frame (JPEG) of a defect and what was found."""

    id: int
    time: float
    frame: int
    verdict: str
    labels: tuple[str, ...]
    jpeg: bytes


class LiveCamera:
    """One tile's state; `frame_jpeg()` draws the newest result the first time it is asked for, then reuses it."""

    def __init__(self, name: str, model: str, history: int, gallery: int) -> None:
        self.name = name
        self.model = model
        self.rate = FrameRate()
        self.history: deque[Verdict] = deque(maxlen=history)
        self.gallery: deque[DefectShot] = deque(maxlen=gallery)
        self._lock = threading.Lock()
        self._latest: CameraResult | None = None
        self._drawn: tuple[int, bytes] | None = None  # (sequence number, JPEG)
        self._shots = 0
        self._was_defect = False
        self.latencies: deque[float] = deque(maxlen=100)

    def __call__(self, result: CameraResult) -> None:
        """A stream listener: note the result; a frame whose smoothed verdict turns to a defect joins the gallery."""
        self.rate.tick()
        answer = result.answer.result
        entry = Verdict(
            result.captured_wall,
            result.sequence_number,
            result.verdict,
            result.smoothed,
            float(answer.verdict_score),
            result.latency_s * 1000,
        )
        defect = result.is_defect
        with self._lock:
            self._latest = result
            self.history.append(entry)
            self.latencies.append(result.latency_s)
            starts = defect and not self._was_defect
            self._was_defect = defect
        if starts:
            self._add_shot(result)

    def _add_shot(self, result: CameraResult) -> None:
        canvas = draw(result)
        scale = THUMBNAIL_WIDTH / canvas.shape[1]
        if scale < 1:
            canvas = cv2.resize(canvas, (THUMBNAIL_WIDTH, round(canvas.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        labels = tuple(sorted({box.label for box in result.answer.result.boxes if box.label}))
        with self._lock:
            self._shots += 1
            shot = DefectShot(
                self._shots, result.captured_wall, result.sequence_number, result.smoothed, labels, to_jpeg(canvas)
            )
            self.gallery.append(shot)

    @property
    def sequence(self) -> int:
        """The newest judged frame's number (0 before the first)."""
        latest = self._latest
        return latest.sequence_number if latest is not None else 0

    def frame_jpeg(self) -> tuple[int, bytes] | None:
        """(frame number, drawn JPEG) of the newest judged frame; None before the first."""
        with self._lock:
            latest, drawn = self._latest, self._drawn
        if latest is None:
            return None
        if drawn is not None and drawn[0] == latest.sequence_number:
            return drawn
        drawn = (latest.sequence_number, to_jpeg(draw(latest, self.rate.per_second())))
        with self._lock:
            if self._drawn is None or self._drawn[0] < drawn[0]:
                self._drawn = drawn
        return drawn

    def shot(self, shot_id: int) -> DefectShot | None:
        with self._lock:
            return next((shot for shot in self.gallery if shot.id == shot_id), None)

    def summary(self, history: int = 30) -> dict:
        """JSON-ready state for the page: rates, latency, the last verdicts, the gallery (without pixels)."""
        with self._lock:
            latest = self._latest
            verdicts = list(self.history)[-history:]
            latencies = sorted(self.latencies)
            shots = list(self.gallery)
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else 0.0
        return {
            "name": self.name,
            "model": self.model,
            "frame": latest.sequence_number if latest is not None else 0,
            "verdict": latest.smoothed if latest is not None else "",
            "defect": bool(latest is not None and latest.is_defect),
            "fps": round(self.rate.per_second(), 2),
            "latency_ms": round(latest.latency_s * 1000, 1) if latest is not None else None,
            "latency_p95_ms": round(p95 * 1000, 1),
            "history": [
                {
                    "time": v.time,
                    "frame": v.frame,
                    "verdict": v.smoothed,
                    "defect": is_defect(v.smoothed),
                    "score": round(v.score, 3),
                }
                for v in verdicts
            ],
            "gallery": [
                {"id": s.id, "time": s.time, "frame": s.frame, "verdict": s.verdict, "labels": list(s.labels)}
                for s in reversed(shots)
            ],
        }


class LiveBoard:
    """Every camera's LiveCamera, by name, in the file's order."""

    def __init__(self, cameras: list[LiveCamera]) -> None:
        self.cameras = {camera.name: camera for camera in cameras}
        self.started = time.time()

    def get(self, name: str) -> LiveCamera | None:
        return self.cameras.get(name)
