"""`mmfusion export` argument errors, `describe` of exports, `predict --backend`, serving by the runtime block."""

from __future__ import annotations

import json

import pytest

from mmfusion.cli.main import main
from mmfusion.repository.exports import export_dir
from tests.runtime.conftest import BLUE, copy_model


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--precision", "int4"], "--precision 'int4': expected one of fp32, fp16, int8"),
        (["--backend", "openvino"], "--backend 'openvino': expected one of onnx, tensorrt"),
        (["--batch-sizes", "8,1"], "--batch-sizes '8,1': expected increasing whole numbers"),
        (["--batch-sizes", "1,x"], "--batch-sizes '1,x': expected increasing whole numbers"),
        (["--batch-sizes", "0"], "--batch-sizes '0': expected increasing whole numbers"),
        (["--calibration", "cal.csv"], "--calibration applies to --precision int8 only, not fp32"),
        (["--precision", "int8", "--calibration", "missing.csv"], "--calibration missing.csv: no such manifest file"),
    ],
)
def test_bad_export_arguments_give_one_line_errors(arguments, message, capsys):
    assert main(["export", "no-such-model", *arguments]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error


def test_tensorrt_export_without_tensorrt_says_how_to_get_it(capsys):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    assert main(["export", "no-such-model", "--backend", "tensorrt"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "TensorRT is not installed" in error and "pip install" in error


def test_describe_shows_exports_and_refuses_tampered_ones(tiny_fp32, tmp_path, capsys):
    assert main(["describe", str(tiny_fp32)]) == 0
    shown = capsys.readouterr().out
    assert "versions/1/onnx: fp32, groups image+text, image, text" in shown and "verified" in shown
    assert "image.pixels float32[-1,3,64,64]" in shown
    model = copy_model(tiny_fp32, tmp_path / "tiny")
    with (export_dir(model, 1, "onnx") / "text.onnx").open("ab") as handle:
        handle.write(b"\0")
    assert main(["describe", str(model)]) == 0
    assert "versions/1/onnx: REFUSED" in capsys.readouterr().out


def test_describe_shows_the_fp32_recheck_of_an_int8_export(tiny_int8, capsys):
    assert main(["describe", str(tiny_int8)]) == 0
    shown = capsys.readouterr().out
    assert "versions/1/onnx: int8" in shown and "FP32 re-check within 3% of a threshold" in shown


def test_predict_with_backend_flag_matches_torch(tiny_fp32, tmp_path, capsys):
    import cv2

    image = tmp_path / "blue.png"
    cv2.imwrite(str(image), cv2.cvtColor(BLUE, cv2.COLOR_RGB2BGR))
    results = {}
    for backend in ("torch", "onnxruntime"):
        assert main(["predict", str(tiny_fp32), "--image", str(image), "--backend", backend, "--json"]) == 0
        results[backend] = json.loads(capsys.readouterr().out)["outputs"]["colour"]
    assert results["onnxruntime"]["label"] == results["torch"]["label"] == "blue"
    assert results["onnxruntime"]["score"] == pytest.approx(results["torch"]["score"], abs=1e-4)


def test_the_service_runs_the_backend_of_the_runtime_block(tiny_fp32, tmp_path):
    from mmfusion.serving.models import ModelManager

    copy_model(tiny_fp32, tmp_path / "repo" / "tiny", runtime={"backend": "onnxruntime"})
    manager = ModelManager(tmp_path / "repo")
    try:
        entry = manager.load("tiny")
        assert entry.backend == "onnxruntime"
        assert entry.pipeline.backend.registry_name == "onnxruntime"
    finally:
        manager.close(grace=1.0)
