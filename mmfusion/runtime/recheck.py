"""Borderline re-check: items a reduced-precision graph scores near a head's threshold are scored again in FP32."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from mmfusion.config import RuntimeSpec
from mmfusion.graph import PipelineGraph
from mmfusion.runtime.base import Backend

DEFAULT_INT8_MARGIN = 0.03
"""INT8 moves anomaly scores by up to about 5% (p95 3%) on the synthetic defect suite; 3% of the threshold
re-checks about a tenth of that suite and leaves its verdicts as FP32 gives them (docs/runtimes.md)."""
LOG = logging.getLogger(__name__)


def recheck_margin(runtime: RuntimeSpec, precision: str) -> float:
    """The margin in force: the runtime block's, else DEFAULT_INT8_MARGIN for int8 and 0 (off) otherwise."""
    if runtime.recheck_margin is not None:
        return 0.0 if precision == "fp32" else runtime.recheck_margin
    return DEFAULT_INT8_MARGIN if precision == "int8" else 0.0


def borderline(graph: PipelineGraph, per_item: list[dict[str, Any]], margin: float) -> list[int]:
    """Indices of the items one of whose head results lies within `margin` of that head's threshold."""
    near = []
    for index, results in enumerate(per_item):
        for head_name, head in graph.heads.items():
            distance = head.decision_margin(results[head_name]) if head_name in results else None
            if distance is not None and distance <= margin:
                near.append(index)
                break
    return near


class Fp32Recheck:
    """Re-scores borderline items with the pipeline's own FP32 torch graph (built on first use, on the CPU)."""

    def __init__(self, graph: PipelineGraph, runtime: RuntimeSpec, precision: str) -> None:
        self.graph = graph
        self.margin = recheck_margin(runtime, precision)
        self.threads = runtime.threads
        self.backend: Backend | None = None
        self._building = threading.Lock()
        self.items = 0
        """Items scored again so far (what the margin costs)."""

    def __call__(
        self,
        per_item: list[dict[str, Any]],
        arrays: dict[str, np.ndarray],
        items: list[Any],
        postprocess: Callable[[dict[str, np.ndarray], list[Any]], list[dict[str, Any]]],
    ) -> list[dict[str, Any]]:
        """`per_item` with the borderline items' results replaced by FP32 ones (`arrays`: the batch's inputs)."""
        if self.margin <= 0:
            return per_item
        near = borderline(self.graph, per_item, self.margin)
        if not near:
            return per_item
        rows = np.asarray(near)
        outputs = self._fp32().run({name: array[rows] for name, array in arrays.items()})
        self.items += len(near)
        LOG.debug("re-checked %d of %d items in FP32 (margin %.3f)", len(near), len(per_item), self.margin)
        replaced = list(per_item)
        for index, results in zip(near, postprocess(outputs, [items[i] for i in near])):
            replaced[index] = results
        return replaced

    def _fp32(self) -> Backend:
        """The torch backend over the pipeline's graph (FP32, CPU), built once."""
        with self._building:
            if self.backend is None:
                from mmfusion.runtime.torch_backend import TorchBackend

                backend = TorchBackend(RuntimeSpec(backend="torch", threads=self.threads))
                backend.load(self.graph)
                self.backend = backend
            return self.backend
