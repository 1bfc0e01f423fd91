"""Fit a detection head: train the template detector on labelled pairs, measure it, choose its box threshold."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mmfusion.config import ConfigError
from mmfusion.data.manifest import Box, ManifestRow
from mmfusion.evaluation.boxes import box_metrics, ranked_matches
from mmfusion.fitting.detector_training import TrainSettings, load_pairs, train_detector
from mmfusion.fitting.registry import FITTERS, Fitter
from mmfusion.fitting.thresholds import choose_box_threshold
from mmfusion.heads.detection.head import DetectionHead
from mmfusion.heads.detection.network import CenterNet
from mmfusion.heads.detection.topology import INVERSE_TYPES
from mmfusion.types import InputError, Inputs, Modality

if TYPE_CHECKING:
    from mmfusion.pipeline import Pipeline


def check_pipeline(pipeline: Pipeline, head: DetectionHead) -> None:
    """ConfigError unless the image encoder reads a reference and shares the head's stride."""
    encoder = pipeline.encoder(Modality.IMAGE)
    if not getattr(encoder, "uses_reference", False):
        raise ConfigError(f"{pipeline.name}: the detection head trains on pairs; its image encoder reads no reference")
    stride = getattr(encoder.params, "stride", head.params.stride)
    if stride != head.params.stride:
        raise ConfigError(f"{pipeline.name}: detection stride {head.params.stride} differs from the encoder's {stride}")


def fit(
    pipeline: Pipeline, head_name: str, train: list[ManifestRow], val: list[ManifestRow] | None
) -> dict[str, float]:
    """Train the detector on labelled pairs (rows with `reference` and `boxes`); validation figures if `val`."""
    head: DetectionHead = pipeline.graph.heads[head_name]
    check_pipeline(pipeline, head)
    pairs = load_pairs(train, head.types)
    if not any(len(p.boxes) for p in pairs):
        raise InputError("train: no row has boxes; the detection head learns from labelled defects")
    settings = TrainSettings(**head.params.training.model_dump(), inverse_types=inverse_types(head.types))
    torch.manual_seed(settings.seed)
    head.network = CenterNet(head.input_dim, len(head.types), head.params.width)  # from scratch, seeded
    summary = train_detector(head, pipeline.encoder(Modality.IMAGE), pairs, settings)
    head.calibration = {}
    if val:
        metrics = evaluate(pipeline, head_name, val)
        summary.update({f"val_{k}": v for k, v in metrics.items()})
    return summary


def inverse_types(types: list[str]) -> tuple[int, ...]:
    """For each type index, the index of the type it reads as with copper and board swapped (itself if unnamed)."""
    index = {kind: i for i, kind in enumerate(types)}
    return tuple(index.get(INVERSE_TYPES.get(kind, kind), i) for i, kind in enumerate(types))


def predicted_boxes(
    pipeline: Pipeline, head_name: str, rows: list[ManifestRow], batch_size: int = 4
) -> list[list[Box]]:
    """Every candidate box (down to the candidate floor) for each row, through the pipeline's backend."""
    head: DetectionHead = pipeline.graph.heads[head_name]
    boxes: list[list[Box]] = []
    for start in range(0, len(rows), batch_size):
        batch = [Inputs(image=r.read_image(), reference=r.read_reference()) for r in rows[start : start + batch_size]]
        raw = pipeline.raw_outputs(batch)
        found = head.detect({key: raw[f"{head_name}.{key}"] for key in ("heatmap", "geometry")})
        boxes += [head.retype(item_boxes, item) for item_boxes, item in zip(found, batch, strict=True)]
    return boxes


def evaluate(pipeline: Pipeline, head_name: str, rows: list[ManifestRow]) -> dict[str, float]:
    """Box precision, recall, F-score at the current thresholds and mAP over all candidates (DeepPCB protocol)."""
    head: DetectionHead = pipeline.graph.heads[head_name]
    candidates = predicted_boxes(pipeline, head_name, rows)
    truth = [r.read_boxes() for r in rows]
    kept = [[b for b in boxes if b.score >= head.threshold(b.type)] for boxes in candidates]
    at_threshold = box_metrics(kept, truth, head.params.iou_threshold)
    ranked = box_metrics(candidates, truth, head.params.iou_threshold)
    return {**{k: at_threshold["overall"][k] for k in ("precision", "recall", "fscore")}, "map": ranked["map"]}


def calibrate(
    pipeline: Pipeline, head_name: str, val: list[ManifestRow], rule: str, target_fdr: float
) -> dict[str, float]:
    """Choose the box score threshold on `val`: best F-score ("f1") or most recall with FDR <= target ("fdr")."""
    _check_rule(rule)
    head: DetectionHead = pipeline.graph.heads[head_name]
    candidates = predicted_boxes(pipeline, head_name, val)
    return calibrate_boxes(head, candidates, [r.read_boxes() for r in val], rule, target_fdr)


def calibrate_boxes(
    head: DetectionHead, candidates: list[list[Box]], truth: list[list[Box]], rule: str, target_fdr: float
) -> dict[str, float]:
    """calibrate() on candidate boxes already predicted (down to the candidate floor) and the true boxes."""
    _check_rule(rule)
    scores, hits, positives = ranked_matches(candidates, truth, head.params.iou_threshold)
    threshold, figures = choose_box_threshold(scores, hits, positives, rule, target_fdr, head.params.min_score)
    recorded = {k: v for k, v in head.calibration.items() if k == "split"}  # the training split outlives re-calibration
    head.calibration = {"threshold": threshold, "rule": rule, "target_fdr": target_fdr, **figures, **recorded}
    return {"threshold": threshold, **figures}


def _check_rule(rule: str) -> None:
    if rule not in ("f1", "fdr"):
        raise InputError(f"rule: {rule!r}; expected 'f1' or 'fdr'")


FITTERS.register("detection")(Fitter(fit_data="labelled", fit=fit, calibrate=calibrate))
