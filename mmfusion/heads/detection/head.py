"""Defect detection head: per-type centre heatmaps and box geometry in the graph, boxes and thresholds outside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from pydantic import Field

from mmfusion.config import ConfigError, HeadSpec, PartParams
from mmfusion.data.manifest import Box, ManifestRow
from mmfusion.evaluation.boxes import box_metrics, ranked_matches
from mmfusion.fitting.detector_training import TrainSettings, load_pairs, train_detector
from mmfusion.heads.base import Head
from mmfusion.heads.detection.decode import decode_boxes
from mmfusion.heads.detection.network import CenterNet
from mmfusion.registry import HEADS
from mmfusion.types import Embedding, InputError, Inputs, Modality

WEIGHTS_FILE = "detector.pt"
CALIBRATION_FILE = "calibration.json"
DEFECT, PASS = "defect", "pass"


class TrainingParams(PartParams):
    """`training:` block of the detection head's params (see mmfusion.fitting.detector_training.TrainSettings)."""

    epochs: int = Field(default=8, ge=1)
    batch_size: int = Field(default=32, ge=1)
    crop: int = Field(default=160, ge=32)
    defect_crops: int = Field(default=3, ge=0)
    background_crops: int = Field(default=1, ge=0)
    learning_rate: float = Field(default=3e-3, gt=0)
    template_shift: float = Field(default=0.3, ge=0, le=1)
    noise: float = Field(default=0.5, ge=0, le=1)
    seed: int = 0


class DetectionParams(PartParams):
    """`params:` for the detection head; `stride` must equal the encoder's."""

    stride: int = Field(default=8, ge=1, le=32)
    width: int = Field(default=32, ge=4)
    min_score: float = Field(default=0.05, ge=0, le=1)
    nms_iou: float = Field(default=0.5, ge=0, le=1)
    max_boxes: int = Field(default=100, ge=1)
    iou_threshold: float = Field(default=0.33, ge=0, le=1)
    training: TrainingParams = Field(default_factory=TrainingParams)


