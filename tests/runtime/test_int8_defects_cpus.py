"""The INT8 export of the anomaly model made on each faked CPU (AVX2 only: 7-bit weights, AVX-512 VNNI: 8-bit)."""

from __future__ import annotations

import json
import shutil

import pytest

from mmfusion.data.manifest import load_manifest, write_manifest
from mmfusion.data.synthetic import make_synthetic_suite
from mmfusion.exporting import export_model
from mmfusion.fitting.model import fit_model
from mmfusion.repository.exports import export_dir
from mmfusion.runtime.exported import EXPORT_FILE
from mmfusion.runtime.quantize import FIDELITY_TARGET, MAX_WIDE_FRACTION
from tests.anomaly.conftest import IMAGE_SIZE, small_anomaly_model
from tests.runtime.test_cpu_flags import CPUS, fake_cpu


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """One fitted anomaly model, exported as calibrated INT8 on each faked CPU: {cpu: the export's graph record}."""
    root = tmp_path_factory.mktemp("int8-cpus")
    suite = make_synthetic_suite(root / "suite", n_train_good=20, n_val=16, n_test=4, size=IMAGE_SIZE, seed=1)
    fitted = root / "fitted" / "small-anomaly"
    fit_model(small_anomaly_model(root / "source" / "small-anomaly"), suite["train"], fitted, val_manifest=suite["val"])
    rows = load_manifest(suite["train"]) + load_manifest(suite["val"])
    calibration = write_manifest(root / "calibration.csv", [{"image": row.image, "label": row.label} for row in rows])
    graphs = {}
    for cpu in CPUS:
        model = shutil.copytree(fitted, root / cpu / "small-anomaly")
        with pytest.MonkeyPatch.context() as monkeypatch:
            fake_cpu(monkeypatch, cpu)
            export_model(model, "onnx", "int8", calibration=calibration, groups="image")
        graphs[cpu] = json.loads((export_dir(model, 1, "onnx") / EXPORT_FILE).read_text())["graphs"]["image"]
    return graphs


@pytest.mark.slow
@pytest.mark.parametrize("cpu", sorted(CPUS))
def test_int8_export_keeps_sensitive_weights_wide_on_either_cpu(cpu, exported):
    graph = exported[cpu]
    assert graph["weight_bits"] == (7 if cpu == "avx2" else 8)
    int8_only, reached = (
        graph["parity"]["int8_only_calibration_output_cosine"],
        graph["parity"]["calibration_output_cosine"],
    )
    assert int8_only < FIDELITY_TARGET  # all-INT8 EfficientNet-Lite0 falls short either way
    # what wide weights buy: clearly with 7-bit weights, less with 8-bit ones, but always some
    assert reached >= int8_only + (0.02 if graph["weight_bits"] == 7 else 0.001)
    cap = int(33 * MAX_WIDE_FRACTION)  # EfficientNet-Lite0 to stride 16 has 33 convolutions
    assert 1 <= len(graph["int16_weights"]) <= cap
    assert reached >= FIDELITY_TARGET or len(graph["int16_weights"]) == cap
