"""Report head: hands the fused image tokens out of the graph; the report itself is written outside the graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from mmfusion.config import ConfigError, HeadSpec, LocalPath, model_file
from mmfusion.heads.base import Head
from mmfusion.params import AttentionParams
from mmfusion.registry import HEADS
from mmfusion.templates.schema import load_template
from mmfusion.types import Embedding

DEFAULT_SEVERITY_CUTS = (0.6, 0.85)
"""Scores below the first cut are minor, below the second major, otherwise critical."""
OK_LABELS = frozenset({"", "pass", "ok", "good", "normal", "clean", "none", "no_defect"})
"""Labels that mean "no defect" (compared lower-case)."""


class ReportParams(AttentionParams):
    """`params:` of the report head."""

    generator: Literal["template", "hf_causal_lm", "cross_modal"] = "template"
    template: str = "defect_inspection"
    """A library template (`name` or `name@version`) or a `.yaml` file (relative to the model folder)."""
    sources: list[str] | None = None
    """Heads whose results are the report's findings; default every other head."""
    ok_labels: list[str] = Field(default_factory=lambda: sorted(OK_LABELS))
    """Labels that mean "no defect" (case-insensitive)."""
    severity_cuts: tuple[float, float] = DEFAULT_SEVERITY_CUTS
    path: LocalPath | None = None
    """hf_causal_lm: a local transformers causal-LM folder."""
    max_new_tokens: int = Field(default=256, ge=1, le=4096)
    width: int = Field(default=64, gt=0)
    """cross_modal: the decoder that `mmfusion prompts train` builds (a trained decoder keeps its own dims)."""
    depth: int = Field(default=1, ge=1, le=12)
    max_length: int = Field(default=64, ge=8, le=1024)
    bridge: Literal["cross_attention", "prefix"] = "cross_attention"

    @field_validator("template")
    @classmethod
    def _template_file(cls, template: str, info: ValidationInfo) -> str:
        model_dir = (info.context or {}).get("model_dir")
        if template.endswith((".yaml", ".yml")) and model_dir is not None:
            return str(model_file(template, model_dir))  # inside the model folder, like every LocalPath
        return template

    @field_validator("severity_cuts")
    @classmethod
    def _ordered_cuts(cls, cuts: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= cuts[0] <= cuts[1] <= 1.0:
            raise ValueError(f"severity_cuts {list(cuts)}: expected 0 <= minor/major cut <= major/critical cut <= 1")
        return cuts

    @model_validator(mode="after")
    def _generator_needs(self) -> ReportParams:
        if self.generator == "hf_causal_lm" and self.path is None:
            raise ValueError("generator hf_causal_lm needs `path`: a local transformers model folder")
        return self


@HEADS.register("report")
class ReportHead(Head):
    """The graph part of GenerateReport: passes the fused tokens out; a report writer (tasks layer) writes the text.

    Template and hf_causal_lm generators read the findings of the pipeline's other heads; cross_modal reads
    the image tokens (this head's `memory` output).
    """

    Params = ReportParams
    example_params = {"generator": "template"}

    def __init__(self, params: ReportParams, input_dim: int, spec: HeadSpec) -> None:
        super().__init__(params, input_dim, spec)
        self.template = load_template(params.template)
        if params.generator == "hf_causal_lm" and not (Path(params.path) / "config.json").is_file():
            raise ConfigError(f"hf_causal_lm: {params.path!r} is not a transformers model folder (no config.json)")

    def forward(self, fused: Embedding) -> dict[str, torch.Tensor]:
        return {"memory": fused.tokens, "memory_mask": fused.mask}  # (B, L, D), (B, L)

    def postprocess(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        masks = outputs["memory_mask"]  # (B, L)
        return [
            {"generator": self.params.generator, "template": self.template.key, "image_tokens": int(mask.sum())}
            for mask in masks
        ]
