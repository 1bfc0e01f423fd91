"""A small report decoder: word vocabulary, causal transformer, image tokens by cross-attention or soft prefix."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from mmfusion.config import ConfigError
from mmfusion.fusion.cross_attention import CrossAttentionFusion, CrossAttentionParams
from mmfusion.types import Embedding, Modality

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
WORD_PATTERN = re.compile(r"\[|\]|\n|[^\s\[\]]+")
NO_SPACE_AFTER = {"[", "\n"}
NO_SPACE_BEFORE = {"]", "\n", "["}


class Vocabulary:
    """Word-level vocabulary of report texts: brackets and line breaks are tokens of their own."""

    def __init__(self, words: list[str]) -> None:
        if list(words[: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"vocabulary must start with {SPECIALS}; got {words[:4]}")
        self.words = list(words)
        self.index = {word: i for i, word in enumerate(self.words)}

    @classmethod
    def build(cls, texts: Iterable[str]) -> Vocabulary:
        """Every word of the texts, most frequent first."""
        counts = Counter(word for text in texts for word in WORD_PATTERN.findall(text))
        return cls([*SPECIALS, *(word for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])))])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        """<bos> word ids <eos>."""
        unknown = self.index[UNK]
        return [self.index[BOS], *(self.index.get(w, unknown) for w in WORD_PATTERN.findall(text)), self.index[EOS]]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of word ids (specials dropped), spaced as the reports are written."""
        text = ""
        previous = "\n"
        for i in ids:
            word = self.words[i]
            if word in SPECIALS:
                continue
            if text and previous not in NO_SPACE_AFTER and word not in NO_SPACE_BEFORE:
                text += " "
            text += word
            previous = word
        return text


@contextmanager
def single_thread() -> Iterator[None]:
    """Run tiny-tensor work on one intra-op thread: waking a second one costs more than it saves (40x on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def grid_positions(tokens: int, width: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions (tokens, width) for a square grid of image tokens (1-D when not square).

    Fixed rather than learned, so a decoder trained on a few hundred images still knows where every cell is.
    """
    side = round(math.sqrt(tokens))
    rows, cols = (
        (torch.arange(tokens) // side, torch.arange(tokens) % side)
        if side * side == tokens
        else (torch.zeros(tokens, dtype=torch.long), torch.arange(tokens))
    )
    quarter = width // 4
    frequencies = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float32) / max(quarter, 1)))  # (W/4,)
    parts = []
    for axis in (rows, cols):
        angles = axis[:, None].float() * frequencies[None] * math.pi / 2  # (L, W/4)
        parts += [torch.sin(angles), torch.cos(angles)]
    positions = torch.cat(parts, dim=1)  # (L, 4 * (W/4))
    return nn.functional.pad(positions, (0, width - positions.shape[1]))  # (L, W)


@dataclass(frozen=True)
class DecoderDims:
    """Everything needed to rebuild a decoder; stored inside its checkpoint."""

    vocab_size: int
    memory_dim: int
    memory_tokens: int
    width: int = 64
    depth: int = 1
    heads: int = 4
    max_length: int = 64
    bridge: Literal["cross_attention", "prefix"] = "cross_attention"


