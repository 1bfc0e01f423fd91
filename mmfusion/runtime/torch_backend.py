"""PyTorch backend: runs the pipeline graph eagerly in eval mode without gradients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmfusion.graph import PipelineGraph
from mmfusion.registry import BACKENDS
from mmfusion.runtime.base import Backend


@BACKENDS.register("torch")
class TorchBackend(Backend):
    """Eager PyTorch on the CPU (or `device`), the reference the other backends are compared with."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.graph: PipelineGraph | None = None

    def load(self, model_dir: str | Path, graph: PipelineGraph | None = None) -> None:
        if graph is None:
            from mmfusion.pipeline import build_graph

            graph = build_graph(model_dir)
        self.graph = graph.to(self.device).eval()

    @torch.inference_mode()
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.graph is None:
            raise RuntimeError("TorchBackend.run called before load")
        tensors = {
            name: torch.from_numpy(np.ascontiguousarray(array)).to(self.device) for name, array in inputs.items()
        }
        return {name: value.cpu().numpy() for name, value in self.graph(tensors).items()}

    def close(self) -> None:
        self.graph = None
