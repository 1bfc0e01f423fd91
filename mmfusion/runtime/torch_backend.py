"""PyTorch backend: the pipeline graph in eval mode without gradients; CPU or CUDA, fp16/bf16, torch.compile."""

from __future__ import annotations

import numpy as np
import torch

from mmfusion.config import ConfigError, RuntimeSpec
from mmfusion.graph import PipelineGraph
from mmfusion.registry import BACKENDS
from mmfusion.runtime.base import Backend
from mmfusion.runtime.exported import OpenedExport
from mmfusion.runtime.tensors import TensorSpec

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cuda_device(runtime: RuntimeSpec) -> torch.device:
    """The device of a runtime block; device: cuda without a usable GPU is a ConfigError."""
    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device: cuda, but torch sees no CUDA GPU (torch {torch.__version__}); use cpu")
    return torch.device(runtime.device)


@BACKENDS.register("torch")
class TorchBackend(Backend):
    """Eager PyTorch (optionally torch.compile'd), the reference the other backends are compared with.

    Floating-point inputs are cast to the runtime precision (fp16/bf16 need CUDA) and floating-point
    outputs come back as float32, so heads' postprocess sees the same dtypes on every backend.
    """

    def __init__(self, runtime: RuntimeSpec | None = None) -> None:
        super().__init__(runtime)
        self.device = cuda_device(self.runtime)
        self.dtype = DTYPES[self.runtime.precision or "fp32"]
        self.graph: PipelineGraph | None = None
        self._forward = None
        self._probed: tuple[list[TensorSpec], list[TensorSpec]] | None = None

    def load(self, graph: PipelineGraph | None, export: OpenedExport | None = None) -> None:
        if graph is None:
            raise ConfigError("backend torch runs a built pipeline graph; none was given")
        if self.runtime.threads is not None:
            torch.set_num_threads(self.runtime.threads)
        self.graph = graph.to(self.device, self.dtype).eval()
        self._forward = self.graph
        if self.runtime.compile:
            # dynamic=True: batch and sequence sizes vary between calls; one compiled graph serves them all.
            self._forward = torch.compile(self.graph, mode=self.runtime.compile_mode, dynamic=True)

    @torch.inference_mode()
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.graph is None or self._forward is None:
            raise RuntimeError("TorchBackend.run called before load")
        tensors = {}
        for name, array in inputs.items():
            tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.device, non_blocking=True)
            tensors[name] = tensor.to(self.dtype) if tensor.is_floating_point() else tensor
        outputs = self._forward(tensors)
        return {
            name: (value.float() if value.is_floating_point() else value).cpu().numpy()
            for name, value in outputs.items()
        }

    def _specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        from mmfusion.runtime.specs import group_of_inputs, probe_specs

        if self.graph is None:
            raise RuntimeError("TorchBackend specs asked for before load")
        if self._probed is None:
            self._probed = probe_specs(self.graph, group_of_inputs(self.graph.input_names()), self.run)
        return self._probed

    def input_specs(self) -> list[TensorSpec]:
        return self._specs()[0]

    def output_specs(self) -> list[TensorSpec]:
        return self._specs()[1]

    def describe(self) -> str:
        compiled = f", torch.compile({self.runtime.compile_mode})" if self.runtime.compile else ""
        return f"torch {self.runtime.precision or 'fp32'} on {self.device}{compiled}"

    def close(self) -> None:
        self.graph = None
        self._forward = None