class ReportDecoder(nn.Module):
    """Causal word decoder conditioned on image tokens.

    cross_attention: token states attend to the image tokens through the `cross_attention` fusion's `attend`,
    between `depth` causal self-attention layers and one more; prefix: the projected image tokens are prepended
    to the words as a soft prefix of the same causal stack.
    """

    def __init__(self, dims: DecoderDims) -> None:
        super().__init__()
        self.dims = dims
        width = dims.width
        self.token_embedding = nn.Embedding(dims.vocab_size, width)
        self.positions = nn.Parameter(torch.randn(dims.max_length, width) * 0.02)
        self.memory_projection = nn.Linear(dims.memory_dim, width)
        self.register_buffer("memory_positions", grid_positions(dims.memory_tokens, width), persistent=False)
        layer = nn.TransformerEncoderLayer(width, dims.heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, dims.depth, enable_nested_tensor=False)
        if dims.bridge == "cross_attention":
            params = CrossAttentionParams(query="text", context="image", width=width, heads=dims.heads, depth=1)
            self.bridge = CrossAttentionFusion(params, {Modality.TEXT: width, Modality.IMAGE: width})
            self.after = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, dims.vocab_size)

    def _memory(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        if memory.shape[1] > self.dims.memory_tokens:
            raise ValueError(
                f"report decoder: {memory.shape[1]} image tokens; it was trained on {self.dims.memory_tokens} "
                "(use the image size it was trained with)"
            )
        # Each token relative to the image's mean token: a defect stands out from its own part's texture.
        weights = memory_mask.unsqueeze(-1).to(memory.dtype)  # (B, L, 1)
        mean = (memory * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1.0)  # (B, 1, Dm)
        return self.memory_projection(memory - mean) + self.memory_positions[: memory.shape[1]]  # (B, L, W)

    @staticmethod
    def _causal(length: int, device: torch.device) -> torch.Tensor:
        return torch.triu(torch.ones(length, length, dtype=torch.bool, device=device), diagonal=1)  # True = masked

    def forward(self, words: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """words (B, T) ids, memory (B, L, Dm), memory_mask (B, L) True = valid -> logits (B, T, V)."""
        length = words.shape[1]
        if length > self.dims.max_length:
            raise ValueError(f"report decoder: {length} words; at most {self.dims.max_length}")
        states = self.token_embedding(words) + self.positions[:length]  # (B, T, W)
        context = self._memory(memory, memory_mask)  # (B, L, W)
        if self.dims.bridge == "prefix":
            prefix_length = context.shape[1]
            sequence = torch.cat([context, states], dim=1)  # (B, L + T, W)
            padding = torch.cat([~memory_mask, torch.zeros_like(words, dtype=torch.bool)], dim=1)  # (B, L + T)
            mask = self._causal(sequence.shape[1], sequence.device)  # (L + T, L + T)
            hidden = self.layers(sequence, mask=mask, src_key_padding_mask=padding)[:, prefix_length:]  # (B, T, W)
        else:
            mask = self._causal(length, states.device)  # (T, T)
            hidden = self.layers(states, mask=mask)  # (B, T, W)
            valid = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)  # (B, T)
            query = Embedding(tokens=hidden, pooled=hidden.mean(1), mask=valid)
            image = Embedding(tokens=context, pooled=context.mean(1), mask=memory_mask)
            hidden = self.bridge.attend(query, image).tokens  # (B, T, W)
            hidden = self.after(hidden, mask=mask)  # (B, T, W)
        return self.lm_head(self.norm(hidden))  # (B, T, V)

    def greedy(self, memory: torch.Tensor, memory_mask: torch.Tensor, vocabulary: Vocabulary) -> Iterable[int]:
        """Yield the word ids of the most likely report for one image (memory (1, L, Dm)), up to <eos>."""
        words = torch.tensor([[vocabulary.index[BOS]]], dtype=torch.long)  # (1, 1)
        end = vocabulary.index[EOS]
        for _ in range(self.dims.max_length - 1):
            with torch.inference_mode(), single_thread():
                logits = self(words, memory, memory_mask)[:, -1]  # (1, V)
                logits[:, vocabulary.index[PAD]] = float("-inf")
                following = int(logits.argmax(dim=-1))
            if following == end:
                return
            yield following
            words = torch.cat([words, torch.tensor([[following]])], dim=1)  # (1, t + 1)


CHECKPOINT = "decoder.pt"


def save_decoder(folder: Path, decoder: ReportDecoder, vocabulary: Vocabulary, template: str) -> Path:
    """Write the decoder's weights, dims, vocabulary and template key to `folder/decoder.pt`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT
    state = {"dims": asdict(decoder.dims), "words": vocabulary.words, "template": template}
    torch.save({**state, "state_dict": decoder.state_dict()}, path)
    return path


def load_decoder(folder: Path) -> tuple[ReportDecoder, Vocabulary, str]:
    """Read a decoder written by save_decoder (weights only: no code runs at load)."""
    from mmfusion.security.integrity import safe_torch_load

    path = folder / CHECKPOINT
    checkpoint = safe_torch_load(path)
    try:
        decoder = ReportDecoder(DecoderDims(**checkpoint["dims"]))
        decoder.load_state_dict(checkpoint["state_dict"])
        return decoder.eval(), Vocabulary(checkpoint["words"]), checkpoint["template"]
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path}: not a report decoder of this version ({first}); train it again") from None
