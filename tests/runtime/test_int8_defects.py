"""INT8 parity on the synthetic defect suite: ORT static INT8 (alone and with the FP32 re-check) against torch FP32."""

from __future__ import annotations

import json

import pytest

from mmfusion.config import RuntimeSpec
from mmfusion.data.manifest import load_manifest, write_manifest
from mmfusion.data.synthetic import make_synthetic_suite
from mmfusion.evaluation.anomaly import image_metrics, score_rows
from mmfusion.exporting import export_model
from mmfusion.fitting.model import fit_model
from mmfusion.pipeline import Pipeline
from mmfusion.repository.exports import export_dir
from mmfusion.runtime.exported import EXPORT_FILE
from mmfusion.runtime.quantize import FIDELITY_TARGET, MAX_WIDE_FRACTION
from mmfusion.runtime.recheck import DEFAULT_INT8_MARGIN
from tests.anomaly.conftest import IMAGE_SIZE, small_anomaly_model


@pytest.fixture(scope="module")
def fitted_int8(tmp_path_factory):
    """A small anomaly model fitted on good parts, exported as INT8 calibrated on its train and validation parts."""
    root = tmp_path_factory.mktemp("int8-defects")
    suite = make_synthetic_suite(root / "suite", n_train_good=20, n_val=16, n_test=100, size=IMAGE_SIZE, seed=1)
    model = small_anomaly_model(root / "source" / "small-anomaly")
    fitted = root / "fitted" / "small-anomaly"
    fit_model(model, suite["train"], fitted, val_manifest=suite["val"])
    # calibrate on what fitting saw, defective validation parts included: ranges from good parts alone
    # saturate on defects and pull their scores down (image AUROC 0.978 instead of 0.984)
    rows = load_manifest(suite["train"]) + load_manifest(suite["val"])
    calibration = write_manifest(root / "calibration.csv", [{"image": row.image, "label": row.label} for row in rows])
    export_model(fitted, "onnx", "int8", calibration=calibration, groups="image")
    return fitted, load_manifest(suite["test"])


@pytest.fixture(scope="module")
def scored(fitted_int8):
    """Scores from torch FP32, from INT8 alone (re-check off) and from INT8 with the default FP32 re-check."""
    model, rows = fitted_int8
    reference, _ = score_rows(Pipeline(model, backend="torch"), rows)
    quantized, _ = score_rows(Pipeline(model, backend=RuntimeSpec(backend="onnxruntime", recheck_margin=0.0)), rows)
    rechecking = Pipeline(model, backend="onnxruntime")
    rechecked, _ = score_rows(rechecking, rows)
    threshold = json.loads((model / "fitted" / "anomaly" / "calibration.json").read_text())["image_threshold"]
    return reference["anomaly"], quantized["anomaly"], rechecked["anomaly"], rechecking.recheck.items, threshold


@pytest.mark.slow
def test_int8_export_keeps_sensitive_weights_wide_and_records_fidelity(fitted_int8):
    model, _ = fitted_int8
    graph = json.loads((export_dir(model, 1, "onnx") / EXPORT_FILE).read_text())["graphs"]["image"]
    # all-INT8 EfficientNet-Lite0 falls short (its first depthwise convolution needs more than 8 weight bits)
    assert graph["parity"]["int8_only_calibration_output_cosine"] < FIDELITY_TARGET
    reached, wide = graph["parity"]["calibration_output_cosine"], graph["int16_weights"]
    # keeping weights wide must buy fidelity: clearly with 7-bit weights (AVX2 CPUs: all-INT8 about 0.97),
    # less where VNNI/AMX allow 8-bit weights (all-INT8 about 0.993), but always some
    gain = 0.02 if graph["weight_bits"] == 7 else 0.001
    assert reached >= graph["parity"]["int8_only_calibration_output_cosine"] + gain
    cap = int(33 * MAX_WIDE_FRACTION)  # EfficientNet-Lite0 to stride 16 has 33 convolutions
    assert 1 <= len(wide) <= cap
    assert reached >= FIDELITY_TARGET or len(wide) == cap  # the fewest that reach it, else all that are allowed


@pytest.mark.slow
def test_int8_image_auroc_drops_at_most_a_hundredth(scored):
    fp32, int8, _, _, _ = scored
    fp32_auroc, int8_auroc = image_metrics(fp32)["image_auroc"], image_metrics(int8)["image_auroc"]
    assert fp32_auroc >= 0.8  # the suite is separable, so the comparison means something
    assert int8_auroc >= fp32_auroc - 0.01, (fp32_auroc, int8_auroc)


def _agreement(a, b) -> float:
    return sum(x.label == y.label for x, y in zip(a, b)) / len(a)


@pytest.mark.slow
def test_int8_alone_moves_scores_by_a_few_percent_and_flips_only_borderline_parts(scored):
    fp32, int8, _, _, threshold = scored
    errors = [abs(q.score - f.score) / f.score for f, q in zip(fp32, int8)]
    assert sorted(errors)[len(errors) // 2] < 0.02  # median
    assert _agreement(fp32, int8) >= 0.93
    for f, q in zip(fp32, int8):
        if f.label != q.label:  # a flip: both scores near the threshold
            assert abs(f.score - threshold) / threshold < 0.05, (f.score, q.score, threshold)


@pytest.mark.slow
def test_int8_verdicts_agree_on_99_percent_with_the_fp32_recheck(scored):
    fp32, _, rechecked, items, _ = scored
    assert _agreement(fp32, rechecked) >= 0.99
    assert 0 < items <= 0.25 * len(fp32)  # the re-check is a small share of the parts, not all of them


@pytest.mark.slow
def test_recheck_replaces_exactly_the_borderline_parts_with_fp32_scores(scored):
    fp32, int8, rechecked, items, threshold = scored
    near = [abs(q.score - threshold) / threshold <= DEFAULT_INT8_MARGIN for q in int8]
    assert sum(near) == items
    for is_near, f, q, r in zip(near, fp32, int8, rechecked):
        expected = f if is_near else q
        assert r.score == pytest.approx(expected.score, rel=1e-5)
        assert r.label == expected.label
