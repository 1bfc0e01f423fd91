"""benchmarks/defects.py's ELPV protocol: the documented split, functional cells only in the fit, the miss rate."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import defects  # noqa: E402
import elpv_data  # noqa: E402


def elpv_like_probabilities() -> np.ndarray:
    """ELPV's label counts (1,508 functional, 715 defective, 401 uncertain cells), shuffled."""
    values = np.repeat([0.0, 1.0, 1 / 3, 2 / 3], [1508, 715, 295, 106])
    return np.random.default_rng(5).permutation(values)


def test_split_fits_on_functional_cells_only_and_tests_on_the_rest():
    probabilities = elpv_like_probabilities()
    split = elpv_data.elpv_split(probabilities)
    assert {part: len(indices) for part, indices in split.items()} == {"fit": 300, "threshold": 150, "test": 1773}
    assert (probabilities[split["fit"]] == 0).all()
    assert sorted(probabilities[split["threshold"]].tolist()) == [0.0] * 100 + [1.0] * 50
    test = probabilities[split["test"]]
    assert (test == 0).sum() == 1108 and (test == 1).sum() == 665  # the uncertain cells are in no part
    used = np.concatenate(list(split.values()))
    assert len(set(used.tolist())) == len(used)  # no cell in two parts
    again = elpv_data.elpv_split(probabilities)
    assert all(np.array_equal(split[part], again[part]) for part in split)  # the seed fixes it


def scored(score: float, defective: bool) -> SimpleNamespace:
    return SimpleNamespace(score=score, truth_defective=defective)


def test_miss_rate_at_a_false_detection_rate():
    good = [scored(s, False) for s in np.linspace(0.0, 0.99, 100)]  # 0.00 .. 0.99
    bad = [scored(s, True) for s in (0.5, 0.97, 0.985, 1.2)]
    # 1% of good parts may be flagged: the threshold is the 99th good score (0.98); two defective parts lie below
    assert defects.miss_rate_at(good + bad, 0.01) == pytest.approx(0.5)
    assert defects.miss_rate_at(good + bad, 0.0) == pytest.approx(0.75)  # nothing good flagged: 0.99


def test_module_folds_keep_every_pseudo_module_on_one_side():
    probabilities = elpv_like_probabilities()
    types = np.repeat(["mono", "poly"], [1080, len(probabilities) - 1080])  # runs of one type, as in labels.csv
    groups = elpv_data.pseudo_modules(types)
    assert groups.max() + 1 == 18 + 26 and np.bincount(groups).max() == 60  # 1,080 mono in 18 blocks, 1,544 poly
    folds = list(elpv_data.group_folds(probabilities, types))
    assert len(folds) == 2
    for fit, test in folds:
        assert (probabilities[fit] == 0).all() and set(probabilities[test].tolist()) <= {0.0, 1.0}
        assert not set(groups[fit].tolist()) & set(groups[test].tolist())
        assert {"mono", "poly"} <= set(types[test].tolist())  # stratified by type
    tested = np.sort(np.concatenate([test for _, test in folds]))
    assert tested.tolist() == np.where((probabilities == 0) | (probabilities == 1))[0].tolist()  # each cell once
