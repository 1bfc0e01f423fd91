"""Cameras on StreamInspect against a real loopback server with pcb-template: verdicts, boxes, records, metrics."""

from __future__ import annotations

import json

import numpy as np
from prometheus_client import generate_latest

from mmfusion.cameras.system import CameraSystem
from mmfusion.client import InspectionClient
from tests.cameras.conftest import MODEL, TEMPLATE, camera_file, wait_for


def _system(config, server, **options) -> CameraSystem:
    return CameraSystem(config, lambda: InspectionClient(server.target, timeout=None), **options)


def test_defective_and_good_boards_with_their_reference(tmp_path, server, mjpeg_camera, tested_board, template_board):
    defective = mjpeg_camera([tested_board], fps=8)
    good = mjpeg_camera([template_board], fps=8)
    cameras = [
        {"name": "bad", "url": defective.url, "model": MODEL, "reference": str(TEMPLATE), "fps": 3},
        {"name": "good", "url": good.url, "model": MODEL, "reference": str(TEMPLATE), "fps": 3},
    ]
    config = camera_file(cameras, tmp_path, record={"folder": str(tmp_path / "records"), "min_interval_s": 0})
    results = []
    with _system(config, server, listeners=[results.append]) as system:
        wait_for(lambda: sum(r.camera == "bad" for r in results) >= 4, 60, what="4 judged frames of camera bad")
        wait_for(lambda: sum(r.camera == "good" for r in results) >= 4, 60, what="4 judged frames of camera good")
    bad = [r for r in results if r.camera == "bad"]
    good_results = [r for r in results if r.camera == "good"]
    assert [r.sequence_number for r in bad] == sorted(r.sequence_number for r in bad)  # in order
    assert all(r.verdict == "defect" and len(r.answer.result.boxes) >= 3 for r in bad)
    assert {box.label for r in bad for box in r.answer.result.boxes} <= {
        "open",
        "short",
        "mousebite",
        "spur",
        "copper",
        "pin-hole",
    }
    assert bad[0].answer.result.heatmap_png.startswith(b"\x89PNG")  # include_heatmap reached the server
    assert bad[-1].smoothed == "defect"  # 3 of the last 5 (k-of-n on the server)
    assert all(r.verdict == "pass" and not r.answer.result.boxes for r in good_results)
    assert all(0 < r.latency_s < 30 for r in results)

    lines = [json.loads(line) for line in (tmp_path / "records" / "defects.jsonl").read_text().splitlines()]
    assert lines and {line["camera"] for line in lines} == {"bad"}
    assert (tmp_path / "records" / lines[0]["image"]).read_bytes()[:2] == b"\xff\xd8"
    assert (tmp_path / "records" / lines[0]["heatmap"]).read_bytes()[:4] == b"\x89PNG"
    assert lines[0]["boxes"] and lines[0]["smoothed_verdict"] == "defect" and lines[0]["model"] == MODEL

    metrics = generate_latest(system.metrics.registry).decode()
    assert 'mmfusion_camera_latency_seconds_count{camera="bad"}' in metrics
    assert 'mmfusion_camera_defect_frames_total{camera="bad"}' in metrics
    assert 'mmfusion_camera_dropped_frames_total{camera="good",where="camera"}' in metrics
    assert 'mmfusion_camera_reconnects_total{camera="bad",what="source"} 0.0' in metrics
    summary = system.board.get("bad").summary()
    assert summary["verdict"] == "defect" and summary["gallery"] and summary["history"][-1]["defect"]


def test_roi_crop_and_a_missing_reference_is_a_frame_error(tmp_path, server, mjpeg_camera, tested_board):
    camera = mjpeg_camera([tested_board], fps=8)
    roi = {"x": 100, "y": 50, "width": 320, "height": 240}
    cameras = [{"name": "crop", "url": camera.url, "model": MODEL, "fps": 3, "roi": roi}]
    results = []
    with _system(camera_file(cameras, tmp_path), server, record=False, listeners=[results.append]) as system:
        wait_for(lambda: len(results) >= 2, 60, what="2 answers")
        stats = system.cameras["crop"].stream.stats
    assert results[0].image.shape == (240, 320, 3)
    assert np.abs(results[0].image.astype(int) - tested_board[50:290, 100:420]).mean() < 3  # after MJPEG
    answer = results[0].answer
    assert answer.HasField("error") and answer.error.code == "INVALID_ARGUMENT"
    assert "reference" in answer.error.message  # the model needs the golden template the camera did not give
    assert stats.errors >= 2 and "reference" in stats.last_error
