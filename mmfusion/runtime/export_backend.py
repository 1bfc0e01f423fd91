"""What the compiled back ends share: an export's info, its precision and the specs of its full graph."""

from __future__ import annotations

from typing import ClassVar

from mmfusion.runtime.base import Backend
from mmfusion.runtime.exported import ExportedGraph, ExportInfo
from mmfusion.runtime.tensors import TensorSpec


class ExportBackend(Backend):
    """A backend that runs a verified export (`runs_export`): ONNX Runtime, TensorRT."""

    runs_export: ClassVar[bool] = True
    info: ExportInfo | None = None

    @property
    def precision(self) -> str:
        return self.info.precision if self.info is not None else self.runtime.precision or "fp32"

    def _full_graph(self) -> ExportedGraph:
        """The exported graph that reads every modality (the most inputs)."""
        if self.info is None:
            raise RuntimeError(f"{type(self).__name__} specs asked for before load")
        return max(self.info.graphs.values(), key=lambda g: len(g.inputs))

    def input_specs(self) -> list[TensorSpec]:
        return self._full_graph().inputs

    def output_specs(self) -> list[TensorSpec]:
        return self._full_graph().outputs
