"""Multi-label flag head: an independent sigmoid per label, each with its own threshold."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mmfusion.config import HeadSpec, PartParams
from mmfusion.heads.base import Head
from mmfusion.registry import HEADS
from mmfusion.types import Embedding


@HEADS.register("multilabel")
class MultiLabelHead(Head):
    """Sigmoid per label; a flag is raised when its probability reaches its threshold.

    The threshold of a label is `thresholds[label]` when given, else the head's `threshold`.
    """

    Params = PartParams

    def __init__(self, params: PartParams, input_dim: int, spec: HeadSpec) -> None:
        super().__init__(params, input_dim, spec)
        if not spec.labels:
            raise ValueError("multilabel head needs at least 1 label")
        self.linear = nn.Linear(input_dim, len(spec.labels))

    def forward(self, fused: Embedding) -> dict[str, torch.Tensor]:
        return {"probabilities": torch.sigmoid(self.linear(fused.pooled))}  # (B, C)

    def postprocess(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        thresholds = [self.spec.thresholds.get(label, self.spec.threshold) for label in self.spec.labels]
        results = []
        for probabilities in outputs["probabilities"]:
            scores = {label: float(p) for label, p in zip(self.spec.labels, probabilities)}
            flags = [label for label, p, t in zip(self.spec.labels, probabilities, thresholds) if p >= t]
            results.append({"flags": flags, "scores": scores})
        return results
