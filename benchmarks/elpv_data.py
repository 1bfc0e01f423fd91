"""ELPV solar cells (pip `elpv-dataset`): the cells, issue 14's split, and folds that keep pseudo-modules apart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

SEED = 0


def elpv_cells() -> tuple[Path, list[tuple[str, float, str]]] | None:
    """ELPV's data folder and its labels.csv rows (file, defect probability, module type); None without the package."""
    try:
        import elpv_dataset
    except ImportError:
        return None
    folder = Path(elpv_dataset.__file__).parent / "data"
    rows = [line.split() for line in (folder / "labels.csv").read_text().splitlines() if line.strip()]
    return folder, [(name, float(probability), kind) for name, probability, kind in rows]


def elpv_split(probabilities: np.ndarray, seed: int = SEED) -> dict[str, np.ndarray]:
    """Issue 14's protocol: of the cells with defect probability 0 or 1 (0.33 / 0.67 left out), 300 functional fit,
    100 functional + 50 defective choose the threshold, the rest (1,108 functional, 665 defective) are the test.
    Cells of one module may fall on both sides (labels.csv names no module)."""
    rng = np.random.default_rng(seed)
    good = rng.permutation(np.where(probabilities == 0)[0])
    bad = rng.permutation(np.where(probabilities == 1)[0])
    return {
        "fit": good[:300],
        "threshold": np.concatenate([good[300:400], bad[:50]]),
        "test": np.concatenate([good[400:], bad[50:]]),
    }


def pseudo_modules(types: np.ndarray, block: int = 60) -> np.ndarray:
    """A group id per cell: blocks of `block` consecutive files within each run of one module type."""
    groups, group, run_start = np.zeros(len(types), int), -1, 0
    for index, kind in enumerate(types):
        if index == 0 or kind != types[index - 1]:
            run_start, group = index, group + 1
        elif (index - run_start) % block == 0:
            group += 1
        groups[index] = group
    return groups


def group_folds(
    probabilities: np.ndarray, types: np.ndarray, seed: int = SEED, folds: int = 2
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(fit, test) per fold of pseudo-modules, stratified by module type: fit = the other folds' functional cells,
    test = this fold's cells of defect probability 0 or 1. No pseudo-module is on both sides."""
    groups, rng, fold_of = pseudo_modules(types), np.random.default_rng(seed), {}
    for kind in ("mono", "poly"):
        for index, group in enumerate(rng.permutation(np.unique(groups[types == kind]))):
            fold_of[group] = index % folds
    fold = np.array([fold_of[group] for group in groups])
    for k in range(folds):
        usable = (probabilities == 0) | (probabilities == 1)
        yield np.where((fold != k) & (probabilities == 0))[0], np.where((fold == k) & usable)[0]
