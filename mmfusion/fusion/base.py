"""Fusion contract: dict[Modality, Embedding] -> Embedding; absent modalities are allowed."""

from __future__ import annotations

from typing import ClassVar, Literal

from torch import nn

from mmfusion.config import PartParams
from mmfusion.types import Embedding, Modality


class Fusion(nn.Module):
    """Base fusion: built from each modality's width, returns one Embedding of width `output_dim`."""

    Params: ClassVar[type[PartParams]] = PartParams
    registry_name: ClassVar[str]
    example_params: ClassVar[dict] = {}
    single_modality: ClassVar[bool] = False
    """True when the fusion takes exactly one modality (contract tests build it with one)."""
    """Small params that the contract tests build this part with."""
    output_dim: int

    def __init__(self, params: PartParams, input_dims: dict[Modality, int]) -> None:
        super().__init__()
        self.params = params
        name = self.registry_name
        if not input_dims:
            raise ValueError(f"{name} fusion: input_dims is empty; it needs at least one modality's width")
        for modality, dim in input_dims.items():
            if dim <= 0:
                raise ValueError(f"{name} fusion: input_dims[{modality.value}] = {dim}; expected a positive width")
        self.input_dims = dict(sorted(input_dims.items(), key=lambda item: item[0].value))

    def forward(self, embeddings: dict[Modality, Embedding]) -> Embedding:  # noqa: D102
        raise NotImplementedError

    @staticmethod
    def present(embeddings: dict[Modality, Embedding]) -> list[Modality]:
        """Present modalities in a stable (sorted) order; raises when none is present."""
        if not embeddings:
            raise ValueError("fusion needs at least one modality; none was given")
        return sorted(embeddings, key=lambda m: m.value)

    def check(self, embeddings: dict[Modality, Embedding], part: Literal["tokens", "pooled"]) -> list[Modality]:
        """Present modalities in sorted order; checks each is known, has the built width and agrees on B."""
        present = self.present(embeddings)
        name = self.registry_name
        known = ", ".join(m.value for m in self.input_dims)
        # int(): under ONNX tracing sizes are 0-d tensors, which a set would never treat as equal.
        batch_sizes = {m.value: int(embeddings[m].batch_size) for m in present}
        for modality in present:
            if modality not in self.input_dims:
                raise ValueError(f"{name} fusion: got modality {modality.value}, but it was built for {known}")
            embedding = embeddings[modality]
            width = embedding.dim if part == "tokens" else embedding.pooled.shape[-1]
            if width != self.input_dims[modality]:
                raise ValueError(
                    f"{name} fusion: {modality.value} {part} have width {width}; "
                    f"expected {self.input_dims[modality]} (the width it was built for)"
                )
        if len(set(batch_sizes.values())) > 1:
            raise ValueError(f"{name} fusion: modalities disagree on batch size: {batch_sizes}")
        return present
