"""`mmfusion train`: full, LoRA or prefix fine-tuning of a classification head's pipeline into a new model version."""

from __future__ import annotations

import datetime
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mmfusion import adapters
from mmfusion.config import ConfigError, PipelineConfig
from mmfusion.graph import PipelineGraph
from mmfusion.repository import versions
from mmfusion.training.engine import Example, History, TaskModel, Trainer, distributed, load_examples
from mmfusion.training.options import METHODS, TrainOptions
from mmfusion.training.report import plot_curve, write_metrics

CHECKPOINTS_DIR = "checkpoints"


@dataclass
class Adaptation:
    """How the graph was made trainable: the peft model to merge (LoRA) and what to record in the version."""

    method: str
    record: dict[str, Any] | None = None
    peft_model: Any = None
    targets: dict[str, str] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What a run produced."""

    version: int | None
    folder: Path | None
    history: History
    trainable: int
    total: int
    out: Path
    graph: PipelineGraph


def classification_head(config: PipelineConfig, name: str | None) -> tuple[str, list[str]]:
    """The head to train and its labels."""
    heads = [n for n, spec in config.heads.items() if spec.name == "classification"]
    if name is None:
        if len(heads) != 1:
            raise ConfigError(f"{config.name}: {len(heads)} classification heads ({heads}); pick one with --head")
        name = heads[0]
    if name not in heads:
        raise ConfigError(f"--head {name!r}: not a classification head of {config.name}; those are {heads}")
    return name, list(config.heads[name].labels)


def adapt(graph: PipelineGraph, head: str, options: TrainOptions) -> Adaptation:
    """Make the right parameters trainable for the method; the trained head is always trainable."""
    if options.method == "full":
        graph.requires_grad_(True)
        adaptation = Adaptation("full")
    elif options.method == "lora":
        alpha = options.alpha if options.alpha is not None else 2.0 * options.rank
        peft_model, targets = adapters.apply_lora(graph, options.rank, alpha, options.dropout, options.lora_targets)
        record = {"method": "lora", "rank": options.rank, "alpha": alpha, "dropout": options.dropout, "merged": True}
        adaptation = Adaptation("lora", {**record, "targets": sorted(targets)}, peft_model, targets)
    elif options.method == "prefix":
        graph.requires_grad_(False)
        adapted = adapters.apply_prefix(graph, options.prefix_tokens)
        record = {"method": "prefix", "virtual_tokens": options.prefix_tokens, "encoders": adapted}
        adaptation = Adaptation("prefix", record)
    else:
        raise ValueError(f"--method {options.method!r}: expected one of {', '.join(METHODS)}")
    for name, module in graph.heads.items():
        module.requires_grad_(name == head)
    return adaptation


def describe_share(graph: PipelineGraph, adaptation: Adaptation) -> str:
    trainable, total = adapters.count_parameters(graph)
    detail = ""
    if adaptation.targets:
        families = sorted(set(adaptation.targets.values()))
        detail = f" (LoRA on {len(adaptation.targets)} layers: {', '.join(families)})"
    return f"trainable parameters: {trainable:,} of {total:,} ({100.0 * trainable / total:.2f}%){detail}"


def _replay_examples(
    model_dir: Path, start: Path | None, options: TrainOptions, pipeline, labels: list[str], new_count: int
) -> tuple[list[Example], list[str]]:
    """A seeded sample of old training rows making up `replay` of the combined set, and their source tables."""
    if options.replay <= 0:
        return [], []
    sources = [str(options.replay_data)] if options.replay_data else []
    if not sources and start is not None:
        sources = versions.read_record(start).get("data", {}).get("train", [])
    if not sources:
        raise ConfigError(
            f"--replay {options.replay}: {model_dir.name} (version {pipeline.config.version}) records no training "
            f"table; give the old data with --replay-data OLD.csv"
        )
    missing = [s for s in sources if not Path(s).is_file()]
    if missing:
        raise ConfigError(f"--replay: recorded training table(s) {missing} no longer exist; use --replay-data")
    old = [example for source in sources for example in load_examples(source, pipeline, labels)]
    wanted = min(len(old), round(options.replay / (1.0 - options.replay) * new_count))
    return random.Random(options.seed).sample(old, wanted), sources


@torch.no_grad()
def imprint_head(task: TaskModel, examples: list[Example], labels: list[str], batch_size: int) -> None:
    """Start a cosine head at the class means of the training embeddings (Qi et al. 2018), not at random."""
    head = task.graph.heads[task.head]
    if not hasattr(head, "imprint"):
        return
    task.eval()
    device = next(task.parameters()).device
    pooled = []
    for start in range(0, len(examples), batch_size):
        pooled.append(task(task.tensors(examples[start : start + batch_size], device))[1])
    vectors = torch.cat(pooled)  # (N, D)
    classes = torch.tensor([e.label for e in examples], device=vectors.device)
    head.imprint({labels[c]: vectors[classes == c] for c in classes.unique().tolist()})


def _save_checkpoint(out: Path, task: TaskModel, history: History, best: dict[str, torch.Tensor]) -> None:
    folder = out / CHECKPOINTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    current = {n: p.detach().cpu() for n, p in task.named_parameters() if p.requires_grad}
    epoch = history.epochs[-1]["epoch"]
    torch.save({"epoch": epoch, "trainable": current}, folder / "last.pt")
    if history.best_epoch == epoch:
        torch.save({"epoch": epoch, "trainable": {k: v.cpu() for k, v in best.items()}}, folder / "best.pt")


def finetune(model: str, options: TrainOptions, say=print) -> TrainResult:
    """Train, then write the new version (LoRA merged) into the model's versions/ and the run record into OUT."""
    from mmfusion.pipeline import Pipeline
    from mmfusion.repository.folder import resolve_model_dir

    rank, world = distributed()
    name, version = versions.parse_reference(model)
    model_dir = resolve_model_dir(name)
    torch.manual_seed(options.seed)
    pipeline = Pipeline(model_dir, backend="torch", version=version)
    start = pipeline.version_dir
    head, labels = classification_head(pipeline.config, options.head)
    train = load_examples(options.train, pipeline, labels)
    val = load_examples(options.val, pipeline, labels)
    replayed, replay_sources = _replay_examples(model_dir, start, options, pipeline, labels, len(train))
    graph = pipeline.graph
    if start is None:
        imprint_head(TaskModel(graph, head), train, labels, options.batch_size)
    adaptation = adapt(graph, head, options)
    trainable, total = adapters.count_parameters(graph)
    if rank == 0:
        say(describe_share(graph, adaptation))
        if replayed:
            say(f"replay: {len(replayed)} old rows with {len(train)} new ({options.replay:.0%} of the training set)")
    task = TaskModel(graph, head)
    out = Path(options.out)
    summary = {
        "model": model_dir.name,
        "parent_version": pipeline.config.version,
        "method": options.method,
        "head": head,
        "labels": labels,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "world_size": world,
    }

    def on_epoch(history: History, best: dict[str, torch.Tensor]) -> None:
        write_metrics(out, history.epochs, {**summary, "best_epoch": history.best_epoch})
        _save_checkpoint(out, task, history, best)

    trainer = Trainer(task, train + replayed, val, options.loop(), on_epoch=on_epoch)
    history = trainer.fit()
    graph_to_save = graph
    lora_state = None
    if adaptation.peft_model is not None:
        lora_state = {k: v for k, v in graph.state_dict().items() if "lora_" in k}
        graph_to_save = adapters.merge_lora(adaptation.peft_model)
    new_version, folder = None, None
    if rank == 0:
        best = history.epochs[history.best_epoch - 1] if history.best_epoch else history.epochs[-1]
        record = {
            **summary,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "data": {
                "train": [str(Path(options.train).resolve()), *replay_sources],
                "val": str(Path(options.val).resolve()),
                "train_rows": len(train),
                "replay_rows": len(replayed),
            },
            "best": best,
            "stopped_early": history.stopped_early,
        }
        raw = versions.read_raw_config(model_dir, start)
        new_version, folder = versions.write_version(
            model_dir, graph_to_save, raw, record, adaptation.record, lora_state
        )
        write_metrics(out, history.epochs, {**summary, "best_epoch": history.best_epoch, "version": new_version})
        plot_curve(out, history.epochs, f"{model_dir.name}: {options.method} -> version {new_version}")
        if options.promote:
            versions.promote(model_dir, new_version)
    if world > 1:
        dist.barrier()
    return TrainResult(new_version, folder, history, trainable, total, out, graph_to_save)
