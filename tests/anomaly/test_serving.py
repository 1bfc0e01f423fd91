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


def test_a_stream_can_ask_for_a_smaller_heatmap(fitted, defective):
    from mmfusion.client import image_message
    from mmfusion.proto import inspection_pb2 as pb

    expected = Pipeline(fitted).predict(image=defective.read_image()).outputs["anomaly"]["anomaly_map"]  # (128, 128)
    frames = [
        pb.Frame(
            stream_id="line",
            sequence_number=number,
            image=image_message(defective.image),
            model="small-anomaly",
            options=pb.StreamOptions(include_heatmap=True, heatmap_max_side=side),
        )  # fmt: skip
        for number, side in ((1, 48), (2, 0), (3, 500))
    ]
    with build_server([str(fitted)], port=0) as server, InspectionClient(f"127.0.0.1:{server.port}") as client:
        client.wait_ready(10)
        answers = list(client.stream(frames[:1]))  # the options are the stream's, set by its first frame
        answers += list(client.stream(frames[1:2])) + list(client.stream(frames[2:]))
    small, full, larger = (
        cv2.imdecode(np.frombuffer(a.result.heads["anomaly"].heatmap_png, np.uint8), cv2.IMREAD_GRAYSCALE)
        for a in answers
    )
    assert small.shape == (48, 48) and full.shape == larger.shape == expected.shape  # never enlarged
    peak = np.array(np.unravel_index(expected.argmax(), expected.shape)) * 48 / 128
    assert np.abs(np.array(np.unravel_index(small.argmax(), small.shape)) - peak).max() <= 2


def test_a_shrunk_heatmap_keeps_its_aspect():
    from mmfusion.serving.convert import _heatmap_png

    heat = np.random.default_rng(0).random((200, 320)).astype(np.float32)
    shapes = [cv2.imdecode(np.frombuffer(_heatmap_png(heat, side), np.uint8), 0).shape for side in (100, 0, 320, 1)]
    assert shapes == [(62, 100), (200, 320), (200, 320), (1, 1)]
