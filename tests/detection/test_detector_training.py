"""Training the template detector end to end: a short run on a synthetic pair, and weight decay shrinks the weights."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from mmfusion.fitting.detector_training import LabelledPair, TrainSettings, train_detector
from mmfusion.heads.detection.network import CenterNet
from mmfusion.pipeline import Pipeline
from mmfusion.repository.folder import FITTED_DIR, models_root
from mmfusion.types import Modality
from tests.detection.boards import clean_board, defective_board


@pytest.fixture(scope="module")
def unfitted(tmp_path_factory) -> Pipeline:
    folder = tmp_path_factory.mktemp("model") / "pcb-template"
    shutil.copytree(models_root() / "pcb-template", folder, ignore=shutil.ignore_patterns("manifest.json", FITTED_DIR))
    return Pipeline(folder, backend="torch")


def trained(pipeline: Pipeline, weight_decay: float) -> tuple[float, dict[str, float]]:
    """Train a fresh seeded detector for 20 steps; its parameters' norm and the loss figures."""
    head = pipeline.graph.heads["defects"]
    torch.manual_seed(0)
    head.network = CenterNet(head.input_dim, len(head.types), head.params.width)
    short, spur = head.types.index("short"), head.types.index("spur")
    boxes = np.array([[235, 125, 265, 178, short], [322, 410, 352, 440, spur]])
    pair = LabelledPair(defective_board(), clean_board(), boxes.astype(np.float32))
    settings = TrainSettings(epochs=20, batch_size=4, weight_decay=weight_decay)
    summary = train_detector(head, pipeline.encoder(Modality.IMAGE), [pair], settings)
    norm = math.sqrt(sum(float((p.detach() ** 2).sum()) for p in head.network.parameters()))
    return norm, summary


def test_weight_decay_shrinks_the_weights_of_the_same_seeded_run(unfitted):
    plain, summary = trained(unfitted, 0.0)
    decayed, _ = trained(unfitted, 10.0)
    assert summary["train_steps"] == 20 and summary["train_pairs"] == 1  # 2 defect crops + 1 background: 1 batch
    assert math.isfinite(summary["final_heatmap_loss"]) and math.isfinite(summary["final_box_loss"])
    assert decayed < 0.9 * plain, (decayed, plain)
