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


def trained(
    pipeline: Pipeline, weight_decay: float, device: str = "cpu", epochs: int = 20
) -> tuple[float, dict[str, float]]:
    """Train a fresh seeded detector for `epochs` steps; its parameters' norm and the loss figures."""
    head = pipeline.graph.heads["defects"]
    torch.manual_seed(0)
    head.network = CenterNet(head.input_dim, len(head.types), head.params.width)
    short, spur = head.types.index("short"), head.types.index("spur")
    boxes = np.array([[235, 125, 265, 178, short], [322, 410, 352, 440, spur]])
    pair = LabelledPair(defective_board(), clean_board(), boxes.astype(np.float32))
    settings = TrainSettings(epochs=epochs, batch_size=4, weight_decay=weight_decay, device=device)
    summary = train_detector(head, pipeline.encoder(Modality.IMAGE), [pair], settings)
    norm = math.sqrt(sum(float((p.detach() ** 2).sum()) for p in head.network.parameters()))
    return norm, summary


def test_weight_decay_shrinks_the_weights_of_the_same_seeded_run(unfitted):
    plain, summary = trained(unfitted, 0.0)
    decayed, _ = trained(unfitted, 10.0)
    assert summary["train_steps"] == 20 and summary["train_pairs"] == 1  # 2 defect crops + 1 background: 1 batch
    assert math.isfinite(summary["final_heatmap_loss"]) and math.isfinite(summary["final_box_loss"])
    assert decayed < 0.9 * plain, (decayed, plain)


def test_crop_workers_give_the_same_epochs_whatever_their_number_and_the_legacy_stream_without():
    from mmfusion.fitting.detector_training import epoch_crops, epochs_of_crops

    pair = LabelledPair(defective_board(), clean_board(), np.array([[235, 125, 265, 178, 1]], np.float32))
    settings = TrainSettings(epochs=3, crop=64)
    runs = {n: list(epochs_of_crops([pair], TrainSettings(**{**vars(settings), "workers": n}))) for n in (1, 2)}
    for one, two in zip(runs[1], runs[2], strict=True):
        assert [len(c[2]) for c in one] == [len(c[2]) for c in two]
        assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(one, two, strict=True))
    assert len(runs[1]) == 3 and not np.array_equal(runs[1][0][0][0], runs[1][1][0][0])  # epochs differ
    rng = np.random.default_rng(settings.seed)
    legacy = [epoch_crops([pair], settings, rng) for _ in range(3)]
    here = list(epochs_of_crops([pair], settings))  # workers 0: one stream for the run, as before workers existed
    assert all(np.array_equal(a[0], b[0]) for x, y in zip(legacy, here, strict=True) for a, b in zip(x, y, strict=True))


def test_training_with_workers_leaves_the_head_where_it_was_and_bad_devices_are_named(unfitted):
    from mmfusion.fitting.detector_training import training_device
    from mmfusion.types import InputError

    head = unfitted.graph.heads["defects"]
    pair = LabelledPair(defective_board(), clean_board(), np.array([[235, 125, 265, 178, 1]], np.float32))
    summary = train_detector(
        head, unfitted.encoder(Modality.IMAGE), [pair], TrainSettings(epochs=2, batch_size=4, workers=2, device="cpu")
    )
    assert summary["train_steps"] == 2 and math.isfinite(summary["final_heatmap_loss"])
    assert {p.device.type for p in head.parameters()} == {"cpu"} and not head.training
    assert training_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="device: 'gpu'; expected auto, cpu, cuda or cuda:N"):
        training_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="device: 'cuda'; this machine has no CUDA device"):
            training_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_training_on_cuda_follows_the_cpu_run_and_returns_the_head_where_it_was(unfitted):
    # 4 steps: the same seeded crops and initial weights; later, TF32 rounding and one-pair batches part the runs
    cpu_norm, cpu = trained(unfitted, 0.0, epochs=4)
    cuda_norm, cuda = trained(unfitted, 0.0, device="cuda", epochs=4)
    assert {p.device.type for p in unfitted.graph.heads["defects"].parameters()} == {"cpu"}
    assert cuda["final_heatmap_loss"] == pytest.approx(cpu["final_heatmap_loss"], rel=0.05)
    assert cuda_norm == pytest.approx(cpu_norm, rel=0.01)
