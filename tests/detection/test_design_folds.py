"""benchmarks/defects.py --pcb-folds: one row per design fold, their mean against the target, folds not repeated."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import defects  # noqa: E402


def fold(seed: int, fscore: float, map_: float, speed: float, skipped: str | None = None) -> dict:
    if skipped:
        return {"deeppcb_unseen_boards_skipped": skipped, "deeppcb_split": {"split": "random", "seed": seed}}
    return {
        "deeppcb_split": {"split": "group", "seed": seed},
        "deeppcb_unseen_designs": [f"group{seed:05d}"],
        "backend": "torch",
        "deeppcb_unseen_boards_fscore": fscore,
        "deeppcb_unseen_boards_map": map_,
        "deeppcb_unseen_boards_images_per_second": speed,
        "deeppcb_seen_boards_fscore": 0.98,
    }


@pytest.fixture
def sections(monkeypatch):
    given: dict[str, dict] = {}
    monkeypatch.setattr(defects, "deeppcb_section", lambda work, model: given[model.name])
    return given


def test_the_target_is_the_mean_over_the_folds_and_speed_the_slowest(sections, tmp_path):
    sections.update({"a": fold(0, 0.95, 0.96, 60.0), "b": fold(1, 0.99, 0.99, 50.0), "c": fold(2, 0.98, 0.975, 55.0)})
    result = defects.design_folds_section(tmp_path, [Path("a"), Path("b"), Path("c")])
    assert result["design_folds_unseen_fscore"] == pytest.approx((0.95 + 0.99 + 0.98) / 3)
    assert result["design_folds_unseen_map"] == pytest.approx((0.96 + 0.99 + 0.975) / 3)
    assert result["design_folds_images_per_second"] == 50.0
    assert [result[f"fold{seed}_unseen_fscore"] for seed in (0, 1, 2)] == [0.95, 0.99, 0.98]
    assert defects.passes("design_folds_unseen_fscore", result["design_folds_unseen_fscore"]).endswith("ok")
    assert defects.passes("design_folds_unseen_map", 0.969).endswith("MISSED")


def test_a_repeated_fold_or_a_fit_that_saw_every_design_is_refused_by_name(sections, tmp_path):
    sections.update(
        {"a": fold(0, 0.95, 0.96, 60.0), "again": fold(0, 0.99, 0.99, 50.0), "shipped": fold(0, 0, 0, 0, "random")}
    )
    repeated = defects.design_folds_section(tmp_path, [Path("a"), Path("again")])
    assert repeated == {"skipped": "--pcb-folds: a and again hold out the same designs (seed 0)"}
    random = defects.design_folds_section(tmp_path, [Path("a"), Path("shipped")])
    assert random == {"skipped": "--pcb-folds shipped: random"}
