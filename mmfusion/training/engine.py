"""The training loop shared by fine-tuning and distillation: examples, batches, epochs, early stopping, DDP."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mmfusion.data.csv_rows import report_problems
from mmfusion.data.table import TableError, read_table
from mmfusion.graph import PipelineGraph, input_name
from mmfusion.types import InputError, Inputs

INPUT_COLUMNS = ("image", "video", "audio", "text", "reference")


@dataclass(frozen=True)
class Example:
    """One decoded training item: its manifest line, checked inputs and class index."""

    line: int
    inputs: Inputs
    label: int


def load_examples(path: str | Path, pipeline, labels: list[str]) -> list[Example]:
    """Read a table into decoded examples; TableError listing every bad row before any training."""
    table = read_table(path)
    problems, examples = [], []
    for row in table.rows:
        if row.label not in labels:
            problems.append(f"line {row.line}: label {row.label!r} is not one of the head's labels {labels}")
            continue
        fields = {}
        for column in INPUT_COLUMNS:
            if row.get(column):
                fields[column] = row.get(column) if column == "text" else table.resolve(row, column)
        try:
            inputs = pipeline.prepare(Inputs(**fields))
        except InputError as error:
            problems.append(f"line {row.line}: {error}")
            continue
        examples.append(Example(row.line, inputs, labels.index(row.label)))
    kinds = {tuple(m.value for m in e.inputs.present()) for e in examples}
    if len(kinds) > 1:
        first = tuple(m.value for m in examples[0].inputs.present())
        problems += [
            f"line {e.line}: has {'+'.join(m.value for m in e.inputs.present())}; line {examples[0].line} has "
            f"{'+'.join(first)} (a training table needs the same modalities on every row)"
            for e in examples
            if tuple(m.value for m in e.inputs.present()) != first
        ][:5]
    report_problems(table.path, problems, TableError)
    return examples


def batch_arrays(graph: PipelineGraph, examples: list[Example]) -> dict[str, np.ndarray]:
    """Each encoder's preprocessing of a batch, under the graph's input names."""
    arrays: dict[str, np.ndarray] = {}
    for modality in examples[0].inputs.present():
        encoder = graph.encoders[modality.value]
        items = [getattr(e.inputs, modality.value) for e in examples]
        if encoder.uses_reference:
            items = [(e.inputs.image, e.inputs.reference) for e in examples]
        for name, array in encoder.preprocess(items).items():
            arrays[input_name(modality, name)] = array
    return arrays


class TaskModel(nn.Module):
    """The graph seen from one classification head: inputs -> (log-probabilities (B, C), fused pooled (B, D))."""

    def __init__(self, graph: PipelineGraph, head: str) -> None:
        super().__init__()
        self.graph = graph
        self.head = head

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        fused = self.graph.fuse(inputs)
        probabilities = self.graph.heads[self.head](fused)["probabilities"]  # (B, C)
        return probabilities.float().clamp_min(1e-12).log(), fused.pooled.float()  # (B, C), (B, D)

    def tensors(self, examples: list[Example], device: torch.device) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v).to(device) for k, v in batch_arrays(self.graph, examples).items()}


@dataclass
class LoopOptions:
    """Optimisation settings of one run."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    head_lr: float = 1e-2
    weight_decay: float = 0.0
    patience: int = 3
    seed: int = 0
    max_steps: int | None = None
    device: str = "auto"
    progress: bool = True


@dataclass
class History:
    """Per-epoch metrics and the epoch whose weights were kept."""

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use cpu")
    return torch.device(name)


def freeze_batch_norm(module: nn.Module) -> None:
    """Keep batch-norm statistics fixed: fine-tuning batches are too small to re-estimate them."""
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.eval()


def distributed() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


