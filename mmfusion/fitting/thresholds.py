"""Thresholds chosen on validation scores, for parts (anomaly scores) and for boxes (detector candidates).

Both rank scores once (`ranked_curve`) and offer the same rules: "f1" (best F-score) and "fdr" (a target
false-detection rate). The rules are judged on what each head reports: a part threshold sits midway below the
best-F1 score and its "fdr" is the share of good parts flagged; a box threshold is one of the box scores and its
"fdr" is the share of kept boxes that are false (1 - precision).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmfusion.types import InputError

RULES = ("f1", "fdr")


@dataclass(frozen=True)
class RankedCurve:
    """Figures of `score >= threshold` down a descending ranking, all (N,); `cut` marks where a threshold may cut."""

    scores: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    fscore: np.ndarray
    cut: np.ndarray


def ranked_curve(scores: np.ndarray, hits: np.ndarray, positives: int | None = None) -> RankedCurve:
    """Rank scores (N,) highest first with their hit flags (N,); `positives` counts all true items (default: hits).

    A threshold keeps every score equal to it, so only the last of a run of equal scores is a `cut`.
    """
    scores = np.asarray(scores, np.float64)
    hits = np.asarray(hits, bool)
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]  # (N,), (N,)
    true_pos = np.cumsum(hits)  # (N,)
    detections = np.arange(1, len(scores) + 1)  # (N,)
    cut = np.r_[scores[1:] != scores[:-1], True]  # (N,)
    total = int(hits.sum()) if positives is None else positives
    precision, recall = true_pos / detections, true_pos / max(total, 1)  # (N,), (N,)
    fscore = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return RankedCurve(scores, precision, recall, fscore, cut)


def fdr_threshold(good_scores: np.ndarray, target_fdr: float) -> float:
    """The lowest threshold (defect when score >= threshold) that flags at most `target_fdr` of the good scores."""
    if not 0.0 <= target_fdr < 1.0:
        raise InputError(f"target_fdr: {target_fdr}; expected a rate in [0, 1)")
    ordered = np.sort(np.asarray(good_scores, np.float64))[::-1]  # descending
    if ordered.size == 0:
        raise InputError("validation manifest has no good rows; a false-detection rate needs good parts")
    allowed = int(np.floor(target_fdr * ordered.size + 1e-9))  # good parts that may be flagged
    if allowed >= ordered.size:
        return float(ordered[-1])
    return float(np.nextafter(ordered[allowed], np.inf))


def best_f1_threshold(scores: np.ndarray, is_defect: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of `score >= threshold`; the threshold sits midway to the next lower score.

    Of equally good cuts the lowest is taken (the most defects caught).
    """
    is_defect = np.asarray(is_defect, bool)
    if is_defect.all() or not is_defect.any():
        raise InputError("validation manifest needs both good and defective rows to choose a threshold by best F1")
    curve = ranked_curve(scores, is_defect)
    candidates = np.where(curve.cut, curve.fscore, -1.0)  # (N,)
    best = int(np.flatnonzero(candidates == candidates.max())[-1])
    threshold = float(curve.scores[best])
    if best + 1 < len(curve.scores):
        threshold = float((threshold + curve.scores[best + 1]) / 2)
    return threshold, float(curve.fscore[best])


def choose_threshold(scores: np.ndarray, is_defect: np.ndarray, rule: str, target_fdr: float) -> float:
    """A part threshold by `rule`: 'f1' (best F1) or 'fdr' (at most `target_fdr` of the good scores flagged)."""
    if rule == "f1":
        return best_f1_threshold(scores, is_defect)[0]
    if rule == "fdr":
        return fdr_threshold(np.asarray(scores)[~np.asarray(is_defect, bool)], target_fdr)
    raise InputError(f"rule: {rule!r}; expected one of {', '.join(RULES)}")


def choose_box_threshold(
    scores: np.ndarray, hits: np.ndarray, positives: int, rule: str, target_fdr: float, floor: float
) -> tuple[float, dict[str, float]]:
    """A box threshold (one of the scores, at least `floor`) and its figures: best F-score ('f1'), or for 'fdr'
    the lowest whose share of false boxes is at most `target_fdr` (else the top box's score).

    Of equally good cuts the highest is taken (the fewest boxes kept).
    """
    if len(scores) == 0:
        return 1.0, {"precision": 0.0, "recall": 0.0, "fscore": 0.0, "false_detection_rate": 0.0}
    curve = ranked_curve(scores, hits, positives)
    if rule == "f1":
        index = int(np.argmax(np.where(curve.cut, curve.fscore, -1.0)))
    else:
        allowed = np.nonzero(curve.cut & (1 - curve.precision <= target_fdr))[0]
        index = int(allowed[-1]) if len(allowed) else 0
    figures = {
        "precision": float(curve.precision[index]),
        "recall": float(curve.recall[index]),
        "fscore": float(curve.fscore[index]),
        "false_detection_rate": float(1 - curve.precision[index]),
    }
    return max(float(curve.scores[index]), floor), figures
