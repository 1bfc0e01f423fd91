"""`mmfusion distill`: train a student pipeline on a teacher's soft targets (temperature) plus feature matching."""

from __future__ import annotations

import datetime
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmfusion.config import ConfigError
from mmfusion.repository import versions
from mmfusion.training.engine import Example, History, LoopOptions, TaskModel, Trainer, load_examples, pick_device
from mmfusion.training.finetune import classification_head, imprint_head
from mmfusion.training.report import plot_curve, write_metrics


@dataclass
class DistillOptions:
    """Settings of `mmfusion distill`."""

    data: Path
    out: Path
    val: Path | None = None
    head: str | None = None
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    head_lr: float = 1e-2
    temperature: float = 4.0
    alpha: float = 0.7
    """Weight of the soft-target loss; (1 - alpha) goes to the labels' cross-entropy."""
    feature_weight: float = 1.0
    """Weight of feature matching: 1 - cosine(projected student embedding, teacher embedding)."""
    patience: int = 3
    seed: int = 0
    device: str = "auto"
    promote: bool = False
    progress: bool = True


@dataclass
class DistillResult:
    """Accuracy and speed of both models on the evaluation rows, and the student version written."""

    teacher: dict[str, float]
    student: dict[str, float]
    version: int
    folder: Path
    history: History

    @property
    def speedup(self) -> float:
        return self.student["images_per_second"] / self.teacher["images_per_second"]