ExtraLoss = Callable[[list[Example], torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]
"""(batch, log-probabilities, pooled, cross-entropy) -> (the loss to minimise, named parts to log)."""


class Trainer:
    """Trains the trainable parameters of a TaskModel with early stopping on validation loss."""

    def __init__(
        self,
        task: TaskModel,
        train: list[Example],
        val: list[Example],
        options: LoopOptions,
        extra_loss: ExtraLoss | None = None,
        extra_parameters: list[nn.Parameter] | None = None,
        on_epoch: Callable[[History, dict[str, torch.Tensor]], None] | None = None,
    ) -> None:
        self.task, self.train, self.val, self.options = task, train, val, options
        self.extra_loss = extra_loss
        self.on_epoch = on_epoch
        self.rank, self.world = distributed()
        self.device = pick_device(options.device)
        self.task.to(self.device)
        self.extra_parameters = extra_parameters or []
        head = set(map(id, task.graph.heads[task.head].parameters()))
        trainable = [p for p in task.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in trainable if id(p) not in head] + self.extra_parameters, "lr": options.lr},
            {"params": [p for p in trainable if id(p) in head], "lr": options.head_lr},
        ]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=options.weight_decay)
        self.model: nn.Module = task
        if self.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(task, device_ids=device_ids, find_unused_parameters=True)
        self.steps = 0

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.task.named_parameters() if p.requires_grad}

    def _shard(self, epoch: int) -> list[int]:
        """This rank's indices for an epoch: one seeded permutation, padded so every rank gets as many."""
        order = np.random.default_rng([self.options.seed, epoch]).permutation(len(self.train)).tolist()
        padded = order + order[: (-len(order)) % self.world]
        return padded[self.rank :: self.world]

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.task.train()
        freeze_batch_norm(self.task)
        indices = self._shard(epoch)
        size = self.options.batch_size
        batches = [indices[i : i + size] for i in range(0, len(indices), size)]
        totals: dict[str, float] = {"train_loss": 0.0}
        quiet = not self.options.progress or self.rank > 0
        bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False, disable=quiet)
        for batch_indices in bar:
            batch = [self.train[i] for i in batch_indices]
            targets = torch.tensor([e.label for e in batch], device=self.device)
            with self._autocast():
                log_probabilities, pooled = self.model(self.task.tensors(batch, self.device))
            loss = F.nll_loss(log_probabilities, targets)
            parts: dict[str, float] = {}
            if self.extra_loss is not None:
                loss, parts = self.extra_loss(batch, log_probabilities, pooled, loss)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
            self.optimizer.step()
            self.steps += 1
            totals["train_loss"] += float(loss.detach()) * len(batch)
            for name, value in parts.items():
                totals[name] = totals.get(name, 0.0) + value * len(batch)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if self.options.max_steps is not None and self.steps >= self.options.max_steps:
                break
        count = torch.tensor([float(sum(len(b) for b in batches))] + list(totals.values()), dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(count)
        return {name: float(count[i + 1] / max(count[0], 1.0)) for i, name in enumerate(totals)}

    @torch.no_grad()
    def evaluate(self, examples: list[Example] | None = None) -> dict[str, float]:
        """Mean loss and accuracy on examples (default: the validation set)."""
        examples = self.val if examples is None else examples
        self.task.eval()
        loss, correct = 0.0, 0
        for start in range(0, len(examples), self.options.batch_size):
            batch = examples[start : start + self.options.batch_size]
            targets = torch.tensor([e.label for e in batch], device=self.device)
            with self._autocast():
                log_probabilities, _ = self.task(self.task.tensors(batch, self.device))
            loss += float(F.nll_loss(log_probabilities, targets, reduction="sum"))
            correct += int((log_probabilities.argmax(1) == targets).sum())
        return {"val_loss": loss / max(len(examples), 1), "val_accuracy": correct / max(len(examples), 1)}

    def fit(self) -> History:
        """Train until the epochs run out, validation loss stops improving (patience) or max_steps."""
        history = History()
        best_loss, best_state, waited = math.inf, self.trainable_state(), 0
        for epoch in range(1, self.options.epochs + 1):
            started = time.perf_counter()
            record = {"epoch": epoch, **self._train_epoch(epoch), **self.evaluate()}
            record |= {"steps": self.steps, "seconds": round(time.perf_counter() - started, 3)}
            history.epochs.append(record)
            if record["val_loss"] < best_loss - 1e-6:
                best_loss, best_state, waited, history.best_epoch = record["val_loss"], self.trainable_state(), 0, epoch
            else:
                waited += 1
            if self.on_epoch is not None and self.rank == 0:
                self.on_epoch(history, best_state)
            if self.options.progress and self.rank == 0:
                tqdm.write(
                    f"epoch {epoch}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}, "
                    f"val accuracy {record['val_accuracy']:.3f}"
                )
            if self.options.max_steps is not None and self.steps >= self.options.max_steps:
                break
            if waited >= self.options.patience:
                history.stopped_early = True
                break
        parameters = dict(self.task.named_parameters())
        with torch.no_grad():
            for name, value in best_state.items():
                parameters[name].copy_(value)
        self.task.eval()
        return history
