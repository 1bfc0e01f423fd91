"""Options of `mmfusion train` and `torchrun -m mmfusion.training.run` (light: no torch import)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from mmfusion.config import ConfigError

METHODS = ("full", "lora", "prefix")
DEFAULT_LR = {"full": 1e-4, "lora": 1e-3, "prefix": 1e-2}


@dataclass
class TrainOptions:
    """Everything `mmfusion train` and `mmfusion.training.run` accept besides the model."""

    train: Path
    val: Path
    out: Path
    method: str = "lora"
    head: str | None = None
    epochs: int = 10
    batch_size: int = 16
    lr: float | None = None
    head_lr: float = 1e-2
    weight_decay: float = 0.0
    rank: int = 16
    alpha: float | None = None
    dropout: float = 0.05
    lora_targets: str | None = None
    prefix_tokens: int = 16
    patience: int = 3
    seed: int = 0
    device: str = "auto"
    max_steps: int | None = None
    replay: float = 0.0
    replay_data: Path | None = None
    promote: bool = False
    progress: bool = True

    def loop(self):
        """The engine's LoopOptions for this run."""
        from mmfusion.training.engine import LoopOptions

        return LoopOptions(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr if self.lr is not None else DEFAULT_LR[self.method],
            head_lr=self.head_lr,
            weight_decay=self.weight_decay,
            patience=self.patience,
            seed=self.seed,
            max_steps=self.max_steps,
            device=self.device,
            progress=self.progress,
        )


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments shared by `mmfusion train` and `torchrun -m mmfusion.training.run`."""
    parser.add_argument("model", nargs="?", help="model name or folder (optionally NAME@VERSION); see --from")
    parser.add_argument("--method", choices=METHODS, default="lora")
    parser.add_argument("--train", type=Path, required=True, help="training table (CSV: media columns + label)")
    parser.add_argument("--val", type=Path, required=True, help="validation table for early stopping")
    parser.add_argument("--out", type=Path, required=True, help="run folder: metrics.json, curve.png, checkpoints/")
    parser.add_argument("--from", dest="from_version", help="start from MODEL@VERSION (continual update)")
    parser.add_argument("--replay", type=float, default=0.0, help="share of old training rows mixed in (e.g. 0.2)")
    parser.add_argument("--replay-data", type=Path, help="old training table (default: what the version records)")
    parser.add_argument("--head", help="classification head to train (default: the only one)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, help="learning rate (default: full 1e-4, lora 1e-3, prefix 1e-2)")
    parser.add_argument("--head-lr", type=float, default=1e-2)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (16 or 32 are usual)")
    parser.add_argument("--alpha", type=float, help="LoRA alpha (default: 2 x rank)")
    parser.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout")
    parser.add_argument("--lora-targets", help="regex of module names to adapt (default: per encoder family)")
    parser.add_argument("--prefix-tokens", type=int, default=16, help="virtual tokens for prefix tuning")
    parser.add_argument("--patience", type=int, default=3, help="epochs without validation improvement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--promote", action="store_true", help="make the new version current")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def options_from_args(args: argparse.Namespace) -> tuple[str, TrainOptions]:
    """(model reference, options) from parsed arguments; --from and MODEL must agree."""
    model = args.model
    if args.from_version:
        name = args.from_version.rpartition("@")[0] or args.from_version
        if model and (model.rpartition("@")[0] or model) != name:
            raise ConfigError(f"--from {args.from_version!r} names another model than {model!r}")
        model = args.from_version
    if not model:
        raise ConfigError("train: give MODEL or --from MODEL@VERSION")
    if not 0.0 <= args.replay < 1.0:
        raise ValueError(f"--replay {args.replay}: expected a share in [0, 1)")
    fields = {k: getattr(args, k) for k in TrainOptions.__dataclass_fields__ if hasattr(args, k)}
    return model, TrainOptions(**fields)
