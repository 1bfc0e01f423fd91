"""Evaluation of a fitted model on a test manifest: image and pixel AUROC, F1, error rates, boxes, speed, per class."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sklearn.metrics import f1_score, roc_auc_score
from tqdm import tqdm

from mmfusion.data.manifest import GOOD, TYPE_MAP_SUFFIX, Box, ManifestRow, TypeMap, load_manifest
from mmfusion.types import InputError, Inputs, Modality

PASS_LABELS = frozenset({GOOD, "pass", ""})
UNTYPED_BOX = "defect"
TYPE_MAP_HINT = (
    "; map type ids to these names with a type map: `--type-map deeppcb` (DeepPCB's 1-6), `--type-map FILE` "
    f"(a YAML file of 'ID: NAME' lines) or such a file beside the manifest (test.csv: test{TYPE_MAP_SUFFIX})"
)
PIXEL_SIDE = 256  # maps are kept at most this large (long side) per row, so big test sets stay small in memory
PIXEL_BINS = 1 << 16  # pixel AUROC counts pixels in this many score bins, so its memory does not grow with the set
EVAL_BATCH = 8


@dataclass
class Scored:
    """One test row and what a head said about it."""

    row: ManifestRow
    label: str
    score: float
    anomaly_map: np.ndarray | None = None
    boxes: list[Box] = field(default_factory=list)
    map_size: tuple[int, int] | None = None  # (H, W) of the head's map before shrink_map: the image's size

    @property
    def truth_defective(self) -> bool:
        return not self.row.is_good

    @property
    def predicted_defective(self) -> bool:
        return self.label not in PASS_LABELS


def scored_from_result(row: ManifestRow, result: dict[str, Any]) -> Scored:
    """A head's postprocessed dict as a Scored row; `raw_score` (unclipped) is preferred for ranking."""
    boxes = [
        Box(float(b["x1"]), float(b["y1"]), float(b["x2"]), float(b["y2"]), str(b.get("label", "")), float(b["score"]))
        for b in result.get("boxes", [])
    ]
    score = result.get("raw_score", result.get("score", 0.0))
    anomaly_map = result.get("anomaly_map", result.get("heatmap"))
    map_size = None if anomaly_map is None else tuple(np.shape(anomaly_map)[:2])
    anomaly_map = None if anomaly_map is None else shrink_map(anomaly_map)
    return Scored(row, str(result.get("label") or ""), float(score), anomaly_map, boxes, map_size)


