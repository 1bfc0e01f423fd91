"""Defect records: the frame as JPEG, its heatmap PNG and one JSON line each, in a folder kept under limits.

Layout under the record folder:

    defects.jsonl                     one line per defect: time, camera, frame, verdicts, score, boxes, files
    defects.1.jsonl ...               older lines, rotated with the frames they name
    <camera>/<time>_<frame>.jpg       the frame as sent (after the ROI crop)
    <camera>/<time>_<frame>_heat.png  the heatmap, when the model made one

A frame is recorded when its smoothed (k-of-n) verdict is a defect, at most once per camera per
`min_interval_s`. Past `max_files` frame files or `max_bytes` in all, the oldest records go first.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from pathlib import Path

from mmfusion.cameras.config import RecordSpec
from mmfusion.cameras.stream import CameraResult, encode_jpeg

LOG = logging.getLogger(__name__)
LOG_NAME = "defects.jsonl"
MAX_LOG_BYTES = 4_000_000  # the JSON lines file is rotated past this size
KEPT_LOGS = 4


def _stamp(wall_time: float) -> str:
    """20260102T030405.678Z: sortable, and safe in file names."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(wall_time)) + f".{int(wall_time % 1 * 1000):03d}Z"


class DefectRecorder:
    """A listener of camera results that writes defects to `spec.folder`; thread safe."""

    def __init__(self, spec: RecordSpec) -> None:
        self.spec = spec
        self.folder = Path(spec.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.recorded = 0
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._files: deque[tuple[Path, int]] = deque()  # every record file, oldest first, with its size
        self._bytes = 0
        self._scan()

    def _scan(self) -> None:
        """Records left by an earlier run count against the limits too."""
        found = [(p.stat().st_mtime, p) for p in self.folder.glob("*/*") if p.suffix in (".jpg", ".png")]
        for _, path in sorted(found):
            size = path.stat().st_size
            self._files.append((path, size))
            self._bytes += size

    def __call__(self, result: CameraResult) -> None:
        if not result.is_defect:
            return
        with self._lock:
            last = self._last.get(result.camera)
            if last is not None and result.captured_wall - last < self.spec.min_interval_s:
                return
            self._last[result.camera] = result.captured_wall
            try:
                self._write(result)
            except OSError as error:
                LOG.error("camera %s: defect not recorded: %s", result.camera, error)

    def _write(self, result: CameraResult) -> None:
        folder = self.folder / result.camera
        folder.mkdir(exist_ok=True)
        stem = f"{_stamp(result.captured_wall)}_{result.sequence_number:08d}"
        written = [(folder / f"{stem}.jpg", encode_jpeg(result.image, 92))]
        answer = result.answer.result
        if answer.heatmap_png:
            written.append((folder / f"{stem}_heat.png", answer.heatmap_png))
        for path, data in written:
            path.write_bytes(data)
            self._files.append((path, len(data)))
            self._bytes += len(data)
        record = {
            "time": result.captured_wall,
            "utc": _stamp(result.captured_wall),
            "camera": result.camera,
            "frame": result.sequence_number,
            "model": answer.model,
            "verdict": answer.verdict,
            "smoothed_verdict": result.smoothed,
            "score": round(float(answer.verdict_score), 4),
            "latency_ms": round(result.latency_s * 1000, 1),
            "boxes": [
                {"x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2, "label": b.label, "score": round(b.score, 4)}
                for b in answer.boxes
            ],
            "image": str(written[0][0].relative_to(self.folder)),
            "heatmap": str(written[1][0].relative_to(self.folder)) if len(written) > 1 else None,
        }
        self._append_log(record)
        self.recorded += 1
        self._enforce_limits()

    def _append_log(self, record: dict) -> None:
        log = self.folder / LOG_NAME
        if log.exists() and log.stat().st_size > MAX_LOG_BYTES:
            (self.folder / f"defects.{KEPT_LOGS}.jsonl").unlink(missing_ok=True)
            for index in range(KEPT_LOGS - 1, 0, -1):
                older = self.folder / f"defects.{index}.jsonl"
                if older.exists():
                    older.replace(self.folder / f"defects.{index + 1}.jsonl")
            log.replace(self.folder / "defects.1.jsonl")
        with log.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _enforce_limits(self) -> None:
        while self._files and (len(self._files) > self.spec.max_files or self._bytes > self.spec.max_bytes):
            path, size = self._files.popleft()
            path.unlink(missing_ok=True)
            self._bytes -= size

    @property
    def usage(self) -> tuple[int, int]:
        """(files, bytes) of frame and heatmap files kept now."""
        with self._lock:
            return len(self._files), self._bytes
