"""The generator contract: a template and a request's findings, inputs and image tokens -> a streamed Report."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from mmfusion.registry import Registry
from mmfusion.reports.findings import Finding
from mmfusion.reports.report import Report
from mmfusion.templates.schema import PromptTemplate

GENERATORS = Registry("report generator")
Emit = Callable[[str], None]
"""Receives each piece of report text as it is produced."""
WORDS = re.compile(r"\S+\s*|\s+")
TOKENS = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """Words and punctuation marks: the token count of generators that have no tokenizer."""
    return len(TOKENS.findall(text))


def stream_words(text: str, emit: Emit) -> None:
    """Emit text one word (with its trailing space) at a time."""
    for piece in WORDS.findall(text):
        emit(piece)


@dataclass(frozen=True)
class ReportInput:
    """What one report is written from: findings, the template's text inputs, and image tokens when needed."""

    findings: list[Finding]
    values: dict[str, str] = field(default_factory=dict)
    memory: torch.Tensor | None = None
    """(1, L, D) image tokens from the pipeline, for generators that read the image (`needs_memory`)."""
    memory_mask: torch.Tensor | None = None
    """(1, L) bool, True = valid token."""


class ReportGenerator:
    """Base generator: `generate` streams text through `emit` and returns the finished Report."""

    registry_name: ClassVar[str]
    needs_memory: ClassVar[bool] = False
    """True when the generator reads image tokens (the pipeline then runs its graph, not predict)."""

    def generate(self, template: PromptTemplate, request: ReportInput, emit: Emit) -> Report:  # noqa: D102
        raise NotImplementedError
