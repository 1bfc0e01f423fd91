"""The shipped pcb-template model: real DeepPCB pairs, a synthetic board, reference checks, fitted round trip."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from mmfusion.data.deeppcb import deeppcb_manifests
from mmfusion.data.manifest import Box, load_manifest, write_manifest
from mmfusion.evaluation.boxes import box_metrics
from mmfusion.fitting.detection import calibrate
from mmfusion.heads.detection.head import CALIBRATION_FILE, WEIGHTS_FILE
from mmfusion.pipeline import Pipeline
from mmfusion.repository.folder import FITTED_DIR, models_root
from mmfusion.security.integrity import safe_torch_load
from mmfusion.types import InputError, Inputs
from tests.detection.boards import SHORT_CENTRE, SPUR_CENTRE, clean_board, defective_board, near

MODEL = models_root() / "pcb-template"
HEAD = "defects"
VAL_PAIRS = ("20085002", "00041009")  # two pairs of the seed-0 random validation part (the shipped weights' split)


@pytest.fixture(scope="module")
def template_model() -> Pipeline:
    if not (MODEL / FITTED_DIR / HEAD / WEIGHTS_FILE).is_file():
        pytest.skip(f"{MODEL} has no fitted detector (run python -m mmfusion.fitting.deeppcb)")
    return Pipeline(MODEL)


def boxes_of(prediction) -> list[dict]:
    return prediction.outputs[HEAD]["boxes"]


def test_finds_a_short_and_a_spur_on_a_synthetic_board(template_model):
    clean = template_model.predict(image=clean_board(), reference=clean_board()).outputs[HEAD]
    assert clean["label"] == "pass" and clean["boxes"] == []
    found = boxes_of(template_model.predict(image=defective_board(), reference=clean_board()))
    assert any(b["label"] == "short" and near(b, SHORT_CENTRE) for b in found), found
    assert any(b["label"] == "spur" and near(b, SPUR_CENTRE) for b in found), found
    assert len(found) == 2, found


def test_finds_the_annotated_boxes_on_real_validation_pairs(template_model, shared_datasets, tmp_path):
    split = deeppcb_manifests(shared_datasets / "deeppcb-trainval", tmp_path, split="random")  # as shipped
    rows = [r for r in load_manifest(split["val"]) if r.image.name.removesuffix("_test.jpg") in VAL_PAIRS]
    assert len(rows) == len(VAL_PAIRS)
    predictions = template_model.predict_batch(
        [Inputs(image=r.read_image(), reference=r.read_reference()) for r in rows]
    )
    found = [[_box(b) for b in boxes_of(p)] for p in predictions]
    metrics = box_metrics(found, [r.read_boxes() for r in rows])
    assert metrics["overall"]["fscore"] >= 0.9, metrics["overall"]
    assert all(p.outputs[HEAD]["label"] == "defect" for p in predictions)


def _box(result: dict) -> Box:
    return Box(result["x1"], result["y1"], result["x2"], result["y2"], result["label"], result["score"])


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        (None, "reference_image: missing"),
        (np.zeros((320, 640, 3), np.uint8), "reference_image: size 640x320 differs from the image's 640x640"),
    ],
)
def test_missing_or_missized_reference_is_refused(tiny_template, reference, message):
    with pytest.raises(InputError, match=message):
        tiny_template.predict(image=clean_board(), reference=reference)


def test_a_reference_that_is_not_an_image_is_refused(tiny_template):
    with pytest.raises(InputError, match="reference_image"):
        tiny_template.predict(image=clean_board(), reference=b"not an image")


@pytest.fixture(scope="module")
def tiny_template(tmp_path_factory) -> Pipeline:
    """The shipped config with a narrow random-weight detector, for the input checks."""
    folder = tmp_path_factory.mktemp("tiny") / "pcb-template"
    folder.mkdir()
    text = re.sub(r"width: \d+", "width: 4", (MODEL / "config.yaml").read_text())
    (folder / "config.yaml").write_text(text)
    return Pipeline(folder)


@pytest.fixture()
def model_copy(template_model, tmp_path) -> Path:
    folder = tmp_path / "pcb-template"
    shutil.copytree(MODEL, folder, ignore=shutil.ignore_patterns("manifest.json"))  # the tests rewrite fitted/
    return folder


def synthetic_rows(folder: Path) -> list:
    """A two-row manifest of synthetic pairs with their boxes, for calibration."""
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "template.png"), clean_board())
    cv2.imwrite(str(folder / "tested.png"), defective_board())
    (folder / "boxes.txt").write_text("235 125 265 178 short\n322 410 352 440 spur\n")
    (folder / "none.txt").write_text("")
    rows = [
        {
            "image": folder / "tested.png",
            "label": "defect",
            "reference": folder / "template.png",
            "boxes": folder / "boxes.txt",
        },
        {
            "image": folder / "template.png",
            "label": "good",
            "reference": folder / "template.png",
            "boxes": folder / "none.txt",
        },
    ]
    return load_manifest(write_manifest(folder / "rows.csv", rows))


def test_fitted_folder_round_trip_gives_identical_outputs(template_model, model_copy):
    # torch on both sides: `backend: auto` measures INT8 against FP32 speed for each folder's export, and with the
    # shipped weights INT8 is about 1.2x FP32, near MIN_SPEEDUP, so a busy machine may choose differently
    head = template_model.graph.heads[HEAD]
    head.save_fitted(model_copy / FITTED_DIR / HEAD)
    original, reloaded = Pipeline(MODEL, backend="torch"), Pipeline(model_copy, backend="torch")
    pair = Inputs(image=defective_board(), reference=clean_board())
    before, after = original.raw_outputs([pair]), reloaded.raw_outputs([pair])
    assert set(before) == set(after)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    assert boxes_of(original.predict(pair)) == boxes_of(reloaded.predict(pair))


def test_calibrate_changes_only_the_stored_threshold(model_copy, tmp_path):
    # torch: `backend: auto` may pick another INT8 graph for other thresholds (its check compares the boxes drawn)
    pipeline = Pipeline(model_copy, backend="torch")
    head = pipeline.graph.heads[HEAD]
    rows = synthetic_rows(tmp_path / "rows")
    pair = Inputs(image=defective_board(), reference=clean_board())
    raw_before = pipeline.raw_outputs([pair])
    weights_before = safe_torch_load(model_copy / FITTED_DIR / HEAD / WEIGHTS_FILE)
    strict = calibrate(pipeline, HEAD, rows, "fdr", 0.0)
    head.save_fitted(model_copy / FITTED_DIR / HEAD)
    stored = json.loads((model_copy / FITTED_DIR / HEAD / CALIBRATION_FILE).read_text())
    assert stored["threshold"] == pytest.approx(strict["threshold"]) and stored["rule"] == "fdr"
    assert strict["false_detection_rate"] == 0.0
    for key, value in pipeline.raw_outputs([pair]).items():
        np.testing.assert_array_equal(value, raw_before[key])
    weights_after = safe_torch_load(model_copy / FITTED_DIR / HEAD / WEIGHTS_FILE)
    assert weights_after.keys() == weights_before.keys()
    assert all(np.array_equal(weights_after[k].numpy(), weights_before[k].numpy()) for k in weights_before)
    head.calibration["threshold"] = 1.01  # nothing can pass: only the threshold decides what is reported
    assert boxes_of(pipeline.predict(pair)) == [] and pipeline.predict(pair).outputs[HEAD]["label"] == "pass"
    reloaded = Pipeline(model_copy, backend="torch")
    assert reloaded.graph.heads[HEAD].threshold("short") == pytest.approx(strict["threshold"])
    for key, value in reloaded.raw_outputs([pair]).items():
        np.testing.assert_array_equal(value, raw_before[key])


def test_calibrate_refuses_an_unknown_rule(template_model, tmp_path):
    with pytest.raises(InputError, match="rule: 'best'"):
        calibrate(template_model, HEAD, synthetic_rows(tmp_path), "best", 0.1)
