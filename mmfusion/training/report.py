"""Training records in the run folder: metrics.json (rewritten after every epoch) and the curve.png plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"
CURVE_FILE = "curve.png"


def write_metrics(out: Path, epochs: list[dict[str, Any]], summary: dict[str, Any]) -> Path:
    """metrics.json: the run summary plus one record per finished epoch."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / METRICS_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({**summary, "epochs": epochs}, indent=2, ensure_ascii=False))
    temporary.replace(path)
    return path


def plot_curve(out: Path, epochs: list[dict[str, Any]], title: str) -> Path:
    """curve.png: training and validation loss (left axis) and validation accuracy (right axis) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = out / CURVE_FILE
    numbers = [e["epoch"] for e in epochs]
    figure, loss_axis = plt.subplots(figsize=(6, 4))
    loss_axis.plot(numbers, [e["train_loss"] for e in epochs], "o-", label="train loss")
    loss_axis.plot(numbers, [e["val_loss"] for e in epochs], "s-", label="validation loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    accuracy_axis = loss_axis.twinx()
    accuracy_axis.plot(numbers, [e["val_accuracy"] for e in epochs], "^--", color="tab:green", label="val accuracy")
    accuracy_axis.set_ylabel("validation accuracy")
    accuracy_axis.set_ylim(0, 1.02)
    handles = loss_axis.get_legend_handles_labels()[0] + accuracy_axis.get_legend_handles_labels()[0]
    loss_axis.legend(handles, [h.get_label() for h in handles], loc="center right")
    loss_axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
