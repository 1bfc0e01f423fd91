"""Boundary types: modalities, embeddings, inputs and prediction results."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where embeddings are made: clients and camera readers never load it
    import torch


class Modality(enum.StrEnum):
    """An input modality; the value is the config and CLI spelling."""

    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    TEXT = "text"


class InputError(ValueError):
    """A user-supplied input (file, bytes, array, text) that cannot be used; the message says why."""


@dataclass(frozen=True)
class Embedding:
    """Encoder or fusion output: tokens (B, L, D), pooled (B, D), mask (B, L) with True = valid token.

    `grid` is (h, w) when the tokens are the cells of a spatial feature map in row-major order (L = h * w).
    """

    tokens: torch.Tensor
    pooled: torch.Tensor
    mask: torch.Tensor
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.tokens.dim() != 3 or self.pooled.dim() != 2 or self.mask.dim() != 2:
            raise ValueError(
                f"Embedding expects tokens (B,L,D), pooled (B,D), mask (B,L); got "
                f"{tuple(self.tokens.shape)}, {tuple(self.pooled.shape)}, {tuple(self.mask.shape)}"
            )
        import torch

        if self.mask.dtype != torch.bool:
            raise ValueError(f"Embedding mask must be bool, got {self.mask.dtype}")
        if self.tokens.shape[:2] != self.mask.shape or self.tokens.shape[0] != self.pooled.shape[0]:
            raise ValueError(
                f"Embedding shapes disagree: tokens {tuple(self.tokens.shape)}, "
                f"pooled {tuple(self.pooled.shape)}, mask {tuple(self.mask.shape)}"
            )
        if self.grid is not None and self.grid[0] * self.grid[1] != self.tokens.shape[1]:
            raise ValueError(f"Embedding grid {self.grid} does not cover {self.tokens.shape[1]} tokens")

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def dim(self) -> int:
        return self.tokens.shape[-1]

    @classmethod
    def from_pooled(cls, pooled: torch.Tensor) -> Embedding:
        """An embedding whose only token is the pooled vector."""
        import torch

        tokens = pooled.unsqueeze(1)  # (B, 1, D)
        mask = torch.ones(pooled.shape[0], 1, dtype=torch.bool, device=pooled.device)
        return cls(tokens=tokens, pooled=pooled, mask=mask)


@dataclass
class Inputs:
    """Raw inputs for one prediction; any subset of modalities may be present.

    image: (H, W, 3) uint8 RGB; video: a file path or a list of RGB frames;
    audio: float32 mono waveform at 16 kHz; text: a string; reference: the golden template
    (H, W, 3) uint8 RGB that `image` is compared with, for encoders that read pairs.
    """

    image: np.ndarray | None = None
    video: str | list[np.ndarray] | None = None
    audio: np.ndarray | None = None
    text: str | None = None
    reference: np.ndarray | None = None

    def present(self) -> list[Modality]:
        return [m for m in Modality if getattr(self, m.value) is not None]


@dataclass(frozen=True)
class Word:
    """One transcribed word with its timing in seconds."""

    word: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True)
class Transcript:
    """A transcription: full text, language and timed words."""

    text: str
    language: str
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Prediction:
    """What a pipeline returns: one entry per head plus what the encoders produced on the way."""

    model: str
    modalities: tuple[str, ...]
    outputs: dict[str, Any] = field(default_factory=dict)
    transcript: Transcript | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "modalities": list(self.modalities),
            "outputs": self.outputs,
        }
        if self.transcript is not None:
            out["transcript"] = {
                "text": self.transcript.text,
                "language": self.transcript.language,
                "words": [vars(w) for w in self.transcript.words],
            }
        return out
