"""Head contract: fused Embedding -> named tensors (forward) -> per-item results (postprocess)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from mmfusion.config import HeadSpec, PartParams
from mmfusion.types import Embedding


class Head(nn.Module):
    """Base head. Thresholds and label names stay in `spec` and are applied in `postprocess`."""

    Params: ClassVar[type[PartParams]] = PartParams
    registry_name: ClassVar[str]
    example_params: ClassVar[dict] = {}
    example_grid: ClassVar[tuple[int, int] | None] = None
    """(h, w) for heads that read a spatial token grid: contract tests then feed (B, h*w, D) tokens."""
    """Small params that the contract tests build this part with."""
    reads_image_sizes: ClassVar[bool] = False
    """True: postprocess also gets `image_sizes`, each item's input (height, width) (None without an image)."""
    reads_inputs: ClassVar[bool] = False
    """True: postprocess also gets `inputs`, each item's Inputs (None where the caller has none at hand)."""
    dense_outputs: ClassVar[bool] = False
    """True: outputs are dense maps (mostly background near zero) whose cosine against FP32 says little about
    INT8; `backend: auto` then judges an INT8 graph by the decisions alone (verdicts and boxes)."""

    def __init__(self, params: PartParams, input_dim: int, spec: HeadSpec) -> None:
        super().__init__()
        self.params = params
        self.input_dim = input_dim
        self.spec = spec

    def forward(self, fused: Embedding) -> dict[str, torch.Tensor]:  # noqa: D102
        raise NotImplementedError

    def postprocess(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Turn this head's raw batch outputs into one plain-Python result per item."""
        raise NotImplementedError

    def decision_margin(self, result: dict[str, Any]) -> float | None:
        """How far a result's score lies from this head's threshold, as a fraction of it; None: no threshold."""
        return None


def label_results(probabilities: np.ndarray, spec: HeadSpec) -> list[dict[str, Any]]:
    """Per item of (B, C) probabilities: the best label (None under its threshold), its score and every score."""
    results = []
    for item in probabilities:
        best = int(np.argmax(item))
        label = spec.labels[best]
        results.append(
            {
                "label": label if item[best] >= spec.thresholds.get(label, 0.0) else None,
                "score": float(item[best]),
                "scores": {name: float(p) for name, p in zip(spec.labels, item)},
            }
        )
    return results
