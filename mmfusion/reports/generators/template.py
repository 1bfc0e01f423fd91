"""The `template` generator: the deterministic report of the pipeline's findings; needs no language model."""

from __future__ import annotations

from dataclasses import replace

from mmfusion.reports.findings import findings_text
from mmfusion.reports.generators.base import GENERATORS, Emit, ReportGenerator, ReportInput, count_tokens, stream_words
from mmfusion.reports.render import check_inputs
from mmfusion.reports.report import Report, compose
from mmfusion.templates.schema import PromptTemplate


@GENERATORS.register("template")
class TemplateGenerator(ReportGenerator):
    """Fills the template's text rendering and JSON from the findings: always available, always schema-valid."""

    def generate(self, template: PromptTemplate, request: ReportInput, emit: Emit) -> Report:
        check_inputs(template, {"findings": findings_text(request.findings), **request.values})
        report = compose(template, request.findings, self.registry_name)
        stream_words(report.text, emit)
        inputs = " ".join([findings_text(request.findings), *request.values.values()])
        return replace(report, tokens_in=count_tokens(inputs), tokens_out=count_tokens(report.text))
