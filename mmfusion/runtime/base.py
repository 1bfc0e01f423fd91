"""Backend contract: named numpy arrays in, named numpy arrays out, with declared tensor specs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mmfusion.config import RuntimeSpec
from mmfusion.graph import PipelineGraph

DYNAMIC = -1
"""A dimension that varies between calls (batch size, sequence length)."""


@dataclass(frozen=True)
class TensorSpec:
    """One named graph tensor: numpy dtype name and shape, DYNAMIC (-1) where a dimension varies."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TensorSpec:
        return cls(str(raw["name"]), str(raw["dtype"]), tuple(int(d) for d in raw["shape"]))

    def describe(self) -> str:
        """'image.pixels float32[-1,3,224,224]'."""
        return f"{self.name} {self.dtype}[{','.join(str(d) for d in self.shape)}]"


class Backend:
    """Runs a pipeline graph. Tensors cross this boundary; Python objects do not.

    Built as `cls(runtime)` with the model's `runtime:` block (None: that block's defaults), then
    `load(model_dir, graph)`. `input_specs` / `output_specs` declare the tensors of the full-modality graph.
    """

    registry_name: ClassVar[str]

    def __init__(self, runtime: RuntimeSpec | None = None) -> None:
        self.runtime = runtime or RuntimeSpec(backend=self.registry_name)

    def load(self, model_dir: str | Path, graph: PipelineGraph | None = None, version: int | None = None) -> None:
        """Prepare to run the model folder (reusing an already built graph when given) at `version`."""
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
