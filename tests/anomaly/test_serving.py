"""A fitted anomaly folder gives the same verdict, score, boxes and heatmap through predict, the CLI and gRPC."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from mmfusion.cli.main import main
from mmfusion.client import InspectionClient
from mmfusion.data.manifest import load_manifest
from mmfusion.pipeline import Pipeline
from mmfusion.serving import build_server


@pytest.fixture(scope="module")
def defective(suite):
    return next(row for row in load_manifest(suite["test"]) if row.label == "crack")


def test_grpc_inspect_matches_predict(fitted, defective):
    expected = Pipeline(fitted).predict(image=defective.read_image()).outputs["anomaly"]
    assert expected["label"] == "defect" and expected["boxes"]
    with build_server([str(fitted)], port=0) as server, InspectionClient(f"127.0.0.1:{server.port}") as client:
        client.wait_ready(10)
        result = client.inspect("small-anomaly", image=defective.image, include_heatmap=True)
    head = result.heads["anomaly"]
    assert head.kind == "anomaly.patchcore" and head.label == expected["label"] == result.verdict
    assert head.score == pytest.approx(expected["score"], abs=1e-6)
    assert head.extra["raw_score"] == pytest.approx(expected["raw_score"], rel=1e-6)
    served = [(b.x1, b.y1, b.x2, b.y2, b.label, round(b.score, 5)) for b in head.boxes]
    local = [(b["x1"], b["y1"], b["x2"], b["y2"], b["label"], round(b["score"], 5)) for b in expected["boxes"]]
    assert served == local
    heatmap = cv2.imdecode(np.frombuffer(head.heatmap_png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert heatmap.shape == expected["anomaly_map"].shape
    assert np.unravel_index(heatmap.argmax(), heatmap.shape) == np.unravel_index(
        expected["anomaly_map"].argmax(), heatmap.shape
    )


def test_cli_predict_prints_the_verdict_and_writes_an_overlay(fitted, defective, tmp_path, capsys):
    overlay = tmp_path / "overlay.png"
    assert main(["predict", str(fitted), "--image", str(defective.image), "--json", "--overlay", str(overlay)]) == 0
    result = json.loads(capsys.readouterr().out)["outputs"]["anomaly"]
    assert result["label"] == "defect" and result["anomaly_map"].startswith("<128x128 map")
    picture = cv2.imread(str(overlay))
    assert picture.shape == (128, 128, 3) and not np.array_equal(picture, cv2.imread(str(defective.image)))
