"""Encoder contract: raw inputs -> named arrays (preprocess) -> Embedding (forward)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from mmfusion.config import PartParams
from mmfusion.types import Embedding, Modality


class Encoder(nn.Module):
    """Base encoder: `preprocess` runs in numpy/cv2, `forward` takes tensors only.

    Subclasses set `modality`, `Params` (their `params:` schema) and `output_dim`, and list
    the arrays `preprocess` produces in `input_names` so the graph can route them.
    """

    modality: ClassVar[Modality]
    Params: ClassVar[type[PartParams]] = PartParams
    input_names: ClassVar[tuple[str, ...]] = ()
    registry_name: ClassVar[str]
    example_params: ClassVar[dict] = {}
    uses_reference: ClassVar[bool] = False
    """True for image encoders that compare with a golden template: preprocess gets (image, reference) pairs."""
    """Tiny, fast, random-weight (or embedded) params that the contract tests build this encoder with."""
    output_dim: int

    def __init__(self, params: PartParams) -> None:
        super().__init__()
        self.params = params

    def preprocess(self, items: list[Any]) -> dict[str, np.ndarray]:
        """Turn a batch of raw inputs into the named arrays that `forward` takes."""
        raise NotImplementedError

    def forward(self, **inputs: torch.Tensor) -> Embedding:  # noqa: D102
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, items: list[Any]) -> Embedding:
        """Preprocess and run a batch of raw inputs (eval mode, no gradients)."""
        arrays = self.preprocess(items)
        device = next(self.parameters(), torch.empty(0)).device
        return self(**{name: torch.from_numpy(value).to(device) for name, value in arrays.items()})
