"""Report head: hands the fused image tokens out of the graph; `write` makes the GenerateReport report from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, ValidationInfo, field_validator

from mmfusion.config import HeadSpec, LocalPath, PartParams
from mmfusion.heads.base import Head
from mmfusion.prompts.findings import DEFAULT_SEVERITY_CUTS, OK_LABELS, findings_from_outputs
from mmfusion.prompts.generators import GENERATORS, ReportGenerator, ReportInput
from mmfusion.prompts.generators.base import Emit
from mmfusion.prompts.report import Report
from mmfusion.prompts.template import load_template
from mmfusion.registry import HEADS
from mmfusion.types import Embedding, InputError, Inputs, Modality


class ReportParams(PartParams):
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
    heads: int = Field(default=4, gt=0)
    max_length: int = Field(default=64, ge=8, le=1024)
    bridge: Literal["cross_attention", "prefix"] = "cross_attention"

    @field_validator("template")
    @classmethod
    def _template_file(cls, template: str, info: ValidationInfo) -> str:
        model_dir = (info.context or {}).get("model_dir")
        if template.endswith((".yaml", ".yml")) and not Path(template).is_absolute() and model_dir is not None:
            return str(Path(model_dir) / template)
        return template

    @field_validator("severity_cuts")
    @classmethod
    def _ordered_cuts(cls, cuts: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= cuts[0] <= cuts[1] <= 1.0:
            raise ValueError(f"severity_cuts {list(cuts)}: expected 0 <= minor/major cut <= major/critical cut <= 1")
        return cuts

    @field_validator("heads")
    @classmethod
    def _heads_divide_width(cls, heads: int, info: ValidationInfo) -> int:
        width = info.data.get("width")
        if width is not None and width % heads:
            raise ValueError(f"heads {heads} does not divide width {width}; expected a divisor of {width}")
        return heads


def build_generator(params: ReportParams) -> ReportGenerator:
    """The head's generator (the hf_causal_lm model is loaded here, once)."""
    generator_class = GENERATORS.get(params.generator)
    if params.generator == "hf_causal_lm":
        if params.path is None:
            raise ValueError("generator hf_causal_lm needs `path`: a local transformers model folder")
        return generator_class(params.path, params.max_new_tokens)
    return generator_class()


@HEADS.register("report")
class ReportHead(Head):
    """Generation runs outside the graph (GenerateReport): the graph part only passes the fused tokens out.

    `write` runs on the model's scheduler thread: template and hf_causal_lm generators read the findings of
    the pipeline's other heads; cross_modal reads the image tokens (this head's `memory` output).
    """

    Params = ReportParams
    example_params = {"generator": "template"}

    def __init__(self, params: ReportParams, input_dim: int, spec: HeadSpec) -> None:
        super().__init__(params, input_dim, spec)
        self.template = load_template(params.template)
        self.generator = build_generator(params)

    def forward(self, fused: Embedding) -> dict[str, torch.Tensor]:
        return {"memory": fused.tokens, "memory_mask": fused.mask}  # (B, L, D), (B, L)

    def postprocess(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        masks = outputs["memory_mask"]  # (B, L)
        return [
            {"generator": self.params.generator, "template": self.template.key, "image_tokens": int(mask.sum())}
            for mask in masks
        ]

    def load_fitted(self, folder: Path) -> None:
        """A trained cross_modal decoder from `fitted/<head>/`."""
        if hasattr(self.generator, "load"):
            self.generator.load(folder)

    def _values(self, text: str | None) -> dict[str, str]:
        return {"note": text} if text and "note" in self.template.inputs else {}

    def write(self, pipeline, name: str, images: list[np.ndarray], text: str | None, emit: Emit) -> Report:
        """The report for a request's images and text, streamed through `emit` (call on the scheduler thread)."""
        reads_text = Modality.TEXT in pipeline.config.encoders
        note = text if reads_text else None
        if self.generator.needs_memory:
            if len(images) != 1:
                raise InputError(f"images: {len(images)} given; the cross_modal generator writes from exactly one")
            outputs = pipeline.raw_outputs([Inputs(image=images[0], text=note)])
            request = ReportInput(
                [],
                self._values(text),
                torch.from_numpy(np.ascontiguousarray(outputs[f"{name}.memory"][:1])),  # (1, L, D)
                torch.from_numpy(np.ascontiguousarray(outputs[f"{name}.memory_mask"][:1])).bool(),  # (1, L)
            )
            return self.generator.generate(self.template, request, emit)
        items = [Inputs(image=image, text=note) for image in images] or [Inputs(text=note)]
        sources = self.params.sources
        findings = []
        for index, prediction in enumerate(pipeline.predict_batch(items)):
            outputs = {head: result for head, result in prediction.outputs.items() if head != name}
            size = (images[index].shape[1], images[index].shape[0]) if images else None
            findings += findings_from_outputs(
                outputs, sources, index, size, self.params.ok_labels, self.params.severity_cuts
            )
        return self.generator.generate(self.template, ReportInput(findings, self._values(text)), emit)
