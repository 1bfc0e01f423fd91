"""Fusion contract: dict[Modality, Embedding] -> Embedding; absent modalities are allowed."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from mmfusion.config import PartParams
from mmfusion.types import Embedding, Modality


class Fusion(nn.Module):
    """Base fusion: built from each modality's width, returns one Embedding of width `output_dim`."""

    Params: ClassVar[type[PartParams]] = PartParams
    registry_name: ClassVar[str]
    example_params: ClassVar[dict] = {}
    """Small params that the contract tests build this part with."""
    output_dim: int

    def __init__(self, params: PartParams, input_dims: dict[Modality, int]) -> None:
        super().__init__()
        self.params = params
        self.input_dims = dict(sorted(input_dims.items(), key=lambda item: item[0].value))

    def forward(self, embeddings: dict[Modality, Embedding]) -> Embedding:  # noqa: D102
        raise NotImplementedError

    @staticmethod
    def present(embeddings: dict[Modality, Embedding]) -> list[Modality]:
        """Present modalities in a stable (sorted) order; raises when none is present."""
        if not embeddings:
            raise ValueError("fusion needs at least one modality; none was given")
        return sorted(embeddings, key=lambda m: m.value)
