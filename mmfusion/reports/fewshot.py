"""Few-shot examples: a pool manifest (CSV `input,report`), chosen fixed or by MiniLM embedding similarity."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from mmfusion.data.csv_rows import collect_rows, read_rows
from mmfusion.types import InputError

Embedder = Callable[[list[str]], np.ndarray]
"""Texts -> unit-length vectors (N, D)."""


@dataclass(frozen=True)
class Example:
    """One pool row: the input a report was written for, and the report."""

    input: str
    report: str


def load_pool(path: str | Path) -> list[Example]:
    """Read a pool manifest (columns input,report); every bad row is reported with its line number."""

    def check(line: int, row: dict[str, str], problems: list[str]) -> Example | None:
        if not row["input"] or not row["report"]:
            problems.append(f"line {line}: empty input or report")
            return None
        return Example(row["input"], row["report"])

    return collect_rows(path, read_rows(path, "example pool", ("input", "report")), check, expected="examples")


_MINILM_LOCK = threading.Lock()


@cache
def _minilm():
    from mmfusion.encoders.text_hf import HFTextEncoder, HFTextParams

    return HFTextEncoder(HFTextParams(max_length=128)).eval()


def minilm_embed(texts: list[str]) -> np.ndarray:
    """The embedded all-MiniLM-L6-v2 (text.hf), unit-length mean-pooled vectors (N, 384)."""
    import torch

    with _MINILM_LOCK, torch.inference_mode():  # one tokenizer shared by every caller
        return _minilm().encode(texts).pooled.numpy()  # (N, 384)


class ExampleSelector:
    """Picks k examples of a pool per request: the first k (`fixed`) or the k nearest by cosine similarity."""

    def __init__(self, pool: Sequence[Example], k: int, select: str = "similar", embed: Embedder | None = None):
        if select not in ("fixed", "similar"):
            raise InputError(f"select: {select!r}; expected fixed or similar")
        self.pool = list(pool)
        self.k = min(k, len(self.pool))
        self.select = select
        self.embed = embed or minilm_embed
        self._vectors: np.ndarray | None = None

    def _pool_vectors(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = self.embed([example.input for example in self.pool])  # (P, D)
        return self._vectors

    def choose(self, query: str) -> list[Example]:
        """The examples for one request, nearest first (pool order for `fixed`)."""
        if self.k == 0:
            return []
        if self.select == "fixed" or not query.strip():
            return self.pool[: self.k]
        vectors = self._pool_vectors()  # (P, D)
        query_vector = self.embed([query])[0]  # (D,)
        similarity = vectors @ query_vector  # (P,)
        order = np.argsort(-similarity, kind="stable")[: self.k]
        return [self.pool[int(i)] for i in order]


@cache
def selector_for(pool_path: str, k: int, select: str) -> ExampleSelector:
    """One selector per pool file (its embeddings computed once per process)."""
    return ExampleSelector(load_pool(pool_path), k, select)
