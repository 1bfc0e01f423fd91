"""`mmfusion train` end to end: a version folder Pipeline loads, continual updates with replay, promote/rollback."""

from __future__ import annotations

import json

import numpy as np

from mmfusion.cli.main import main
from mmfusion.pipeline import Pipeline
from mmfusion.repository import versions
from mmfusion.types import Inputs
from tests.training.helpers import read_rows, text_table


def _accuracy(pipeline: Pipeline, table) -> float:
    rows = read_rows(table)
    predictions = pipeline.predict_batch([Inputs(text=r["text"]) for r in rows])
    return float(np.mean([p.outputs["kind"]["label"] == r["label"] for p, r in zip(predictions, rows)]))


def test_train_promote_continue_with_replay_and_roll_back(text_task, capsys):
    model, root = text_task["model"], text_task["root"]
    common = ["--val", str(text_task["val"]), "--batch-size", "8", "--no-progress"]
    argv = ["train", str(model), "--method", "lora", "--rank", "8", "--train", str(text_task["train"]), "--epochs", "3"]
    assert main(argv + common + ["--out", str(root / "run1")]) == 0
    printed = capsys.readouterr().out
    assert "trainable parameters: " in printed and "(LoRA on 8 layers: bert-attention)" in printed
    folder = model / "versions" / "2"
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter.json",
        "config.yaml",
        "lora.safetensors",
        "training.json",
        "weights.safetensors",
    ]
    record = json.loads((folder / "training.json").read_text())
    assert record["version"] == 2 and record["parent_version"] == 1 and record["method"] == "lora"
    metrics = json.loads((root / "run1" / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3] and metrics["version"] == 2
    assert (root / "run1" / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (root / "run1" / "checkpoints" / "best.pt").is_file()
    best = metrics["epochs"][metrics["best_epoch"] - 1]
    assert Pipeline(model, backend="torch").version == 1  # not promoted yet
    trained = Pipeline(model, backend="torch", version=2)
    assert _accuracy(trained, text_task["val"]) == best["val_accuracy"]

    assert main(["models", "promote", str(model)]) == 0
    assert Pipeline(model, backend="torch").version == 2

    new_data = text_table(root / "new.csv", 16, seed=5)
    argv = [
        "train",
        "--from",
        f"{model}@2",
        "--method",
        "full",
        "--train",
        str(new_data),
        "--replay",
        "0.5",
        "--epochs",
        "2",
    ]
    assert main(argv + common + ["--out", str(root / "run2")]) == 0
    assert "replay: 16 old rows with 16 new (50% of the training set)" in capsys.readouterr().out
    record = json.loads((model / "versions" / "3" / "training.json").read_text())
    assert record["parent_version"] == 2 and record["data"]["replay_rows"] == 16
    assert record["data"]["train"] == [str(new_data.resolve()), str(text_task["train"].resolve())]

    assert main(["models", "promote", str(model), "--version", "3"]) == 0
    capsys.readouterr()
    assert main(["models", "list", str(model)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line[:5] for line in listing] == ["    1", "    2", "*   3"]
    assert main(["models", "rollback", str(model)]) == 0 and versions.current_version(model) == 2
    assert main(["models", "rollback", str(model)]) == 0 and Pipeline(model, backend="torch").version == 1
    assert main(["models", "rollback", str(model)]) == 2
    assert "nothing to roll back to" in capsys.readouterr().err


def test_version_numbers_skip_export_only_folders(text_task):
    model = text_task["model"]
    (model / "versions" / "2" / "onnx").mkdir(parents=True)  # an export of version 2 made elsewhere
    assert versions.next_version(model) == 3
    assert versions.parse_reference("notes@12") == ("notes", 12)
    assert main(["models", "promote", str(model), "--version", "7"]) == 2
