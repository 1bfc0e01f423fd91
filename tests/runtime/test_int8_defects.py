"""INT8 parity on the synthetic defect suite: ORT static INT8 against torch FP32 on a fitted anomaly model."""

from __future__ import annotations

import pytest

from mmfusion.anomaly.evaluation import image_metrics, score_rows
from mmfusion.anomaly.fitting import fit_model
from mmfusion.data.manifest import load_manifest
from mmfusion.data.synthetic import make_synthetic_suite
from mmfusion.pipeline import Pipeline
from mmfusion.runtime.export import export_model
from tests.anomaly.conftest import IMAGE_SIZE, small_anomaly_model


@pytest.fixture(scope="module")
def fitted_int8(tmp_path_factory):
    """A small anomaly model fitted on good parts, exported as INT8 calibrated on those good parts."""
    root = tmp_path_factory.mktemp("int8-defects")
    suite = make_synthetic_suite(root / "suite", n_train_good=20, n_val=16, n_test=100, size=IMAGE_SIZE, seed=1)
    model = small_anomaly_model(root / "source" / "small-anomaly")
    fitted = root / "fitted" / "small-anomaly"
    fit_model(model, suite["train"], fitted, val_manifest=suite["val"])
    export_model(fitted, "onnx", "int8", calibration=suite["train"], groups="image")
    return fitted, load_manifest(suite["test"])


@pytest.mark.slow
@pytest.mark.xfail(
    reason="static QDQ INT8 of the patch features shifts PatchCore distances: measured 83% verdict agreement and "
    "image AUROC 0.934 vs 0.984 FP32 (MinMax; entropy/percentile calibration and Conv-only quantisation no better); "
    "target 99% / -0.01 not met yet",
    strict=False,
)
def test_int8_verdicts_agree_and_auroc_holds(fitted_int8):
    model, rows = fitted_int8
    reference, _ = score_rows(Pipeline(model, backend="torch"), rows)
    quantized, _ = score_rows(Pipeline(model, backend="onnxruntime"), rows)
    fp32, int8 = reference["anomaly"], quantized["anomaly"]
    agreement = sum(a.label == b.label for a, b in zip(fp32, int8)) / len(rows)
    assert agreement >= 0.99, agreement
    fp32_auroc, int8_auroc = image_metrics(fp32)["image_auroc"], image_metrics(int8)["image_auroc"]
    assert fp32_auroc >= 0.8  # the suite is separable, so the comparison means something
    assert int8_auroc >= fp32_auroc - 0.01, (fp32_auroc, int8_auroc)
