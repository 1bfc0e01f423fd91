"""Early fusion: project every modality's tokens to one width, concatenate them and run a transformer."""

from __future__ import annotations

import torch
from torch import nn

from mmfusion.fusion.base import Fusion
from mmfusion.params import TransformerParams
from mmfusion.registry import FUSIONS
from mmfusion.types import Embedding, Modality


class EarlyParams(TransformerParams):
    """`params:` of the early fusion."""


@FUSIONS.register("early")
class EarlyFusion(Fusion):
    """Project + modality embedding per modality, prepend CLS, concatenate, transformer; pooled = CLS."""

    Params = EarlyParams
    example_params = {"width": 32, "depth": 1, "heads": 2}

    def __init__(self, params: EarlyParams, input_dims: dict[Modality, int]) -> None:
        super().__init__(params, input_dims)
        width = params.width
        self.output_dim = width
        self.projections = nn.ModuleDict({m.value: nn.Linear(dim, width) for m, dim in self.input_dims.items()})
        self.modality_embeddings = nn.ParameterDict(
            {m.value: nn.Parameter(torch.randn(width) * 0.02) for m in self.input_dims}
        )
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)  # (1, 1, W)
        layer = nn.TransformerEncoderLayer(
            d_model=width,
            nhead=params.heads,
            dim_feedforward=round(width * params.mlp_ratio),
            dropout=params.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # Pre-norm layers leave the residual stream unnormalised, so the encoder ends with a LayerNorm.
        self.encoder = nn.TransformerEncoder(
            layer, num_layers=params.depth, norm=nn.LayerNorm(width), enable_nested_tensor=False
        )

    def forward(self, embeddings: dict[Modality, Embedding]) -> Embedding:
        """Fuse the present modalities' tokens; an absent modality simply contributes no tokens."""
        present = self.check(embeddings, "tokens")
        first = embeddings[present[0]]
        batch = first.batch_size
        token_parts = [self.cls_token.expand(batch, -1, -1)]  # [(B, 1, W)]
        mask_parts = [torch.ones(batch, 1, dtype=torch.bool, device=first.mask.device)]  # [(B, 1)]
        for modality in present:
            embedding = embeddings[modality]
            projected = self.projections[modality.value](embedding.tokens)  # (B, L_m, W)
            token_parts.append(projected + self.modality_embeddings[modality.value])
            mask_parts.append(embedding.mask)
        tokens = torch.cat(token_parts, dim=1)  # (B, 1 + sum L_m, W)
        mask = torch.cat(mask_parts, dim=1)  # (B, 1 + sum L_m), True = valid
        # nn.Transformer masks mean True = padding, the opposite of Embedding.mask.
        fused = self.encoder(tokens, src_key_padding_mask=~mask)  # (B, 1 + sum L_m, W)
        return Embedding(tokens=fused, pooled=fused[:, 0], mask=mask)
