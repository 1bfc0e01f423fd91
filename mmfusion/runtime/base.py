"""Backend contract: named numpy arrays in, named numpy arrays out, with declared tensor specs."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from mmfusion.config import RuntimeSpec
from mmfusion.graph import PipelineGraph
from mmfusion.runtime.exported import OpenedExport
from mmfusion.runtime.tensors import TensorSpec


class Backend:
    """Runs a pipeline graph. Tensors cross this boundary; Python objects do not.

    Built as `cls(runtime)` with the model's `runtime:` block (None: that block's defaults), then
    `load(graph, export)`: the pipeline graph (eager back ends) or a verified export folder (compiled ones,
    `runs_export`). `input_specs` / `output_specs` declare the tensors of the full-modality graph.
    """

    registry_name: ClassVar[str]
    runs_export: ClassVar[bool] = False
    """True: `load` needs an exported folder (ONNX, TensorRT); False: it runs the graph itself."""

    def __init__(self, runtime: RuntimeSpec | None = None) -> None:
        self.runtime = runtime or RuntimeSpec(backend=self.registry_name)

    def load(self, graph: PipelineGraph | None, export: OpenedExport | None = None) -> None:
        """Prepare to run: the graph itself, or (when `runs_export`) the verified export built from it."""
        raise NotImplementedError

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch."""
        raise NotImplementedError

    def input_specs(self) -> list[TensorSpec]:
        """The inputs of the graph that reads every modality."""
        raise NotImplementedError

    def output_specs(self) -> list[TensorSpec]:
        """The '<head>.<key>' outputs of the graph."""
        raise NotImplementedError

    @property
    def precision(self) -> str:
        """The precision the graph runs at (exported back ends: the export's)."""
        return self.runtime.precision or "fp32"

    def describe(self) -> str:
        """One line: backend, precision, device (what `mmfusion describe` and logs show)."""
        return f"{self.registry_name} {self.runtime.precision or 'fp32'} on {self.runtime.device}"

    def close(self) -> None:
        """Release what `load` acquired."""
