"""Box detection metrics under DeepPCB's protocol: IoU > threshold with a not-yet-matched box of the same type."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmfusion.data.manifest import Box


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    width = min(a.x2, b.x2) - max(a.x1, b.x1)
    height = min(a.y2, b.y2) - max(a.y1, b.y1)
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 0.0


def _match_image(predicted: Sequence[Box], truth: Sequence[Box], iou_threshold: float) -> list[bool]:
    """True per predicted box (in descending score order) when it claims an unmatched same-type truth box."""
    taken = [False] * len(truth)
    hits = []
    for box in sorted(predicted, key=lambda b: -b.score):
        best, best_iou = -1, iou_threshold
        for index, gt in enumerate(truth):
            if taken[index] or gt.type != box.type:
                continue
            overlap = iou(box, gt)
            if overlap > best_iou:
                best, best_iou = index, overlap
        if best >= 0:
            taken[best] = True
        hits.append(best >= 0)
    return hits


def ranked_matches(
    predicted: list[list[Box]], truth: list[list[Box]], iou_threshold: float = 0.33
) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores and hit flags of every prediction (all images) and the number of true boxes.

    Matching is greedy by descending score within an image, so keeping only the predictions above any
    score threshold keeps exactly their flags: one matching serves a whole threshold sweep.
    """
    scores, hits = [], []
    for image_predicted, image_truth in zip(predicted, truth, strict=True):
        ranked = sorted(image_predicted, key=lambda b: -b.score)
        scores += [b.score for b in ranked]
        hits += _match_image(ranked, image_truth, iou_threshold)
    return np.asarray(scores, np.float64), np.asarray(hits, bool), sum(len(t) for t in truth)


def average_precision(scores: Sequence[float], hits: Sequence[bool], positives: int) -> float:
    """Area under the score-ranked precision/recall curve, all-point interpolation (VOC 2010+)."""
    if positives == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    correct = np.asarray(hits, dtype=np.float64)[order]
    true_pos = np.cumsum(correct)
    precision = true_pos / np.arange(1, len(correct) + 1)
    recall = true_pos / positives
    precision = np.concatenate([[0.0], precision, [0.0]])
    recall = np.concatenate([[0.0], recall, [recall[-1]]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # envelope: best precision at recall >= r
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def _summary(scores: list[float], hits: list[bool], positives: int) -> dict[str, float]:
    true_pos = int(sum(hits))
    precision = true_pos / len(hits) if hits else (1.0 if positives == 0 else 0.0)
    recall = true_pos / positives if positives else (1.0 if not hits else 0.0)
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "fscore": fscore,
        "ap": average_precision(scores, hits, positives),
        "detections": len(hits),
        "truths": positives,
    }


def box_metrics(predicted: list[list[Box]], truth: list[list[Box]], iou_threshold: float = 0.33) -> dict:
    """Precision, recall, F-score and AP per type and overall for per-image predicted and true boxes.

    A prediction is correct when its IoU exceeds `iou_threshold` with a not-yet-matched ground-truth box
    of the same type (higher scores claim first). Precision/recall/F-score count every given prediction,
    so filter by the operating threshold first; AP ranks all of them by score. `map` is the mean AP over
    the types that have ground truth; overall AP ranks every prediction of every type together.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"box_metrics: {len(predicted)} predicted images but {len(truth)} ground-truth images")
    types = sorted({b.type for boxes in truth for b in boxes} | {b.type for boxes in predicted for b in boxes})
    per_type: dict[str, tuple[list[float], list[bool]]] = {t: ([], []) for t in types}
    positives = {t: 0 for t in types}
    for image_predicted, image_truth in zip(predicted, truth, strict=True):
        for gt in image_truth:
            positives[gt.type] += 1
        ranked = sorted(image_predicted, key=lambda b: -b.score)
        for box, hit in zip(ranked, _match_image(ranked, image_truth, iou_threshold), strict=True):
            per_type[box.type][0].append(box.score)
            per_type[box.type][1].append(hit)
    per_class = {t: _summary(*per_type[t], positives[t]) for t in types}
    all_scores = [s for t in types for s in per_type[t][0]]
    all_hits = [h for t in types for h in per_type[t][1]]
    overall = _summary(all_scores, all_hits, sum(positives.values()))
    aps = [per_class[t]["ap"] for t in types if positives[t] > 0]
    return {"overall": overall, "per_class": per_class, "map": float(np.mean(aps)) if aps else float("nan")}
