"""Call labels head: a trainable classifier over late-fused speech (whisper encoder) and text embeddings.

Out of the box call analysis labels segments zero-shot (mmfusion/calls/labels.py); once labelled
segments exist, this head is fitted (`mmfusion/fitting/call_labels.py`, then `save_fitted`) and loaded
from `fitted/<head>/` at pipeline load, and from then on it labels the segments instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from mmfusion.config import ConfigError, HeadSpec, PartParams
from mmfusion.heads.base import Head, label_results
from mmfusion.registry import HEADS
from mmfusion.types import Embedding

WEIGHTS_FILE = "head.pt"
LABELS_FILE = "labels.json"


class CallLabelsParams(PartParams):
    """`params:` for call_labels: hidden width (0 = linear), dropout while fitting."""

    hidden: int = Field(default=128, ge=0)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)


@HEADS.register("call_labels")
class CallLabelsHead(Head):
    """Softmax over `labels` from the fused pooled vector; `fitted` tells call analysis to prefer it to zero-shot."""

    Params = CallLabelsParams
    example_params: dict = {"hidden": 16}

    def __init__(self, params: CallLabelsParams, input_dim: int, spec: HeadSpec) -> None:
        super().__init__(params, input_dim, spec)
        if len(spec.labels) < 2:
            raise ValueError(f"call_labels head needs at least 2 labels, got {spec.labels}")
        if params.hidden:
            self.classifier = nn.Sequential(
                nn.LayerNorm(input_dim),
                nn.Linear(input_dim, params.hidden),
                nn.GELU(),
                nn.Dropout(params.dropout),
                nn.Linear(params.hidden, len(spec.labels)),
            )
        else:
            self.classifier = nn.Sequential(nn.LayerNorm(input_dim), nn.Linear(input_dim, len(spec.labels)))
        self.fitted = False

    def forward(self, fused: Embedding) -> dict[str, torch.Tensor]:
        logits = self.classifier(fused.pooled)  # (B, C)
        return {"probabilities": logits.softmax(dim=-1)}

    def postprocess(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        return label_results(outputs["probabilities"], self.spec)  # (B, C) -> one result per item

    def save_fitted(self, folder: str | Path) -> None:
        """Write the fitted weights and their label order to `folder` (models/<name>/fitted/<head>/)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.classifier.state_dict(), folder / WEIGHTS_FILE)
        (folder / LABELS_FILE).write_text(json.dumps(list(self.spec.labels)))

    def load_fitted(self, folder: str | Path) -> None:
        """Load weights written by `save_fitted`; the label order must match the config's."""
        from mmfusion.security.integrity import read_model_file, safe_torch_load

        folder = Path(folder)
        labels = json.loads(read_model_file(folder / LABELS_FILE)) if (folder / LABELS_FILE).is_file() else None
        if labels != list(self.spec.labels):
            raise ConfigError(
                f"{folder}: fitted for labels {labels}, but the head's labels are {self.spec.labels}; refit it"
            )
        try:
            self.classifier.load_state_dict(safe_torch_load(folder / WEIGHTS_FILE))
        except RuntimeError as error:
            raise ConfigError(f"{folder / WEIGHTS_FILE}: does not fit this head: {error}") from None
        self.fitted = True
