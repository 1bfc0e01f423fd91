"""The `cross_modal` generator: a small decoder reads the image encoder's tokens and writes the report text."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mmfusion.config import ConfigError
from mmfusion.reports.decoder import ReportDecoder, Vocabulary, load_decoder
from mmfusion.reports.generators.base import GENERATORS, Emit, ReportGenerator, ReportInput
from mmfusion.reports.report import Report, parse_report
from mmfusion.templates.schema import PromptTemplate


@GENERATORS.register("cross_modal")
class CrossModalGenerator(ReportGenerator):
    """Greedy decoding of a trained ReportDecoder; the text is parsed back into the template's fields."""

    needs_memory = True

    def __init__(self) -> None:
        self.decoder: ReportDecoder | None = None
        self.vocabulary: Vocabulary | None = None
        self.trained_template = ""
        self.load_problem = ""

    def load(self, folder: Path) -> None:
        """Take the decoder from a fitted folder (written by `mmfusion prompts train`).

        A checkpoint that cannot be used leaves the model loadable (so it can be trained again); generation
        then fails with the reason.
        """
        try:
            self.decoder, self.vocabulary, self.trained_template = load_decoder(folder)
        except (ConfigError, OSError) as error:
            self.load_problem = str(error)

    def generate(self, template: PromptTemplate, request: ReportInput, emit: Emit) -> Report:
        if self.load_problem:
            raise ConfigError(f"cross_modal: {self.load_problem}")
        if self.decoder is None or self.vocabulary is None:
            raise ConfigError(
                "cross_modal: the report decoder is not trained; run `mmfusion prompts train --model MODEL --data CSV`"
            )
        if request.memory is None or request.memory_mask is None:
            raise ConfigError("cross_modal: no image tokens; the model's report head needs an image input")
        words: list[int] = []
        written = ""
        for word in self.decoder.greedy(request.memory, request.memory_mask, self.vocabulary):
            words.append(word)
            text = self.vocabulary.decode(words)
            emit(text[len(written) :])
            written = text
        report = parse_report(template, written, self.registry_name)
        return replace(report, tokens_in=int(request.memory_mask.sum()), tokens_out=len(words))
