"""Position bank: distances at a patch's own grid position, leave-self-out standardisation, a fitted round trip."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from scipy.spatial.distance import cdist

from mmfusion.config import ConfigError
from mmfusion.fitting.model import fit_model
from mmfusion.heads.patchcore.position_bank import PositionBank
from mmfusion.pipeline import Pipeline
from mmfusion.security.integrity import write_manifest as write_integrity_manifest
from mmfusion.types import Inputs

from .conftest import small_anomaly_model


def brute_force(bank: np.ndarray, queries: np.ndarray, k: int, leave_out: list[int] | None = None) -> np.ndarray:
    """(B, L) mean distance to the k nearest bank parts at each position, in float64."""
    scores = np.zeros(queries.shape[:2])
    for b in range(queries.shape[0]):
        for position in range(bank.shape[0]):
            distances = cdist(queries[b, position][None].astype(np.float64), bank[position].astype(np.float64))[0]
            if leave_out is not None:
                distances[leave_out[b]] = np.inf
            scores[b, position] = np.sort(distances)[:k].mean()
    return scores


def test_raw_scores_equal_brute_force_at_each_position_with_and_without_leaving_out():
    rng = np.random.default_rng(0)
    bank = (rng.normal(size=(6, 9, 20)) + 4.0).astype(np.float32)  # (L, N, D), off-centre
    queries = bank.transpose(1, 0, 2)[:3] + 0.01 * rng.normal(size=(3, 6, 20)).astype(np.float32)  # near parts 0-2
    positions = PositionBank(bank, neighbours=2)
    np.testing.assert_allclose(positions.raw_scores(queries).numpy(), brute_force(bank, queries, 2), rtol=1e-5)
    left = positions.raw_scores(queries, torch.tensor([0, 1, 2])).numpy()
    np.testing.assert_allclose(left, brute_force(bank, queries, 2, [0, 1, 2]), rtol=1e-5)
    assert (left > positions.raw_scores(queries).numpy()).all()  # its own near copy no longer counts


def test_standardisation_centres_the_fit_parts_own_scores_and_is_needed_to_score():
    rng = np.random.default_rng(1)
    bank = PositionBank(rng.normal(size=(5, 40, 8)).astype(np.float32), neighbours=3)
    with pytest.raises(ConfigError, match="no standardisation"):
        bank.scores(rng.normal(size=(1, 5, 8)))
    bank.fit_standardisation()
    parts = bank.features.transpose(0, 1)  # (N, L, D)
    left_out = (bank.raw_scores(parts, torch.arange(40)) - bank.mean) / bank.std  # (N, L), each without itself
    np.testing.assert_allclose(left_out.mean(dim=0).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(left_out.std(dim=0).numpy(), 1.0, rtol=1e-4)
    assert (bank.scores(parts.numpy()) < left_out.numpy()).mean() > 0.9  # with itself in the bank, a part scores lower
    with pytest.raises(ConfigError, match="neighbours: 40; expected 1..39"):
        PositionBank(np.zeros((5, 40, 8), np.float32), neighbours=40)
    with pytest.raises(ConfigError, match=r"expected \(B, 5, 8\), the grid .* refit the model"):
        bank.raw_scores(np.zeros((1, 4, 8), np.float32))


def registered_part(rng: np.random.Generator, bars: tuple[int, ...]) -> np.ndarray:
    """A 128x128 grey part: fine noise texture with dark vertical bars (busbars) at the given columns."""
    part = np.clip(150 + 12 * rng.normal(size=(128, 128)), 0, 255)
    for column in bars:
        part[:, column - 3 : column + 3] = 40
    return cv2.cvtColor(part.astype(np.uint8), cv2.COLOR_GRAY2RGB)


def write_manifest(folder: Path, name: str, parts: list[tuple[np.ndarray, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["image,label"]
    for index, (part, label) in enumerate(parts):
        cv2.imwrite(str(folder / f"{name}_{index}.png"), part)
        lines.append(f"{name}_{index}.png,{label}")
    (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return folder / f"{name}.csv"


def test_a_bar_out_of_place_is_anomalous_for_the_position_bank_and_survives_a_reload(tmp_path):
    rng = np.random.default_rng(0)
    train = write_manifest(tmp_path / "data", "train", [(registered_part(rng, (32, 96)), "good") for _ in range(12)])
    val = [(registered_part(rng, (32, 96)), "good") for _ in range(4)]
    val += [(registered_part(rng, (56, 96)), "moved") for _ in range(4)]  # one bar moved: every column looks normal
    val_csv = write_manifest(tmp_path / "data", "val", val)
    source = small_anomaly_model(tmp_path / "source")
    config = yaml.safe_load((source / "config.yaml").read_text())
    config["heads"]["anomaly"]["params"] = {"bank": "position", "neighbours": 2, "top_patches": 4}
    (source / "config.yaml").write_text(yaml.safe_dump(config))
    fit_model(source, train, tmp_path / "fitted", val_csv, "f1")

    pipeline = Pipeline(tmp_path / "fitted", "torch")
    head = pipeline.graph.heads["anomaly"]
    assert isinstance(head.bank, PositionBank) and head.bank.parts == 12 and head.meta["bank"] == "position"
    good = [registered_part(rng, (32, 96)) for _ in range(4)]
    moved = [registered_part(rng, (56, 96)) for _ in range(4)]
    results = [pipeline.predict(Inputs(image=image)).outputs["anomaly"] for image in good + moved]
    assert [r["label"] for r in results] == ["good"] * 4 + ["defect"] * 4
    assert max(r["raw_score"] for r in results[:4]) < min(r["raw_score"] for r in results[4:])
    columns = [int(np.argmax(r["anomaly_map"].max(axis=0))) for r in results[4:]]
    assert all(20 <= column <= 68 for column in columns), columns  # where the bar left and where it went

    reloaded = Pipeline(tmp_path / "fitted", "torch").predict(Inputs(image=moved[0])).outputs["anomaly"]
    assert reloaded["raw_score"] == pytest.approx(results[4]["raw_score"], rel=1e-6)

    text = (tmp_path / "fitted" / "config.yaml").read_text().replace("bank: position", "bank: coreset")
    (tmp_path / "fitted" / "config.yaml").write_text(text)
    write_integrity_manifest(tmp_path / "fitted")
    with pytest.raises(ConfigError, match="fitted with bank: position, but the config says bank: coreset"):
        Pipeline(tmp_path / "fitted", "torch")
