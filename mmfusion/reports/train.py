"""Train a model's cross_modal report decoder on an (image, report) manifest; image encoder frozen."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from mmfusion.config import ConfigError
from mmfusion.pipeline import Pipeline
from mmfusion.reports.dataset import ReportRow, load_report_manifest
from mmfusion.reports.decoder import PAD, DecoderDims, ReportDecoder, Vocabulary, save_decoder, single_thread
from mmfusion.repository.folder import FITTED_DIR
from mmfusion.types import Inputs


@dataclass(frozen=True)
class TrainResult:
    """Where the decoder went and how training went."""

    checkpoint: Path
    rows: int
    vocabulary: int
    epochs: int
    first_loss: float
    last_loss: float
    seconds: float


def report_head(pipeline: Pipeline, generator: str = "cross_modal") -> str:
    """The name of the pipeline's report head that uses `generator`."""
    for name, spec in pipeline.config.heads.items():
        if spec.name == "report" and pipeline.graph.heads[name].params.generator == generator:
            return name
    heads = ", ".join(f"{n}: {s.name}" for n, s in pipeline.config.heads.items())
    raise ConfigError(f"model {pipeline.name!r} has no report head with generator {generator} (its heads: {heads})")


@torch.inference_mode()
def image_tokens(
    pipeline: Pipeline, head: str, rows: list[ReportRow], batch_size: int = 32, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The report head's memory for every row's image: tokens (N, L, D) and mask (N, L)."""
    tokens, masks = [], []
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="image tokens", unit="batch", disable=not progress):
        batch = [Inputs(image=row.read_image()) for row in rows[start : start + batch_size]]
        outputs = pipeline.raw_outputs(batch)
        tokens.append(torch.from_numpy(np.ascontiguousarray(outputs[f"{head}.memory"])))  # (b, L, D)
        masks.append(torch.from_numpy(np.ascontiguousarray(outputs[f"{head}.memory_mask"])).bool())  # (b, L)
    return torch.cat(tokens), torch.cat(masks)


def _padded(sequences: list[list[int]], pad: int) -> torch.Tensor:
    longest = max(len(s) for s in sequences)
    return torch.tensor([s + [pad] * (longest - len(s)) for s in sequences], dtype=torch.long)  # (B, T)


def fit_decoder(
    decoder: ReportDecoder,
    vocabulary: Vocabulary,
    reports: list[str],
    memory: torch.Tensor,
    memory_mask: torch.Tensor,
    epochs: int,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Teacher-forced cross-entropy training; returns the mean loss of each epoch."""
    generator = torch.Generator().manual_seed(seed)
    sequences = [vocabulary.encode(report) for report in reports]
    pad = vocabulary.index[PAD]
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=learning_rate, weight_decay=0.01)
    steps = epochs * -(-len(sequences) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps, pct_start=0.1)
    decoder.train()
    losses = []
    with single_thread():
        for _ in tqdm(range(epochs), desc="decoder", unit="epoch", disable=not progress):
            args = (sequences, memory, memory_mask, batch_size, pad, generator)
            losses.append(_epoch(decoder, optimizer, schedule, *args))
    return losses


def _epoch(decoder, optimizer, schedule, sequences, memory, memory_mask, batch_size, pad, generator) -> float:
    """One pass over the data in random order; the mean loss."""
    order = torch.randperm(len(sequences), generator=generator)
    total = 0.0
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        words = _padded([sequences[i] for i in chosen], pad)  # (B, T)
        logits = decoder(words[:, :-1], memory[chosen], memory_mask[chosen])  # (B, T-1, V)
        loss = F.cross_entropy(logits.flatten(0, 1), words[:, 1:].flatten(), ignore_index=pad)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        total += float(loss.detach()) * len(chosen)
    return total / len(sequences)


def train_cross_modal(
    model: str | Path,
    manifest: str | Path,
    epochs: int = 30,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
    progress: bool = False,
) -> TrainResult:
    """Train the model's cross_modal decoder and write it to `<model>/fitted/<head>/decoder.pt`."""
    started = time.monotonic()
    rows = load_report_manifest(manifest)
    pipeline = Pipeline(model)
    try:
        head = report_head(pipeline)
        params = pipeline.graph.heads[head].params
        memory, memory_mask = image_tokens(pipeline, head, rows, progress=progress)  # (N, L, D), (N, L)
        reports = [row.report for row in rows]
        vocabulary = Vocabulary.build(reports)
        longest = max(len(vocabulary.encode(report)) for report in reports)
        if longest > params.max_length:
            raise ConfigError(f"max_length {params.max_length}: a report has {longest} words; raise max_length")
        dims = DecoderDims(
            len(vocabulary), memory.shape[2], memory.shape[1], params.width, params.depth, params.heads,
            params.max_length, params.bridge,
        )  # fmt: skip
        torch.manual_seed(seed)
        decoder = ReportDecoder(dims)
        losses = fit_decoder(
            decoder, vocabulary, reports, memory, memory_mask, epochs, batch_size, learning_rate, seed, progress
        )
        folder = pipeline.model_dir / FITTED_DIR / head
        checkpoint = save_decoder(folder, decoder.eval(), vocabulary, pipeline.graph.heads[head].template.key)
    finally:
        pipeline.close()
    return TrainResult(
        checkpoint, len(rows), len(vocabulary), epochs, losses[0], losses[-1], time.monotonic() - started
    )
