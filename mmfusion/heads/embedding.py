"""Retrieval head: the fused pooled embedding, L2-normalised."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmfusion.config import PartParams
from mmfusion.heads.base import Head
from mmfusion.registry import HEADS
from mmfusion.types import Embedding


@HEADS.register("embedding")
class EmbeddingHead(Head):
    """Outputs the unit-length pooled embedding for similarity search."""

    Params = PartParams

    def forward(self, fused: Embedding) -> dict[str, torch.Tensor]:
        return {"embedding": F.normalize(fused.pooled, dim=-1)}  # (B, D)

    def postprocess(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        return [{"embedding": vector.astype(np.float32).tolist()} for vector in outputs["embedding"]]
