"""The anomaly head: fitted artifacts round trip exactly, maps keep the input size and aspect, unfitted says so."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from mmfusion.config import HeadSpec
from mmfusion.data.manifest import load_manifest
from mmfusion.fitting import patchcore as patchcore_fitting
from mmfusion.heads.patchcore.head import PatchCoreHead, PatchCoreParams
from mmfusion.pipeline import Pipeline
from mmfusion.types import Embedding, Inputs


def test_save_and_load_give_identical_scores_maps_and_boxes(model_dir, suite, tmp_path):
    folder = tmp_path / model_dir.name  # a model's name must match its folder
    shutil.copytree(model_dir, folder)
    pipeline = Pipeline(folder)
    head = pipeline.graph.heads["anomaly"]
    summary = patchcore_fitting.fit(pipeline, "anomaly", load_manifest(suite["train"])[:6], None)
    assert summary["images"] == 5 and summary["bank_size"] == round(5 * 256 * 0.05)  # one part held out
    images = [row.read_image() for row in load_manifest(suite["test"])[:4]]
    before = pipeline.predict_batch([Inputs(image=image) for image in images])
    head.save_fitted(folder / "fitted" / "anomaly")
    after = Pipeline(folder).predict_batch([Inputs(image=image) for image in images])
    for first, second in zip(before, after):
        first, second = first.outputs["anomaly"], second.outputs["anomaly"]
        assert first["raw_score"] == second["raw_score"] and first["label"] == second["label"]
        assert np.array_equal(first["anomaly_map"], second["anomaly_map"]) and first["boxes"] == second["boxes"]


def test_map_keeps_a_non_square_image_size_and_finds_the_defect(fitted, suite):
    row = next(row for row in load_manifest(suite["test"]) if row.label == "spot")
    (box,) = row.read_boxes()
    left = int(min(max(0, box.x1 - 20), 128 - 80))
    image = np.ascontiguousarray(row.read_image()[:, left : left + 80])  # (128, 80, 3): a tall crop
    result = Pipeline(fitted).predict(image=image).outputs["anomaly"]
    assert result["anomaly_map"].shape == (128, 80) and result["label"] == "defect"
    peak_y, peak_x = np.unravel_index(np.argmax(result["anomaly_map"]), (128, 80))
    assert box.y1 - 8 <= peak_y <= box.y2 + 8 and box.x1 - left - 8 <= peak_x <= box.x2 - left + 8
    top = result["boxes"][0]
    assert top["x1"] <= peak_x < top["x2"] and top["y1"] <= peak_y < top["y2"]


def test_decision_margin_is_the_distance_from_the_image_threshold(fitted, suite):
    pipeline = Pipeline(fitted)
    head = pipeline.graph.heads["anomaly"]
    threshold = head.calibration.image_threshold
    result = pipeline.predict(image=load_manifest(suite["test"])[0].read_image()).outputs["anomaly"]
    assert head.decision_margin(result) == pytest.approx(abs(result["raw_score"] - threshold) / threshold)
    assert head.decision_margin({**result, "raw_score": threshold * 1.02}) == pytest.approx(0.02)
    assert head.decision_margin({"fitted": False, "message": "not fitted"}) is None


def test_unfitted_head_says_so_and_forward_needs_a_grid():
    head = PatchCoreHead(PatchCoreParams(), 8, HeadSpec(name="anomaly.patchcore"))
    tokens = torch.randn(2, 6, 8)  # (B, h*w, D)
    fused = Embedding(tokens=tokens, pooled=tokens.mean(1), mask=torch.ones(2, 6, dtype=torch.bool), grid=(2, 3))
    outputs = head(fused)
    assert outputs["patch_features"].shape == (2, 2, 3, 8)
    assert [r["fitted"] for r in head.postprocess({k: v.numpy() for k, v in outputs.items()})] == [False, False]
    with pytest.raises(ValueError, match="patch_features"):
        head(Embedding.from_pooled(torch.randn(2, 8)))


def test_shipped_model_predicts_out_of_the_box():
    from mmfusion.data.synthetic import make_part

    rng = np.random.default_rng(1234)  # parts the shipped bank has never seen
    good, _, _ = make_part(rng, 256)
    crack, mask, _ = make_part(rng, 256, "crack")
    pipeline = Pipeline("defect-anomaly")
    good_result, crack_result = (
        p.outputs["anomaly"] for p in pipeline.predict_batch([Inputs(image=good), Inputs(image=crack)])
    )
    assert good_result["label"] == "good" and good_result["boxes"] == []
    assert crack_result["label"] == "defect" and crack_result["score"] > good_result["score"]
    top = crack_result["boxes"][0]
    assert mask[top["y1"] : top["y2"], top["x1"] : top["x2"]].any()