@HEADS.register("detection")
class DetectionHead(Head):
    """Boxes of typed defects from spatial tokens (e.g. image.golden_template's fused pair cells).

    forward gives `heatmap` (B, K, h, w) per-type centre probabilities and `geometry` (B, 4, h, w) box
    log-size and centre offset in cells; postprocess turns peaks into boxes above the score threshold
    (calibrated into `fitted/<head>/calibration.json`, else the config's thresholds). Types are `labels`.
    """

    Params = DetectionParams
    example_params = {"stride": 4, "width": 8}
    example_grid = (8, 8)
    fit_data: ClassVar[str] = "labelled"

    def __init__(self, params: DetectionParams, input_dim: int, spec: HeadSpec) -> None:
        super().__init__(params, input_dim, spec)
        if not spec.labels:
            raise ConfigError("detection head: labels: empty; expected the defect type names")
        self.network = CenterNet(input_dim, len(spec.labels), params.width)
        self.calibration: dict[str, Any] = {}

    @property
    def types(self) -> list[str]:
        return list(self.spec.labels)

    def threshold(self, kind: str) -> float:
        """The score a box of type `kind` needs: calibrated when fitted, else from the config."""
        if "threshold" in self.calibration:
            return float(self.calibration["threshold"])
        return float(self.spec.thresholds.get(kind, self.spec.threshold))

    def maps(self, fused: Embedding) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmap logits (B, K, h, w) and geometry (B, 4, h, w) from the fused tokens' grid."""
        if fused.grid is None:
            raise ValueError("detection head reads spatial tokens; the fused embedding has no grid")
        height, width = fused.grid
        batch, _, dim = fused.tokens.shape
        cells = fused.tokens.transpose(1, 2).reshape(batch, dim, height, width)  # (B, D, h, w)
        return self.network(cells)

    def forward(self, fused: Embedding) -> dict[str, torch.Tensor]:
        logits, geometry = self.maps(fused)
        valid = fused.mask.reshape(logits.shape[0], 1, *logits.shape[-2:]).to(logits.dtype)  # (B, 1, h, w)
        return {"heatmap": torch.sigmoid(logits) * valid, "geometry": geometry}

    def detect(self, outputs: dict[str, np.ndarray], min_score: float | None = None) -> list[list[Box]]:
        """Every peak box per item scoring at least `min_score` (default: the params' candidate floor)."""
        floor = self.params.min_score if min_score is None else min_score
        return [
            decode_boxes(
                heat, geometry, self.params.stride, self.types, floor, self.params.nms_iou, None, self.params.max_boxes
            )
            for heat, geometry in zip(outputs["heatmap"], outputs["geometry"], strict=True)
        ]

    def postprocess(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        results = []
        for heat, boxes in zip(outputs["heatmap"], self.detect(outputs), strict=True):
            kept = [b for b in boxes if b.score >= self.threshold(b.type)]
            type_scores = heat.reshape(heat.shape[0], -1).max(1)  # (K,)
            stride = self.params.stride
            heatmap = cv2.resize(
                heat.max(0), (heat.shape[2] * stride, heat.shape[1] * stride), interpolation=cv2.INTER_LINEAR
            )
            results.append(
                {
                    "label": DEFECT if kept else PASS,
                    "score": float(type_scores.max()) if type_scores.size else 0.0,
                    "scores": {kind: float(score) for kind, score in zip(self.types, type_scores, strict=True)},
                    "boxes": [b.to_dict() for b in kept],
                    "heatmap": heatmap,
                }
            )
        return results

    def _check_pipeline(self, pipeline) -> None:
        encoder = pipeline.encoder(Modality.IMAGE)
        if not getattr(encoder, "uses_reference", False):
            raise ConfigError(
                f"{pipeline.name}: the detection head trains on pairs; its image encoder reads no reference"
            )
        stride = getattr(encoder.params, "stride", self.params.stride)
        if stride != self.params.stride:
            raise ConfigError(
                f"{pipeline.name}: detection stride {self.params.stride} differs from the encoder's {stride}"
            )

    def fit(self, pipeline, train: list[ManifestRow], val: list[ManifestRow] | None) -> dict[str, float]:
        """Train the detector on labelled pairs (rows with `reference` and `boxes`); validation figures if `val`."""
        self._check_pipeline(pipeline)
        pairs = load_pairs(train, self.types)
        if not any(len(p.boxes) for p in pairs):
            raise InputError("train: no row has boxes; the detection head learns from labelled defects")
        settings = TrainSettings(**self.params.training.model_dump())
        torch.manual_seed(settings.seed)
        self.network = CenterNet(self.input_dim, len(self.types), self.params.width)  # from scratch, seeded
        summary = train_detector(self, pipeline.encoder(Modality.IMAGE), pairs, settings)
        self.calibration = {}
        if val:
            metrics = self.evaluate(pipeline, val)
            summary.update({f"val_{k}": v for k, v in metrics.items()})
        return summary

    def predicted_boxes(self, pipeline, rows: list[ManifestRow], batch_size: int = 4) -> list[list[Box]]:
        """Every candidate box (down to the candidate floor) for each row, through the pipeline's backend."""
        head_name = next(name for name, head in pipeline.graph.heads.items() if head is self)
        boxes: list[list[Box]] = []
        for start in range(0, len(rows), batch_size):
            batch = [
                Inputs(image=r.read_image(), reference=r.read_reference()) for r in rows[start : start + batch_size]
            ]
            raw = pipeline.raw_outputs(batch)
            boxes += self.detect({key: raw[f"{head_name}.{key}"] for key in ("heatmap", "geometry")})
        return boxes

    def evaluate(self, pipeline, rows: list[ManifestRow]) -> dict[str, float]:
        """Box precision, recall, F-score at the current thresholds and mAP over all candidates (DeepPCB protocol)."""
        candidates = self.predicted_boxes(pipeline, rows)
        truth = [r.read_boxes() for r in rows]
        kept = [[b for b in boxes if b.score >= self.threshold(b.type)] for boxes in candidates]
        at_threshold = box_metrics(kept, truth, self.params.iou_threshold)
        ranked = box_metrics(candidates, truth, self.params.iou_threshold)
        return {**{k: at_threshold["overall"][k] for k in ("precision", "recall", "fscore")}, "map": ranked["map"]}

    def calibrate(self, pipeline, val: list[ManifestRow], rule: str, target_fdr: float) -> dict[str, float]:
        """Choose the box score threshold on `val`: best F-score ("f1") or most recall with FDR <= target ("fdr")."""
        if rule not in ("f1", "fdr"):
            raise InputError(f"rule: {rule!r}; expected 'f1' or 'fdr'")
        return self.calibrate_boxes(
            self.predicted_boxes(pipeline, val), [r.read_boxes() for r in val], rule, target_fdr
        )

    def calibrate_boxes(
        self, candidates: list[list[Box]], truth: list[list[Box]], rule: str, target_fdr: float
    ) -> dict[str, float]:
        """calibrate() on candidate boxes already predicted (down to the candidate floor) and the true boxes."""
        if rule not in ("f1", "fdr"):
            raise InputError(f"rule: {rule!r}; expected 'f1' or 'fdr'")
        scores, hits, positives = ranked_matches(candidates, truth, self.params.iou_threshold)
        threshold, figures = choose_threshold(scores, hits, positives, rule, target_fdr, self.params.min_score)
        self.calibration = {"threshold": threshold, "rule": rule, "target_fdr": target_fdr, **figures}
        return {"threshold": threshold, **figures}

    def save_fitted(self, folder: Path) -> None:
        """Write the detector weights and the calibration (threshold, types) to `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.network.state_dict(), folder / WEIGHTS_FILE)
        document = {"types": self.types, "stride": self.params.stride, **self.calibration}
        (folder / CALIBRATION_FILE).write_text(json.dumps(document, indent=2) + "\n")

    def load_fitted(self, folder: Path) -> None:
        """Load what save_fitted wrote; ConfigError when the types or stride differ from this config's."""
        from mmfusion.repository.manifests import safe_torch_load

        folder = Path(folder)
        calibration_path = folder / CALIBRATION_FILE
        document = json.loads(calibration_path.read_text()) if calibration_path.is_file() else {}
        if document.get("types", self.types) != self.types:
            raise ConfigError(
                f"{calibration_path}: types {document['types']} differ from the config's labels {self.types}"
            )
        if document.get("stride", self.params.stride) != self.params.stride:
            raise ConfigError(
                f"{calibration_path}: stride {document['stride']} differs from the config's {self.params.stride}"
            )
        try:
            self.network.load_state_dict(safe_torch_load(folder / WEIGHTS_FILE))
        except RuntimeError as error:
            raise ConfigError(
                f"{folder / WEIGHTS_FILE}: does not fit this detector ({str(error).splitlines()[0]})"
            ) from None
        self.calibration = {k: v for k, v in document.items() if k not in ("types", "stride")}
        self.eval()


def choose_threshold(
    scores: np.ndarray, hits: np.ndarray, positives: int, rule: str, target_fdr: float, floor: float
) -> tuple[float, dict[str, float]]:
    """The threshold (one of the scores) maximising F-score, or the lowest whose FDR is at most `target_fdr`."""
    if len(scores) == 0:
        return 1.0, {"precision": 0.0, "recall": 0.0, "fscore": 0.0, "false_detection_rate": 0.0}
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    true_pos = np.cumsum(hits)
    detections = np.arange(1, len(scores) + 1)
    last = np.r_[scores[1:] != scores[:-1], True]  # a threshold keeps every box with an equal score
    precision, recall = true_pos / detections, true_pos / max(positives, 1)
    fscore = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    if rule == "f1":
        index = int(np.argmax(np.where(last, fscore, -1.0)))
    else:
        allowed = np.nonzero(last & (1 - precision <= target_fdr))[0]
        index = int(allowed[-1]) if len(allowed) else 0
    figures = {
        "precision": float(precision[index]),
        "recall": float(recall[index]),
        "fscore": float(fscore[index]),
        "false_detection_rate": float(1 - precision[index]),
    }
    return max(float(scores[index]), floor), figures
