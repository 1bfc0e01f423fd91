"""Cross-attention fusion: the query modality's tokens attend to the context modality's tokens."""

from __future__ import annotations

import logging

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import nn

from mmfusion.fusion.base import Fusion
from mmfusion.params import TransformerParams
from mmfusion.registry import FUSIONS
from mmfusion.types import Embedding, Modality

log = logging.getLogger(__name__)


class CrossAttentionParams(TransformerParams):
    """`params:` of the cross-attention fusion."""

    query: Modality
    context: Modality
    depth: int = Field(default=1, gt=0)

    @field_validator("context")
    @classmethod
    def _context_differs(cls, context: Modality, info: ValidationInfo) -> Modality:
        if info.data.get("query") == context:
            raise ValueError(f"context {context.value} is also the query; expected two different modalities")
        return context


class CrossAttentionBlock(nn.Module):
    """Pre-norm block: x + attention(norm(x), norm(context)), then x + mlp(norm(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = round(width * mlp_ratio)
        self.norm_query = nn.LayerNorm(width)
        self.norm_context = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, width),
            nn.Dropout(dropout),
        )

    def forward(
        self, query: torch.Tensor, context: torch.Tensor | None, context_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """query (B, Lq, W), context (B, Lc, W) or None, context_mask (B, Lc) True = valid -> (B, Lq, W)."""
        if context is not None and context_mask is not None:
            has_context = context_mask.any(dim=1)  # (B,)
            # A row with no valid context token would softmax over nothing (NaN): let it attend
            # to its padding and zero the result, which equals skipping attention for that row.
            padding = ~context_mask & has_context[:, None]  # (B, Lc), True = ignore
            attended, _ = self.attention(
                self.norm_query(query),
                self.norm_context(context),
                self.norm_context(context),
                key_padding_mask=padding,
                need_weights=False,
            )  # (B, Lq, W)
            query = query + attended * has_context[:, None, None].to(attended.dtype)
        return query + self.mlp(self.norm_mlp(query))  # (B, Lq, W)


@FUSIONS.register("cross_attention")
class CrossAttentionFusion(Fusion):
    """Query tokens attend to context tokens over `depth` blocks; pooled = masked mean of the query tokens.

    Missing context: the blocks run their MLP path only. Missing query but present context: the context
    tokens become the query stream (no attention), so a request with only the context still gets an answer.
    Other modalities in input_dims are accepted and ignored.
    """

    Params = CrossAttentionParams
    example_params = {"query": "image", "context": "text", "width": 32, "heads": 2, "depth": 1}

    def __init__(self, params: CrossAttentionParams, input_dims: dict[Modality, int]) -> None:
        super().__init__(params, input_dims)
        available = ", ".join(m.value for m in self.input_dims)
        for key in ("query", "context"):
            modality = getattr(params, key)
            if modality not in self.input_dims:
                raise ValueError(
                    f"cross_attention fusion: {key} {modality.value} has no encoder; available: {available}"
                )
        unused = [m.value for m in self.input_dims if m not in (params.query, params.context)]
        if unused:
            log.warning("cross_attention fusion ignores modalities %s (neither query nor context)", unused)
        width = params.width
        self.output_dim = width
        self.query_projection = nn.Linear(self.input_dims[params.query], width)
        self.context_projection = nn.Linear(self.input_dims[params.context], width)
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(width, params.heads, params.mlp_ratio, params.dropout) for _ in range(params.depth)
        )
        self.norm = nn.LayerNorm(width)

    def attend(self, query: Embedding, context: Embedding | None) -> Embedding:
        """Decoder bridge: query (query modality's width) attends to context (context's width) or None."""
        if context is not None and context.batch_size != query.batch_size:
            raise ValueError(
                f"cross_attention fusion: query batch {query.batch_size} != context batch {context.batch_size}"
            )
        self._check_width("query", query)
        queries = self.query_projection(query.tokens)  # (B, Lq, W)
        if context is None:
            return self._run(queries, query.mask, None, None)
        self._check_width("context", context)
        contexts = self.context_projection(context.tokens)  # (B, Lc, W)
        return self._run(queries, query.mask, contexts, context.mask)

    def forward(self, embeddings: dict[Modality, Embedding]) -> Embedding:
        """Fuse query and context; see the class docstring for what happens when one is absent."""
        present = self.check(embeddings, "tokens")
        query = embeddings.get(self.params.query)
        context = embeddings.get(self.params.context)
        if query is not None:
            return self.attend(query, context)
        if context is None:
            used = f"{self.params.query.value} or {self.params.context.value}"
            given = ", ".join(m.value for m in present)
            raise ValueError(f"cross_attention fusion: needs {used}; got only {given}")
        queries = self.context_projection(context.tokens)  # (B, Lc, W)
        return self._run(queries, context.mask, None, None)

    def _check_width(self, key: str, embedding: Embedding) -> None:
        modality = getattr(self.params, key)
        if embedding.dim != self.input_dims[modality]:
            raise ValueError(
                f"cross_attention fusion: {key} ({modality.value}) tokens have width {embedding.dim}; "
                f"expected {self.input_dims[modality]}"
            )

    def _run(
        self,
        queries: torch.Tensor,
        query_mask: torch.Tensor,
        contexts: torch.Tensor | None,
        context_mask: torch.Tensor | None,
    ) -> Embedding:
        for block in self.blocks:
            queries = block(queries, contexts, context_mask)  # (B, Lq, W)
        tokens = self.norm(queries)  # (B, Lq, W)
        weights = query_mask.unsqueeze(-1).to(tokens.dtype)  # (B, Lq, 1)
        pooled = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, W)
        return Embedding(tokens=tokens, pooled=pooled, mask=query_mask)
