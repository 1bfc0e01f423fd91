"""The runtime: block, provider choice, torch options and the pure-Python parts of the TensorRT backend."""

from __future__ import annotations

import pytest
import torch

from mmfusion.config import ConfigError, RuntimeSpec, parse_config
from mmfusion.runtime.onnx_backend import choose_providers
from mmfusion.runtime.specs import default_groups, parse_groups
from mmfusion.runtime.tensorrt_backend import check_engine_metadata, choose_profile, profile_shapes
from mmfusion.runtime.tensors import DYNAMIC, TensorSpec
from mmfusion.types import InputError, Modality
from tests.runtime.conftest import tiny_config


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        ({"backend": "torch", "precision": "fp16"}, "precision fp16 on torch needs device: cuda"),
        ({"backend": "torch", "precision": "int8"}, "precision int8 is not available on torch"),
        ({"backend": "onnxruntime", "compile": True}, "compile: true applies to the torch backend only"),
        ({"backend": "tensorrt"}, "backend tensorrt runs on NVIDIA GPUs only; set device: cuda"),
        ({"backend": "torch", "providers": ["CPUExecutionProvider"]}, "providers apply to the onnxruntime backend"),
        ({"backend": "openvino"}, "'openvino' is not a known backend; allowed: onnxruntime, tensorrt, torch"),
        ({"threads": 0}, "runtime.threads: Input should be greater than or equal to 1"),
        ({"backend": "torch", "recheck_margin": 0.05}, "recheck_margin applies to exported back ends"),
        ({"backend": "onnxruntime", "recheck_margin": 1.5}, "runtime.recheck_margin: Input should be less than"),
        ({"speed": "fast"}, "runtime.speed: unknown key; allowed: backend, precision, device"),
    ],
)
def test_runtime_block_errors_name_the_key(runtime, message, tmp_path):
    with pytest.raises(ConfigError) as error:
        parse_config(tiny_config(runtime=runtime), "config.yaml", tmp_path)
    assert message in str(error.value) and "config.yaml: runtime" in str(error.value)


def test_runtime_block_defaults_to_torch_fp32_on_cpu(tmp_path):
    runtime = parse_config(tiny_config(), "config.yaml", tmp_path).runtime
    assert (runtime.backend, runtime.precision, runtime.device, runtime.compile) == ("torch", None, "cpu", False)


def test_providers_follow_device_and_configured_order():
    cpu_only = ["AzureExecutionProvider", "CPUExecutionProvider"]
    with_gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(RuntimeSpec(backend="onnxruntime"), with_gpu) == ["CPUExecutionProvider"]
    assert choose_providers(RuntimeSpec(backend="onnxruntime", device="cuda"), with_gpu) == with_gpu
    with pytest.raises(
        ConfigError, match="has only AzureExecutionProvider, CPUExecutionProvider; install onnxruntime-gpu"
    ):
        choose_providers(RuntimeSpec(backend="onnxruntime", device="cuda"), cpu_only)
    with pytest.raises(ConfigError, match="runtime.providers: CUDAExecutionProvider not in this onnxruntime"):
        choose_providers(RuntimeSpec(backend="onnxruntime", providers=["CUDAExecutionProvider"]), cpu_only)


def test_groups_cover_every_subset_and_check_names():
    assert default_groups([Modality.TEXT, Modality.IMAGE]) == ["image+text", "image", "text"]
    four = default_groups(list(Modality))
    assert four == ["audio+image+text+video", "audio", "image", "text", "video"]
    assert parse_groups("text+image, image", [Modality.IMAGE, Modality.TEXT]) == ["image+text", "image"]
    with pytest.raises(InputError, match=r"--groups 'image\+audio': 'image\+audio' is not a set of this model's"):
        parse_groups("image+audio", [Modality.IMAGE, Modality.TEXT])


def test_torch_compile_is_applied_with_the_configured_mode(monkeypatch):
    from mmfusion.runtime.torch_backend import TorchBackend

    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, **options: calls.append(options) or module)
    backend = TorchBackend(RuntimeSpec(compile=True, compile_mode="max-autotune", threads=torch.get_num_threads()))
    backend.load(torch.nn.Identity())
    assert calls == [{"mode": "max-autotune", "dynamic": True}]


def test_cuda_device_without_a_gpu_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from mmfusion.runtime.torch_backend import TorchBackend

    with pytest.raises(ConfigError, match="runtime.device: cuda, but torch sees no CUDA GPU"):
        TorchBackend(RuntimeSpec(device="cuda", precision="fp16"))


SPECS = [
    TensorSpec("image.pixels", "float32", (DYNAMIC, 3, 64, 64)),
    TensorSpec("text.input_ids", "int64", (DYNAMIC, DYNAMIC)),
]


def test_tensorrt_profiles_split_batch_ranges_and_bound_token_axes():
    profiles = profile_shapes(SPECS, (1, 8, 32), {"text.input_ids": 128})
    assert [p["image.pixels"] for p in profiles] == [
        ((1, 3, 64, 64), (1, 3, 64, 64), (1, 3, 64, 64)),
        ((2, 3, 64, 64), (8, 3, 64, 64), (8, 3, 64, 64)),
        ((9, 3, 64, 64), (32, 3, 64, 64), (32, 3, 64, 64)),
    ]
    assert profiles[2]["text.input_ids"] == ((9, 1), (32, 64), (32, 128))
    assert [choose_profile(profiles, batch) for batch in (1, 2, 8, 9, 32)] == [0, 1, 1, 2, 2]
    with pytest.raises(InputError, match="batch of 33: the TensorRT engine takes at most 32"):
        choose_profile(profiles, 33)


def test_tensorrt_engine_metadata_must_match_the_machine():
    machine = {"gpu": "NVIDIA H200", "compute_capability": "9.0", "tensorrt": "10.9.0"}
    check_engine_metadata({**machine, "file": "image.engine"}, machine, "image.engine")
    with pytest.raises(ConfigError, match="engine built for TensorRT '10.3.0', this machine has '10.9.0'; rebuild"):
        check_engine_metadata({**machine, "tensorrt": "10.3.0"}, machine, "image.engine")
    with pytest.raises(ConfigError, match="engine built for GPU 'NVIDIA A100', this machine has 'NVIDIA H200'"):
        check_engine_metadata({**machine, "gpu": "NVIDIA A100"}, machine, "image.engine")
