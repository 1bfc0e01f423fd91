"""Intent and emotion labels: zero-shot by sentence-embedding similarity to label descriptions, and escalations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mmfusion.calls.config import LabelSet

Embed = Callable[[list[str]], np.ndarray]  # texts -> (B, D) unit-length sentence embeddings


@dataclass(frozen=True)
class LabelResult:
    """The winning label of one task with its probability and every label's probability."""

    label: str
    score: float
    scores: dict[str, float]

    @classmethod
    def from_probabilities(cls, labels: Sequence[str], probabilities: np.ndarray) -> LabelResult:
        best = int(np.argmax(probabilities))
        return cls(labels[best], float(probabilities[best]), {k: float(p) for k, p in zip(labels, probabilities)})

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "score": round(self.score, 4),
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
        }


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class ZeroShotLabeller:
    """Probabilities over a label set: softmax over labels of max cosine(text, description) / temperature."""

    def __init__(self, label_set: LabelSet, embed: Embed, temperature: float = 0.05) -> None:
        self.label_set = label_set
        self.labels = list(label_set.labels)
        self.embed = embed
        self.temperature = temperature
        descriptions = [text for texts in label_set.labels.values() for text in texts]
        self.owner = np.repeat(np.arange(len(self.labels)), [len(t) for t in label_set.labels.values()])  # (K,)
        self.descriptions = embed(descriptions)  # (K, D)

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """(B, C) label probabilities of each text."""
        similarity = embed_similarity(self.embed(texts), self.descriptions)  # (B, K)
        per_label = np.full((len(texts), len(self.labels)), -1.0, np.float32)  # (B, C)
        for index in range(len(self.labels)):
            per_label[:, index] = similarity[:, self.owner == index].max(axis=1)
        return _softmax(per_label / self.temperature)

    def classify(self, texts: list[str]) -> list[LabelResult]:
        return [LabelResult.from_probabilities(self.labels, p) for p in self.probabilities(texts)]


def embed_similarity(texts: np.ndarray, descriptions: np.ndarray) -> np.ndarray:
    """Cosine similarity (B, K) of unit-length text and description embeddings."""
    return texts @ descriptions.T


def combine(results: Sequence[LabelResult], weights: Sequence[float], labels: Sequence[str]) -> LabelResult | None:
    """A call-level label: the weighted mean of segment probabilities (weights: segment durations)."""
    if not results or sum(weights) <= 0:
        return None
    stacked = np.asarray([[r.scores[label] for label in labels] for r in results], np.float64)  # (S, C)
    mean = (stacked * np.asarray(weights)[:, None]).sum(0) / sum(weights)  # (C,)
    return LabelResult.from_probabilities(labels, mean)


@dataclass(frozen=True)
class Escalation:
    """The moment a speaker's emotion turns negative: time, segment, and the labels before and after."""

    time: float
    segment: int
    previous: str | None
    label: str
    score: float
    text: str

    def to_dict(self) -> dict:
        return {
            "time": round(self.time, 2),
            "segment": self.segment,
            "from": self.previous,
            "to": self.label,
            "score": round(self.score, 4),
            "text": self.text,
        }


def escalation_points(emotions: Sequence[tuple[int, float, str, LabelResult]], negative: set[str]) -> list[Escalation]:
    """Escalations in (segment index, start, text, emotion) of one speaker, in time order: each turn to negative."""
    points = []
    previous: str | None = None
    for index, start, text, emotion in emotions:
        if emotion.label in negative and previous not in negative:
            points.append(Escalation(start, index, previous, emotion.label, emotion.score, text))
        previous = emotion.label
    return points
