"""GPU parity: torch fp16/bf16 and torch.compile on CUDA, onnxruntime's CUDA provider, TensorRT engines.

Skipped with a reason where CUDA (or TensorRT, or onnxruntime-gpu) is absent; benchmarks/gpu_check.sh runs them.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mmfusion.exporting import export_model
from mmfusion.pipeline import Pipeline
from mmfusion.runtime.parity import compare_outputs, within_fp32_parity
from mmfusion.types import Inputs
from tests.conftest import random_image
from tests.runtime.conftest import BLUE, RED, copy_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; torch sees none here"),
]
BATCH = [
    Inputs(image=RED + 4, text="red board"),
    Inputs(image=BLUE + 4, text="blue"),
    Inputs(image=random_image(3), text="x"),
]


@pytest.fixture(scope="module")
def reference(tiny_fp32):
    return Pipeline(tiny_fp32, backend="torch").raw_outputs(BATCH)


def _cuda_pipeline(model, tmp_path, **runtime):
    return Pipeline(copy_model(model, tmp_path / "tiny", runtime={"device": "cuda", **runtime}))


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_torch_cuda_precisions_match_fp32_eager(tiny_fp32, tmp_path, reference, precision):
    outputs = _cuda_pipeline(tiny_fp32, tmp_path, backend="torch", precision=precision).raw_outputs(BATCH)
    parity = compare_outputs(reference, outputs)
    assert within_fp32_parity(parity) if precision == "fp32" else parity["min_cosine"] >= 0.995, parity


def test_torch_compile_with_cuda_graphs_matches_eager(tiny_fp32, tmp_path, reference):
    pipeline = _cuda_pipeline(tiny_fp32, tmp_path, backend="torch", compile=True, compile_mode="reduce-overhead")
    for _ in range(2):  # the second call replays the captured graph
        parity = compare_outputs(reference, pipeline.raw_outputs(BATCH))
    assert parity["min_cosine"] >= 0.9999, parity


def test_onnxruntime_cuda_provider_matches_torch(tiny_fp32, tmp_path, reference):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime has no CUDA provider ({ort.get_available_providers()}); needs onnxruntime-gpu")
    pipeline = _cuda_pipeline(tiny_fp32, tmp_path, backend="onnxruntime")
    assert pipeline.backend.providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    assert compare_outputs(reference, pipeline.raw_outputs(BATCH))["min_cosine"] >= 0.9999


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="tensorrt is not installed")
@pytest.mark.parametrize(("precision", "min_cosine"), [("fp32", 0.9999), ("fp16", 0.995)])
def test_tensorrt_engine_matches_torch_and_records_the_gpu(tiny_fp32, tmp_path, reference, precision, min_cosine):
    model = copy_model(tiny_fp32, tmp_path / "tiny", runtime={"backend": "tensorrt", "device": "cuda"})
    folder = export_model(model, "tensorrt", precision, batch_sizes=(1, 4))
    pipeline = Pipeline(model)
    assert compare_outputs(reference, pipeline.raw_outputs(BATCH))["min_cosine"] >= min_cosine
    from mmfusion.runtime.exported import read_export

    engine = read_export(folder).graphs["image+text"].engine
    assert engine["gpu"] == torch.cuda.get_device_name() and len(engine["profiles"]) == 2
