"""Identity fusion: a single-modality pipeline's embedding passes through unchanged (spatial grid kept)."""

from __future__ import annotations

from mmfusion.fusion.base import Fusion
from mmfusion.registry import FUSIONS
from mmfusion.types import Embedding, Modality


@FUSIONS.register("identity")
class IdentityFusion(Fusion):
    """For one-encoder pipelines (anomaly maps, template comparison) whose heads read the encoder's tokens."""

    single_modality = True

    def __init__(self, params, input_dims: dict[Modality, int]) -> None:
        super().__init__(params, input_dims)
        if len(self.input_dims) != 1:
            known = ", ".join(m.value for m in self.input_dims)
            raise ValueError(f"identity fusion takes exactly one modality; got {known}")
        (self.output_dim,) = self.input_dims.values()

    def forward(self, embeddings: dict[Modality, Embedding]) -> Embedding:
        (modality,) = self.check(embeddings, "tokens")
        return embeddings[modality]
