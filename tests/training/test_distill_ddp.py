"""Distillation end to end, and two-process DDP training (gloo) that keeps both ranks' weights identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch

from mmfusion.cli.main import main
from mmfusion.pipeline import Pipeline
from mmfusion.repository.folder import REPO_MODELS
from mmfusion.types import Inputs
from tests.training.helpers import read_rows, text_model, tiny_bert


def test_distill_reports_both_models_and_writes_the_student(text_task, tmp_path, capsys):
    student = text_model(tmp_path / "student", tiny_bert(tmp_path / "small_bert", hidden=16))
    argv = [
        "distill",
        "--teacher",
        str(text_task["model"]),
        "--student",
        str(student),
        "--data",
        str(text_task["train"]),
    ]
    argv += ["--val", str(text_task["val"]), "--out", str(tmp_path / "run"), "--epochs", "3", "--batch-size", "8"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "teacher " in printed and "student " in printed and "images/s" in printed
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for side in ("teacher_scores", "student_scores"):
        assert 0.0 <= metrics[side]["accuracy"] <= 1.0 and metrics[side]["images_per_second"] > 0
    assert {"soft_loss", "feature_loss"} <= set(metrics["epochs"][0])
    assert metrics["epochs"][-1]["feature_loss"] < metrics["epochs"][0]["feature_loss"]
    loaded = Pipeline(student, backend="torch", version=metrics["version"])
    rows = read_rows(text_task["val"])
    predictions = loaded.predict_batch([Inputs(text=r["text"]) for r in rows])
    accuracy = np.mean([p.outputs["kind"]["label"] == r["label"] for p, r in zip(predictions, rows)])
    assert accuracy == metrics["student_scores"]["accuracy"]


@pytest.mark.slow
def test_two_processes_hold_identical_weights(text_task, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "mmfusion.training.run", str(text_task["model"]), "--method", "full", "--device", "cpu"]
    command += ["--train", str(text_task["train"]), "--val", str(text_task["val"]), "--out", str(out)]
    command += ["--epochs", "1", "--max-steps", "1", "--batch-size", "4", "--lr", "1e-2", "--no-progress"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MMFUSION_MODELS": str(REPO_MODELS)}
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=environment, cwd=REPO_MODELS.parent
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [1, 1]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    trained = safetensors.torch.load_file(str(text_task["model"] / "versions" / "2" / "weights.safetensors"))
    base = Pipeline(text_task["model"], backend="torch", version=1).graph.state_dict()
    changed = [k for k in base if k.startswith("encoders.") and not torch.equal(base[k], trained[k])]
    assert changed  # the step moved the encoder, identically on both ranks
