"""Write a report head's reports: its template and generator (built once per pipeline), fed by the pipeline."""

from __future__ import annotations

import threading
from weakref import WeakKeyDictionary

import numpy as np
import torch

from mmfusion.config import ConfigError
from mmfusion.heads.report import ReportHead, ReportParams
from mmfusion.pipeline import Pipeline
from mmfusion.reports.findings import findings_from_outputs
from mmfusion.reports.generators import GENERATORS, ReportGenerator, ReportInput
from mmfusion.reports.generators.base import Emit
from mmfusion.reports.report import Report
from mmfusion.repository.folder import fitted_dir
from mmfusion.types import InputError, Inputs, Modality

_BUILT: WeakKeyDictionary[Pipeline, tuple[threading.Lock, dict[str, ReportGenerator]]] = WeakKeyDictionary()
_BUILT_LOCK = threading.Lock()


def build_generator(params: ReportParams) -> ReportGenerator:
    """A report head's generator, untrained (the hf_causal_lm model is loaded here)."""
    generator_class = GENERATORS.get(params.generator)
    if params.generator == "hf_causal_lm":
        return generator_class(params.path, params.max_new_tokens)
    return generator_class()


def generator_for(pipeline: Pipeline, head_name: str) -> ReportGenerator:
    """The generator of a pipeline's report head, built on first use; a trained one loads `fitted/<head>/`."""
    with _BUILT_LOCK:
        lock, generators = _BUILT.setdefault(pipeline, (threading.Lock(), {}))
    with lock:  # one build per pipeline and head, without holding up other pipelines
        if head_name not in generators:
            generator = build_generator(pipeline.graph.heads[head_name].params)
            folder = fitted_dir(pipeline.model_dir, head_name)
            if hasattr(generator, "load") and folder.is_dir():
                generator.load(folder)
            generators[head_name] = generator
        return generators[head_name]


class ReportWriter:
    """Writes the reports of one pipeline's report head from the pipeline's outputs for a request."""

    def __init__(self, pipeline: Pipeline, head_name: str) -> None:
        head = pipeline.graph.heads[head_name] if head_name in pipeline.graph.heads else None
        if not isinstance(head, ReportHead):
            kind = "no head" if head is None else f"a {head.registry_name} head"
            raise ConfigError(f"model {pipeline.name!r}: {head_name!r} is {kind}, not a report head")
        self.pipeline = pipeline
        self.head_name = head_name
        self.params: ReportParams = head.params
        self.template = head.template
        self.generator = generator_for(pipeline, head_name)

    def _values(self, text: str | None) -> dict[str, str]:
        return {"note": text} if text and "note" in self.template.inputs else {}

    def write(self, images: list[np.ndarray], text: str | None, emit: Emit) -> Report:
        """The report for a request's images and text, streamed through `emit` (call on the scheduler thread)."""
        pipeline, name = self.pipeline, self.head_name
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