def holdout(examples: list[Example], share: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded, per-class split of examples into (train, held out)."""
    by_class: dict[int, list[Example]] = defaultdict(list)
    for example in examples:
        by_class[example.label].append(example)
    train, held = [], []
    for label in sorted(by_class):
        members = by_class[label][:]
        random.Random(f"{seed}:{label}").shuffle(members)
        cut = max(1, round(share * len(members))) if len(members) > 1 else 0
        held += members[:cut]
        train += members[cut:]
    return train, held


@torch.no_grad()
def predict_all(task: TaskModel, examples: list[Example], batch_size: int, device: torch.device):
    """(log-probabilities (N, C), pooled (N, D)) of a frozen model over examples."""
    task.eval().to(device)
    outputs = [task(task.tensors(examples[i : i + batch_size], device)) for i in range(0, len(examples), batch_size)]
    return torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])


@torch.no_grad()
def measure(
    task: TaskModel, examples: list[Example], batch_size: int, device: torch.device, repeats: int = 3
) -> dict[str, float]:
    """Accuracy and graph throughput: items/s over preprocessed batches, the fastest of `repeats` passes."""
    task.eval().to(device)
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    tensors = [task.tensors(batch, device) for batch in batches]
    task(tensors[0])  # warm-up
    correct, fastest = 0, float("inf")
    for repeat in range(repeats):
        started = time.perf_counter()
        predictions = [task(inputs)[0].argmax(1) for inputs in tensors]
        if device.type == "cuda":
            torch.cuda.synchronize()
        fastest = min(fastest, time.perf_counter() - started)
        if repeat == 0:
            labels = torch.tensor([e.label for e in examples])
            correct = int((torch.cat(predictions).cpu() == labels).sum())
    return {"accuracy": correct / len(examples), "images_per_second": len(examples) / fastest}


class DistillLoss:
    """(1 - alpha) CE + alpha T^2 KL(teacher_T || student_T) + beta (1 - cos(projection(student), teacher))."""

    def __init__(self, teacher: dict[int, tuple[torch.Tensor, torch.Tensor]], projection: nn.Linear, options) -> None:
        self.teacher = teacher
        self.projection = projection
        self.options = options

    def __call__(self, batch: list[Example], log_probabilities, pooled, cross_entropy):
        teacher_log, teacher_pooled = (torch.stack(t) for t in zip(*(self.teacher[id(e)] for e in batch)))
        temperature = self.options.temperature
        soft = F.kl_div(
            F.log_softmax(log_probabilities / temperature, dim=1),
            F.log_softmax(teacher_log / temperature, dim=1),
            log_target=True,
            reduction="batchmean",
        ) * (temperature**2)
        features = 1.0 - F.cosine_similarity(self.projection(pooled), teacher_pooled, dim=1).mean()
        alpha = self.options.alpha
        loss = (1.0 - alpha) * cross_entropy + alpha * soft + self.options.feature_weight * features
        return loss, {"soft_loss": float(soft.detach()), "feature_loss": float(features.detach())}


def distill(teacher_ref: str, student_ref: str, options: DistillOptions, say=print) -> DistillResult:
    """Distil the teacher into the student; write the student's new version and the run record."""
    from mmfusion.pipeline import Pipeline
    from mmfusion.repository.folder import resolve_model_dir

    device = pick_device(options.device)
    torch.manual_seed(options.seed)
    teacher_name, teacher_version = versions.parse_reference(teacher_ref)
    student_name, student_version = versions.parse_reference(student_ref)
    teacher = Pipeline(resolve_model_dir(teacher_name), backend="torch", version=teacher_version)
    student_dir = resolve_model_dir(student_name)
    student = Pipeline(student_dir, backend="torch", version=student_version)
    teacher_head, labels = classification_head(teacher.config, options.head)
    student_head, student_labels = classification_head(student.config, options.head)
    if student_labels != labels:
        raise ConfigError(f"student labels {student_labels} differ from the teacher's {labels}; they must match")
    missing = set(student.config.encoders) - set(teacher.config.encoders)
    if missing:
        raise ConfigError(f"the teacher has no encoder for the student's {sorted(m.value for m in missing)}")
    examples = load_examples(options.data, student, labels)
    if options.val is not None:
        train, held = examples, load_examples(options.val, student, labels)
    else:
        train, held = holdout(examples, 0.2, options.seed)
    teacher_task, student_task = TaskModel(teacher.graph, teacher_head), TaskModel(student.graph, student_head)
    teacher_task.requires_grad_(False)
    teacher_log, teacher_pooled = predict_all(teacher_task, train, options.batch_size, device)
    cached = {id(e): (teacher_log[i], teacher_pooled[i]) for i, e in enumerate(train)}
    student_task.to(device)
    if student.version_dir is None:
        imprint_head(student_task, train, labels, options.batch_size)
    student.graph.requires_grad_(True)
    for name, module in student.graph.heads.items():
        module.requires_grad_(name == student_head)
    student_dim = student.graph.heads[student_head].input_dim
    projection = nn.Linear(student_dim, teacher_pooled.shape[1]).to(device)
    loop = LoopOptions(
        epochs=options.epochs,
        batch_size=options.batch_size,
        lr=options.lr,
        head_lr=options.head_lr,
        patience=options.patience,
        seed=options.seed,
        device=str(device),
        progress=options.progress,
    )
    trainer = Trainer(
        student_task,
        train,
        held,
        loop,
        extra_loss=DistillLoss(cached, projection, options),
        extra_parameters=list(projection.parameters()),
    )
    history = trainer.fit()
    teacher_scores = measure(teacher_task, held, options.batch_size, device)
    student_scores = measure(student_task, held, options.batch_size, device)
    summary: dict[str, Any] = {
        "teacher": teacher_ref,
        "student": student_ref,
        "labels": labels,
        "temperature": options.temperature,
        "alpha": options.alpha,
        "feature_weight": options.feature_weight,
        "evaluated_rows": len(held),
        "teacher_scores": teacher_scores,
        "student_scores": student_scores,
        "speedup": student_scores["images_per_second"] / teacher_scores["images_per_second"],
        "best_epoch": history.best_epoch,
    }
    record = {
        **summary,
        "method": "distill",
        "parent_version": student.config.version,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "data": {
            "train": [str(Path(options.data).resolve())],
            "val": str(options.val.resolve()) if options.val else None,
        },
    }
    raw = versions.read_raw_config(student_dir, student.version_dir)
    version, folder = versions.write_version(student_dir, student.graph.cpu(), raw, record)
    if options.promote:
        versions.promote(student_dir, version)
    out = Path(options.out)
    write_metrics(out, history.epochs, {**summary, "version": version})
    plot_curve(out, history.epochs, f"distill {teacher_ref} -> {student_ref}")
    say(
        f"teacher {teacher_ref}: accuracy {teacher_scores['accuracy']:.3f}, "
        f"{teacher_scores['images_per_second']:.1f} images/s\n"
        f"student {student_ref}: accuracy {student_scores['accuracy']:.3f}, "
        f"{student_scores['images_per_second']:.1f} images/s ({summary['speedup']:.2f}x)\n"
        f"wrote {folder}"
    )
    return DistillResult(teacher_scores, student_scores, version, folder, history)
