"""What depends on the CPU's int8 instructions, run both ways by faking its flags (AVX2 only, AVX-512 VNNI)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmfusion.exporting import export_model
from mmfusion.pipeline import Pipeline
from mmfusion.runtime import quantize
from mmfusion.runtime.exported import EXPORT_FILE, ExportInfo
from mmfusion.runtime.onnx_backend import warn_if_weights_may_saturate
from mmfusion.runtime.parity import compare_outputs
from mmfusion.types import Inputs
from tests.conftest import random_image
from tests.runtime.conftest import BLUE, RED, write_tiny_model

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
CPUS = {"avx2": AVX2, "avx512_vnni": AVX2 | {"avx512f", "avx512bw", "avx512_vnni"}}
REAL_DOT_PRODUCT = bool(quantize.cpu_int8_dot_product())  # what this machine really runs


def fake_cpu(monkeypatch: pytest.MonkeyPatch, cpu: str) -> None:
    """Make every CPU check in the package see `cpu`'s flags."""
    monkeypatch.setattr(quantize, "cpu_flags", lambda: set(CPUS[cpu]))


def largest_int8_weight(folder) -> int:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(folder / "image.onnx"))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    return max(int(np.abs(w.astype(np.int32)).max()) for w in weights if w.size > 1)


def test_cpu_flags_come_from_the_first_flags_line(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    monkeypatch.setattr(quantize, "CPUINFO", cpuinfo)
    assert quantize.cpu_flags() == {"fpu", "avx2", "avx512_vnni"}
    assert quantize.cpu_int8_dot_product() == ["avx512_vnni"]
    monkeypatch.setattr(quantize, "CPUINFO", tmp_path / "absent")  # not Linux: no flags, 7-bit weights
    assert quantize.cpu_flags() == set() and quantize.weight_bits() == 7


@pytest.mark.parametrize(
    ("flags", "dot_product", "bits"),
    [
        (set(), [], 7),
        (AVX2, [], 7),
        (AVX2 | {"avx_vnni"}, ["avx_vnni"], 8),
        (CPUS["avx512_vnni"], ["avx512_vnni"], 8),
        (AVX2 | {"amx_tile", "amx_int8"}, ["amx_int8"], 8),
    ],
)
def test_weight_bits_follow_the_int8_dot_product_flags(flags, dot_product, bits, monkeypatch):
    monkeypatch.setattr(quantize, "cpu_flags", lambda: set(flags))
    assert quantize.cpu_int8_dot_product() == dot_product
    assert quantize.weight_bits() == bits


@pytest.mark.parametrize("cpu", sorted(CPUS))
def test_auto_backend_says_why_int8_is_not_chosen(cpu, monkeypatch, tmp_path):
    from mmfusion.config import RuntimeSpec
    from mmfusion.pipeline import build_graph
    from mmfusion.repository.auto_int8 import int8_decision

    fake_cpu(monkeypatch, cpu)
    model = write_tiny_model(tmp_path / "tiny")  # no calibration/ images to check INT8 verdicts on

    def no_fp32_needed():
        raise AssertionError("the FP32 export was asked for, as if INT8 were to be built")

    decision = int8_decision(model, RuntimeSpec(backend="auto"), build_graph(model), "tiny", tmp_path, no_fp32_needed)
    assert decision.folder is None
    if cpu == "avx2":
        assert "no VNNI/AMX" in decision.note
    else:
        assert "avx512_vnni" in decision.note and "calibration/" in decision.note


@pytest.fixture(scope="module")
def exports(tmp_path_factory, calibration_manifest) -> dict:
    """The tiny model exported as static INT8 on each faked CPU: {cpu: model folder}."""
    made = {}
    for cpu in CPUS:
        with pytest.MonkeyPatch.context() as monkeypatch:
            fake_cpu(monkeypatch, cpu)
            model = write_tiny_model(tmp_path_factory.mktemp(f"int8-{cpu}") / "tiny")
            made[cpu] = export_model(model, "onnx", "int8", calibration=calibration_manifest, groups="image"), model
    return made


@pytest.mark.parametrize("cpu", sorted(CPUS))
def test_int8_export_records_the_weight_bits_of_the_cpu_it_was_made_on(cpu, exports):
    folder, _ = exports[cpu]
    info = ExportInfo.from_dict(json.loads((folder / EXPORT_FILE).read_text()))
    if cpu == "avx2":  # vpmaddubsw's int16 pair sums: 7-bit weights (reduce_range), [-64, 64]
        assert info.graphs["image"].weight_bits == 7 and largest_int8_weight(folder) <= 64
    else:
        assert info.graphs["image"].weight_bits == 8 and largest_int8_weight(folder) > 64


@pytest.mark.parametrize("run_on", sorted(CPUS))
@pytest.mark.parametrize("made_on", sorted(CPUS))
def test_int8_export_warns_only_where_its_weights_may_saturate_and_still_agrees(made_on, run_on, exports, monkeypatch):
    folder, model = exports[made_on]
    info = ExportInfo.from_dict(json.loads((folder / EXPORT_FILE).read_text()))
    fake_cpu(monkeypatch, run_on)
    assert warn_if_weights_may_saturate(info, folder) == (made_on == "avx512_vnni" and run_on == "avx2")
    reference, quantized = Pipeline(model, backend="torch"), Pipeline(model, backend="onnxruntime")
    images = [RED + 5, BLUE + 5, *[random_image(seed) for seed in range(4)]]
    parity = compare_outputs(
        reference.raw_outputs([Inputs(image=i) for i in images]),
        quantized.raw_outputs([Inputs(image=i) for i in images]),
    )
    # 8-bit weights saturate on a real CPU without int8 dot products (tiny model: cosine about 0.97)
    saturating = info.graphs["image"].weight_bits == 8 and not REAL_DOT_PRODUCT
    assert parity["min_cosine"] >= (0.95 if saturating else 0.99), parity
    for image, label in ((RED + 5, "red"), (BLUE + 5, "blue")):
        assert quantized.predict(image=image).outputs["colour"]["label"] == label
