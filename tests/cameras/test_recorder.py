"""Defect records: frame, heatmap and a JSON line per defect, at most one per interval, oldest removed past limits."""

from __future__ import annotations

import json

from mmfusion.cameras.config import RecordSpec
from mmfusion.cameras.recorder import DefectRecorder
from mmfusion.cameras.stream import CameraResult
from mmfusion.proto import inspection_pb2 as pb
from tests.conftest import random_image


def _result(sequence: int, verdict: str = "defect", at: float = 1000.0, camera: str = "cam") -> CameraResult:
    answer = pb.FrameResult(stream_id=camera, sequence_number=sequence, smoothed_verdict=verdict)
    answer.result.verdict, answer.result.model, answer.result.verdict_score = verdict, "pcb-template", 0.9
    answer.result.boxes.append(pb.Box(x1=1, y1=2, x2=30, y2=40, label="short", score=0.8))
    answer.result.heatmap_png = b"\x89PNG fake"
    image = random_image(sequence, 240, 320)  # noise: JPEG cannot shrink it much, so sizes are predictable
    return CameraResult(camera, sequence, image, answer, at + sequence, 0.05, 0)


def test_records_defects_only_once_per_interval_with_a_json_line_each(tmp_path):
    recorder = DefectRecorder(RecordSpec(folder=tmp_path, min_interval_s=5.0))
    recorder(_result(1, verdict="pass"))
    for sequence in (2, 3, 8):  # 3 is 1 s after 2: within the interval
        recorder(_result(sequence))
    lines = [json.loads(line) for line in (tmp_path / "defects.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == [2, 8]
    assert lines[0]["boxes"] == [{"x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 40.0, "label": "short", "score": 0.8}]
    assert lines[0]["image"].startswith("cam/") and (tmp_path / lines[0]["heatmap"]).read_bytes() == b"\x89PNG fake"
    assert recorder.recorded == 2 and recorder.usage[0] == 4


def test_the_oldest_records_go_first_past_max_files_or_max_bytes(tmp_path):
    recorder = DefectRecorder(RecordSpec(folder=tmp_path / "a", max_files=10, min_interval_s=0))
    for sequence in range(1, 13):
        recorder(_result(sequence))
    kept = sorted(path.name for path in (tmp_path / "a" / "cam").iterdir())
    assert len(kept) == 10
    assert not any("00000001" in name for name in kept) and any("00000012" in name for name in kept)

    one = recorder.usage[1] // 10  # about one file's bytes
    recorder = DefectRecorder(RecordSpec(folder=tmp_path / "b", max_bytes=max(1_000_000, 3 * one), min_interval_s=0))
    for sequence in range(1, 40):
        recorder(_result(sequence))
    files, size = recorder.usage
    assert size <= max(1_000_000, 3 * one) and files < 2 * 39
    on_disk = sum(path.stat().st_size for path in (tmp_path / "b" / "cam").iterdir())
    assert on_disk == size


def test_a_new_recorder_counts_what_an_earlier_run_left(tmp_path):
    first = DefectRecorder(RecordSpec(folder=tmp_path, max_files=10, min_interval_s=0))
    for sequence in range(1, 5):
        first(_result(sequence))
    second = DefectRecorder(RecordSpec(folder=tmp_path, max_files=10, min_interval_s=0))
    assert second.usage == first.usage
    for sequence in range(5, 12):
        second(_result(sequence))
    assert second.usage[0] == 10 and len(list((tmp_path / "cam").iterdir())) == 10
