"""Single-label classification head: a cosine classifier, optionally imprinted from examples."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from mmfusion.config import HeadSpec, LocalPath, PartParams
from mmfusion.heads.base import Head, label_results
from mmfusion.registry import HEADS
from mmfusion.types import Embedding


class Example(BaseModel):
    """One labelled example used to imprint a class prototype; any subset of modalities."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    image: LocalPath | None = None
    video: LocalPath | None = None
    audio: LocalPath | None = None
    text: str | None = None

    @model_validator(mode="after")
    def _some_input(self) -> Example:
        if not any((self.image, self.video, self.audio, self.text)):
            raise ValueError(f"example for label '{self.label}' has no image, video, audio or text")
        return self


class ClassificationParams(PartParams):
    """`params:` for the classification head."""

    scale: float = Field(default=10.0, gt=0.0, description="logit scale (inverse temperature)")
    examples: list[Example] = Field(default_factory=list)


@HEADS.register("classification")
class ClassificationHead(Head):
    """Softmax over `labels`; logits = scale * cos(pooled, class weight) + bias.

    With `examples`, each class weight is imprinted (Qi et al., 2018) as the mean normalised fused
    embedding of that class's examples, so the head is usable before any training.
    """

    Params = ClassificationParams
    example_params: dict = {}

    def __init__(self, params: ClassificationParams, input_dim: int, spec: HeadSpec) -> None:
        super().__init__(params, input_dim, spec)
        if len(spec.labels) < 2:
            raise ValueError(f"classification head needs at least 2 labels, got {spec.labels}")
        unknown = sorted({e.label for e in params.examples} - set(spec.labels))
        if unknown:
            raise ValueError(f"examples use labels {unknown} that are not in labels {spec.labels}")
        self.weight = nn.Parameter(torch.randn(len(spec.labels), input_dim) / input_dim**0.5)  # (C, D)
        self.bias = nn.Parameter(torch.zeros(len(spec.labels)))  # (C,)

    @torch.no_grad()
    def imprint(self, prototypes: dict[str, torch.Tensor]) -> None:
        """Set each named class weight to the mean normalised embedding of its examples (N, D)."""
        for label, embeddings in prototypes.items():
            index = self.spec.labels.index(label)
            self.weight[index] = F.normalize(F.normalize(embeddings, dim=-1).mean(0), dim=-1)

    def forward(self, fused: Embedding) -> dict[str, torch.Tensor]:
        cosine = F.normalize(fused.pooled, dim=-1) @ F.normalize(self.weight, dim=-1).T  # (B, C)
        logits = self.params.scale * cosine + self.bias  # (B, C)
        return {"probabilities": logits.softmax(dim=-1)}

    def postprocess(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        return label_results(outputs["probabilities"], self.spec)  # (B, C) -> one result per item