def _rate(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _auroc(truth: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(truth, scores)) if 0 < truth.sum() < truth.size else float("nan")


def shrink_map(anomaly_map: np.ndarray) -> np.ndarray:
    """A map at most PIXEL_SIDE on its long side (kept per row, so big test sets stay small in memory)."""
    anomaly_map = np.asarray(anomaly_map, np.float32)
    height, width = anomaly_map.shape
    scale = PIXEL_SIDE / max(height, width)
    if scale >= 1:
        return anomaly_map
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(anomaly_map, size, interpolation=cv2.INTER_AREA)


def map_like(anomaly_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A (shrunk) map resized to a mask's (H, W) (bilinear), so pixels are judged at the mask's own resolution."""
    if anomaly_map.shape == shape:
        return anomaly_map
    return cv2.resize(anomaly_map, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def binned_auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """AUROC from counts of positive and negative pixels per score bin (ascending); pixels in one bin are ties."""
    positives, negatives = positive.sum(), negative.sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    below = np.cumsum(negative) - negative  # negatives in lower bins, per bin
    wins = (positive * below).sum() + 0.5 * (positive * negative).sum()
    return float(wins / (float(positives) * float(negatives)))


def pixel_auroc(scored: list[Scored]) -> float | None:
    """AUROC of anomaly-map pixels against masks at each mask's own resolution (the map upsampled to it); good rows
    without a mask count as all good at their image's size; None without masks.

    Pixels are counted in PIXEL_BINS equal score bins between the lowest and highest map value, pixels of one
    bin counted as ties (as equal scores are): memory stays constant however many pixels there are, and the
    figure differs from the exact one by at most the share of (defect, good) pixel pairs sharing a bin.
    """
    pairs = []
    for item in scored:
        if item.anomaly_map is None:
            continue
        mask = item.row.read_mask()
        if mask is None:
            if item.truth_defective:
                continue
            mask = np.zeros(item.map_size or item.anomaly_map.shape, bool)
        pairs.append((item.anomaly_map, mask))
    if not any(mask.any() for _, mask in pairs):
        return None
    low = min(float(anomaly_map.min()) for anomaly_map, _ in pairs)
    high = max(float(anomaly_map.max()) for anomaly_map, _ in pairs)
    scale = (PIXEL_BINS - 1) / (high - low) if high > low else 0.0
    positive = np.zeros(PIXEL_BINS, np.int64)
    negative = np.zeros(PIXEL_BINS, np.int64)
    for anomaly_map, mask in pairs:
        values = map_like(anomaly_map, mask.shape)  # (H, W) at the mask's resolution
        bins = np.clip(((values - low) * scale).astype(np.int64), 0, PIXEL_BINS - 1)
        positive += np.bincount(bins[mask], minlength=PIXEL_BINS)
        negative += np.bincount(bins[~mask], minlength=PIXEL_BINS)
    return binned_auroc(positive, negative)


def image_metrics(scored: list[Scored]) -> dict[str, float]:
    """Image-level AUROC (from scores) and F1, false-detection and miss rates (at the stored threshold)."""
    truth = np.asarray([s.truth_defective for s in scored])
    predicted = np.asarray([s.predicted_defective for s in scored])
    scores = np.asarray([s.score for s in scored])
    return {
        "image_auroc": _auroc(truth, scores),
        "f1": float(f1_score(truth, predicted, zero_division=0.0)),
        "false_detection_rate": _rate(predicted[~truth]),
        "miss_rate": _rate(~predicted[truth]),
        "accuracy": float((truth == predicted).mean()),
    }


def per_class_metrics(scored: list[Scored]) -> dict[str, dict[str, float]]:
    """Per true label: count; for 'good' the false-detection rate; for each defect type its AUROC and miss rate."""
    truth = np.asarray([s.truth_defective for s in scored])
    predicted = np.asarray([s.predicted_defective for s in scored])
    scores = np.asarray([s.score for s in scored])
    labels = np.asarray([s.row.label for s in scored])
    out: dict[str, dict[str, float]] = {}
    for label in sorted(set(labels), key=lambda name: (name != GOOD, name)):
        chosen = labels == label
        if label == GOOD:
            out[label] = {"count": int(chosen.sum()), "false_detection_rate": _rate(predicted[chosen])}
            continue
        against_good = chosen | ~truth
        out[label] = {
            "count": int(chosen.sum()),
            "image_auroc": _auroc(truth[against_good] & chosen[against_good], scores[against_good]),
            "miss_rate": _rate(~predicted[chosen]),
        }
    return out


def confusion(scored: list[Scored]) -> tuple[list[str], list[str], np.ndarray]:
    """(true labels, predicted labels, counts (T, P)): rows are manifest labels, columns the head's labels."""
    true_labels = sorted({s.row.label for s in scored}, key=lambda name: (name != GOOD, name))
    predicted_labels = sorted({s.label or GOOD for s in scored}, key=lambda name: (name not in PASS_LABELS, name))
    counts = np.zeros((len(true_labels), len(predicted_labels)), int)
    for item in scored:
        counts[true_labels.index(item.row.label), predicted_labels.index(item.label or GOOD)] += 1
    return true_labels, predicted_labels, counts


def box_types(labels: list[str]) -> list[str]:
    """The box types a head's labels name: its labels less the pass labels and the untyped `defect`."""
    return [label for label in labels if label not in PASS_LABELS and label != UNTYPED_BOX]


def check_box_types(scored: list[Scored], types: list[str], head: str) -> None:
    """InputError at the first true box whose type is not one of the head's box types, naming the boxes file,
    its line, the type and the types expected (with how to map ids such as DeepPCB's 1-6 to them)."""
    for item in scored:
        for box in item.row.read_boxes():
            if box.type in types:
                continue
            mapped = f" after the type map {item.row.type_map.source}" if item.row.type_map else ""
            hint = TYPE_MAP_HINT if item.row.type_map is None else ""
            raise InputError(
                f"{item.row.boxes}:{box.line}: box type {box.type!r}{mapped} is not one of the box types of head "
                f"{head} ({', '.join(types)}){hint}"
            )


def box_section(
    scored: list[Scored], iou_threshold: float = 0.33, types: list[str] | None = None, head: str = ""
) -> dict[str, Any] | None:
    """Box metrics (DeepPCB protocol) when the manifest has boxes and the head gives boxes.

    A head whose boxes carry its box `types` (box_types of its labels) is scored by type, and every true box
    must then have one of them (InputError otherwise, see check_box_types). Without `types`, boxes are
    typed when the head's box labels are defect types of the manifest; otherwise they are matched ignoring
    type and reported under `any_type`.
    """
    from mmfusion.evaluation.boxes import box_metrics

    truth = [item.row.read_boxes() for item in scored]
    if not any(truth) or not any(item.boxes for item in scored):
        return None
    truth_types = {box.type for boxes in truth for box in boxes}
    predicted_types = {box.type for item in scored for box in item.boxes}
    if types and predicted_types <= set(types):
        check_box_types(scored, types, head)
        return {"typed": True, **box_metrics([item.boxes for item in scored], truth, iou_threshold)}
    if predicted_types & truth_types:
        return {"typed": True, **box_metrics([item.boxes for item in scored], truth, iou_threshold)}
    untyped = [[Box(b.x1, b.y1, b.x2, b.y2, "defect", b.score) for b in boxes] for boxes in truth]
    predicted = [[Box(b.x1, b.y1, b.x2, b.y2, "defect", b.score) for b in item.boxes] for item in scored]
    return {"typed": False, **box_metrics(predicted, untyped, iou_threshold)}


def head_metrics(scored: list[Scored], types: list[str] | None = None, head: str = "") -> dict[str, Any]:
    """Every metric of one head: image metrics, pixel AUROC when masks exist, boxes (see box_section), per class."""
    metrics: dict[str, Any] = image_metrics(scored)
    pixels = pixel_auroc(scored)
    if pixels is not None:
        metrics["pixel_auroc"] = pixels
    boxes = box_section(scored, types=types, head=head)
    if boxes is not None:
        overall = boxes["overall"]
        if boxes["typed"]:
            metrics.update(
                precision=overall["precision"], recall=overall["recall"], fscore=overall["fscore"], map=boxes["map"]
            )
            metrics["boxes"] = boxes
        else:
            metrics["boxes_any_type"] = boxes
    metrics["per_class"] = per_class_metrics(scored)
    return metrics


def evaluable_heads(prediction_outputs: dict[str, dict[str, Any]]) -> list[str]:
    """Heads whose results carry a label and a score (a verdict to compare with the manifest)."""
    return [name for name, result in prediction_outputs.items() if "label" in result and "score" in result]


def score_rows(
    pipeline, rows: list[ManifestRow], batch_size: int = EVAL_BATCH
) -> tuple[dict[str, list[Scored]], float]:
    """Every row through the pipeline in batches: (scored rows per evaluable head, seconds spent predicting)."""
    uses_reference = Modality.IMAGE in pipeline.config.encoders and pipeline.encoder(Modality.IMAGE).uses_reference
    scored: dict[str, list[Scored]] = {}
    elapsed = 0.0
    for start in tqdm(range(0, len(rows), batch_size), desc="eval", unit="batch", disable=None):
        batch = rows[start : start + batch_size]
        inputs = [
            Inputs(image=row.read_image(), reference=row.read_reference() if uses_reference else None) for row in batch
        ]
        began = time.perf_counter()
        predictions = pipeline.predict_batch(inputs)
        elapsed += time.perf_counter() - began
        for row, prediction in zip(batch, predictions):
            for name in evaluable_heads(prediction.outputs):
                scored.setdefault(name, []).append(scored_from_result(row, prediction.outputs[name]))
    return scored, elapsed


def evaluate(
    model_dir: str | Path, test_manifest: str | Path, type_map: str | Path | TypeMap | None = None
) -> tuple[dict[str, Any], dict[str, list[Scored]]]:
    """Run a fitted model over a test manifest: (metrics summary, scored rows per evaluated head).

    `type_map` maps the boxes files' type ids to the model's box types (see data.manifest.read_type_map);
    without one the manifest's own `<stem>.types.yaml` is used when present.
    """
    from mmfusion.config import ConfigError
    from mmfusion.pipeline import Pipeline

    rows = load_manifest(test_manifest, type_map)
    pipeline = Pipeline(model_dir)
    try:
        scored, elapsed = score_rows(pipeline, rows)
    finally:
        pipeline.close()
    heads = [name for name, items in scored.items() if len(items) == len(rows)]
    if not heads:
        raise ConfigError(f"{model_dir}: no head gives a label and a score for every image; nothing to evaluate")
    per_head = {name: head_metrics(scored[name], box_types(pipeline.config.heads[name].labels), name) for name in heads}
    summary: dict[str, Any] = {
        "model": pipeline.name,
        "test": str(test_manifest),
        "images": len(rows),
        "images_per_second": len(rows) / elapsed if elapsed > 0 else float("inf"),
        "head": heads[0],
        **per_head[heads[0]],
    }
    if len(heads) > 1:
        summary["heads"] = per_head
    return summary, {name: scored[name] for name in heads}
