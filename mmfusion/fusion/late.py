"""Late fusion: project each modality's pooled vector to one width and take a weighted sum."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from mmfusion.config import PartParams
from mmfusion.fusion.base import Fusion
from mmfusion.registry import FUSIONS
from mmfusion.types import Embedding, Modality


class LateParams(PartParams):
    """`params:` of the late fusion; `weights: null` learns one weight per modality (softmax)."""

    width: int = Field(default=256, gt=0)
    projection: Literal["linear", "orthogonal"] = "linear"
    normalize: bool = True
    weights: dict[Modality, float] | None = None

    @field_validator("weights")
    @classmethod
    def _weights_usable(cls, weights: dict[Modality, float] | None) -> dict[Modality, float] | None:
        if weights is None:
            return None
        for modality, weight in weights.items():
            if weight < 0:
                raise ValueError(f"weights.{modality.value} is {weight}; expected a weight >= 0")
        if sum(weights.values()) <= 0:
            shown = {m.value: w for m, w in weights.items()}
            raise ValueError(f"weights {shown} has no positive weight; give at least one weight > 0")
        return weights


@FUSIONS.register("late")
class LateFusion(Fusion):
    """Per-modality projection of the pooled vectors (optionally L2-normalised), combined by weights.

    With `projection: orthogonal` and width >= every input width the projections preserve norms and
    inner products, so an untrained late fusion keeps the encoders' geometry (nearest-prototype use).
    """

    Params = LateParams
    example_params = {"width": 32}

    def __init__(self, params: LateParams, input_dims: dict[Modality, int]) -> None:
        super().__init__(params, input_dims)
        self.output_dim = params.width
        self.modalities = list(self.input_dims)
        self.projections = nn.ModuleDict(
            {m.value: self._projection(dim, params.width, params.projection) for m, dim in self.input_dims.items()}
        )
        if params.weights is None:
            self.weight_logits = nn.Parameter(torch.zeros(len(self.modalities)))  # (M,)
        else:
            self.weight_logits = None
            self._check_weights_cover_inputs(params.weights)
            fixed = [params.weights[m] for m in self.modalities]
            self.register_buffer("fixed_weights", torch.tensor(fixed, dtype=torch.float32))  # (M,)

    def _check_weights_cover_inputs(self, weights: dict[Modality, float]) -> None:
        available = ", ".join(m.value for m in self.modalities)
        for modality in weights:
            if modality not in self.input_dims:
                raise ValueError(
                    f"late fusion: weights.{modality.value} names a modality without an encoder; available: {available}"
                )
        for modality in self.modalities:
            if modality not in weights:
                raise ValueError(
                    f"late fusion: weights has no entry for {modality.value}; give a weight (0 to ignore it) "
                    f"for each of {available}"
                )

    @staticmethod
    def _projection(input_dim: int, width: int, kind: str) -> nn.Linear:
        if kind == "linear":
            return nn.Linear(input_dim, width)
        projection = nn.Linear(input_dim, width, bias=False)
        nn.init.orthogonal_(projection.weight)  # columns orthonormal when width >= input_dim
        return projection

    def modality_weights(self, present: list[Modality]) -> torch.Tensor:
        """The weights of the present modalities, renormalised to sum to 1; shape (P,)."""
        index = torch.tensor([self.modalities.index(m) for m in present])
        if self.weight_logits is not None:
            return torch.softmax(self.weight_logits[index.to(self.weight_logits.device)], dim=0)  # (P,)
        weights = self.fixed_weights[index.to(self.fixed_weights.device)]  # (P,)
        total = weights.sum()
        if float(total) <= 0:
            names = ", ".join(m.value for m in present)
            raise ValueError(f"late fusion: the present modalities ({names}) all have weight 0; nothing to combine")
        return weights / total

    def forward(self, embeddings: dict[Modality, Embedding]) -> Embedding:
        """Weighted sum of the present modalities' projected vectors; absent ones are masked out of tokens."""
        present = self.check(embeddings, "pooled")
        reference = embeddings[present[0]].pooled
        batch = reference.shape[0]
        vectors = []
        for modality in present:
            projected = self.projections[modality.value](embeddings[modality].pooled)  # (B, W)
            vectors.append(F.normalize(projected, dim=-1) if self.params.normalize else projected)
        stacked = torch.stack(vectors, dim=1)  # (B, P, W)
        weights = self.modality_weights(present).to(stacked.dtype)  # (P,)
        pooled = (stacked * weights[None, :, None]).sum(dim=1)  # (B, W)
        tokens = stacked.new_zeros(batch, len(self.modalities), self.output_dim)  # (B, M, W)
        slots = [self.modalities.index(m) for m in present]
        tokens[:, slots] = stacked
        mask = torch.zeros(batch, len(self.modalities), dtype=torch.bool, device=reference.device)  # (B, M)
        mask[:, slots] = True
        return Embedding(tokens=tokens, pooled=pooled, mask=mask)
