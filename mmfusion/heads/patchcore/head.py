"""PatchCore-style anomaly head: patch features in the graph; memory-bank search, thresholds and boxes outside it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import cv2
import numpy as np
import torch
from pydantic import Field
from tqdm import tqdm

from mmfusion.config import ConfigError, HeadSpec, PartParams
from mmfusion.data.manifest import GOOD, ManifestRow
from mmfusion.encoders.patch_grid import content_cells
from mmfusion.heads.base import Head
from mmfusion.heads.patchcore.calibration import Calibration, calibrate_scores
from mmfusion.heads.patchcore.coreset import coreset_size, greedy_coreset
from mmfusion.heads.patchcore.localisation import boxes_from_map, canvas_map, content_map, to_image_size
from mmfusion.heads.patchcore.memory_bank import MemoryBank
from mmfusion.registry import HEADS
from mmfusion.types import Embedding, InputError, Inputs, Modality

if TYPE_CHECKING:
    from mmfusion.pipeline import Pipeline

META_FILE = "meta.json"
DEFECT = "defect"
FIT_BATCH = 8
PIXEL_SAMPLE_SIDE = 256  # calibration compares maps and masks at most this large (long side)


class PatchCoreParams(PartParams):
    """`params:` for anomaly.patchcore."""

    coreset_ratio: float = Field(default=0.02, gt=0.0, le=1.0)
    coreset_size: int | None = Field(default=None, ge=1)
    max_patches: int = Field(default=300_000, ge=1)
    projection_dim: int = Field(default=32, ge=0)
    smoothing_sigma: float = Field(default=4.0, ge=0.0)
    min_box_area: int = Field(default=16, ge=1)
    holdout_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    seed: int = 0


def batches(rows: list[Any], size: int) -> list[list[Any]]:
    """Consecutive slices of `size` rows."""
    return [rows[start : start + size] for start in range(0, len(rows), size)]


@HEADS.register("anomaly.patchcore")
class PatchCoreHead(Head):
    """Distance of every patch to its nearest good patch (a coreset memory bank) -> anomaly map, score, boxes.

    forward only reshapes the patch tokens to (B, h, w, D), so an exported graph holds no bank and no
    threshold; postprocess searches the bank, smooths the map, normalises with the calibration in
    `fitted/<head>/` (0.5 = threshold) and draws boxes around regions over the pixel threshold.
    """

    Params = PatchCoreParams
    example_grid = (4, 4)
    reads_image_sizes = True
    fit_data: ClassVar[str] = "good"

    def __init__(self, params: PatchCoreParams, input_dim: int, spec: HeadSpec) -> None:
        super().__init__(params, input_dim, spec)
        self.bank: MemoryBank | None = None
        self.calibration: Calibration | None = None
        self.canvas: int | None = None
        self.meta: dict[str, Any] = {}

    @property
    def fitted(self) -> bool:
        return self.bank is not None and self.calibration is not None

    def forward(self, fused: Embedding) -> dict[str, torch.Tensor]:
        if fused.grid is None:
            raise ValueError("anomaly.patchcore reads spatial patch tokens; use encoder image.patch_features")
        height, width = fused.grid
        patches = fused.tokens.reshape(fused.tokens.shape[0], height, width, fused.tokens.shape[2])  # (B, h, w, D)
        return {"patch_features": patches}

    # outside the graph -------------------------------------------------------------------------------------

    def raw_maps(
        self, patch_features: np.ndarray, image_sizes: list[tuple[int, int] | None]
    ) -> list[tuple[float, np.ndarray]]:
        """(raw image score, raw anomaly map at image size) per item of patch features (B, h, w, D)."""
        if self.bank is None or self.canvas is None:
            raise ConfigError("anomaly.patchcore is not fitted; run `mmfusion fit MODEL --train TRAIN.csv --out DIR`")
        batch, height, width, _ = patch_features.shape
        distances = self.bank.distances(patch_features.reshape(batch * height * width, -1))
        patch_scores = distances.reshape(batch, height, width)  # (B, h, w)
        results = []
        for scores, size in zip(patch_scores, image_sizes):
            size = size or (self.canvas, self.canvas)
            content = content_map(canvas_map(scores, self.canvas, self.params.smoothing_sigma), size)
            results.append((float(content.max()), to_image_size(content, size)))
        return results

    def postprocess(
        self, outputs: dict[str, np.ndarray], image_sizes: list[tuple[int, int] | None] | None = None
    ) -> list[dict[str, Any]]:
        features = outputs["patch_features"]  # (B, h, w, D)
        if not self.fitted:
            message = "not fitted: run `mmfusion fit` on good parts first"
            return [{"fitted": False, "message": message} for _ in range(features.shape[0])]
        results = []
        for raw_score, raw_map in self.raw_maps(features, image_sizes or [None] * features.shape[0]):
            score = self.calibration.image_score(raw_score)
            anomaly_map = self.calibration.pixel_map(raw_map)
            defective = raw_score >= self.calibration.image_threshold
            boxes = (
                boxes_from_map(anomaly_map, 0.5, self.params.min_box_area, DEFECT, fallback=True) if defective else []
            )
            results.append(
                {
                    "label": DEFECT if defective else GOOD,
                    "score": score,
                    "raw_score": raw_score,
                    "anomaly_map": anomaly_map,
                    "boxes": boxes,
                }
            )
        return results

    def decision_margin(self, result: dict[str, Any]) -> float | None:
        if "raw_score" not in result:
            return None  # not fitted: no verdict to be near
        threshold = self.calibration.image_threshold
        return abs(result["raw_score"] - threshold) / max(abs(threshold), 1e-12)

    # fitting -----------------------------------------------------------------------------------------------

    def _name_in(self, pipeline: Pipeline) -> str:
        return next(name for name, head in pipeline.graph.heads.items() if head is self)

    def _patch_features(self, pipeline: Pipeline, rows: list[ManifestRow], what: str):
        """Yield (row, image, patch features (h, w, D)) for every row, batch by batch, with a progress bar."""
        key = f"{self._name_in(pipeline)}.patch_features"
        for batch in tqdm(batches(rows, FIT_BATCH), desc=what, unit="batch", disable=None):
            images = [row.read_image() for row in batch]
            features = pipeline.raw_outputs([Inputs(image=image) for image in images])[key]  # (B, h, w, D)
            yield from zip(batch, images, features)

    def fit(self, pipeline: Pipeline, train: list[ManifestRow], val: list[ManifestRow] | None) -> dict[str, float]:
        """Build the memory bank from good rows; calibrate on a hold-out of them (use `calibrate` for real data)."""
        started = time.perf_counter()
        encoder = pipeline.encoder(Modality.IMAGE)
        self.canvas = getattr(encoder.params, "image_size", None)
        if self.canvas is None or getattr(encoder, "grid", None) is None:
            raise ConfigError(f"anomaly.patchcore needs encoder image.patch_features, got {encoder.registry_name}")
        good = [row for row in train if row.is_good]
        if not good:
            raise InputError("train manifest has no 'good' rows; anomaly.patchcore learns from good parts only")
        holdout = round(len(good) * self.params.holdout_fraction) if val is None and len(good) >= 5 else 0
        bank_rows, holdout_rows = good[: len(good) - holdout], good[len(good) - holdout :]
        # at most max_patches candidates in memory: each image gives an equal random share when there are more
        per_image = -(-self.params.max_patches // len(bank_rows))
        generator = torch.Generator().manual_seed(self.params.seed)
        patches, total = [], 0
        for _, image, features in self._patch_features(pipeline, bank_rows, "features"):
            cells = content_cells(image.shape[0], image.shape[1], self.canvas, features.shape[:2])
            content = torch.from_numpy(features[cells].astype(np.float32))  # (n, D)
            total += content.shape[0]
            if content.shape[0] > per_image:
                content = content[torch.randperm(content.shape[0], generator=generator)[:per_image]]
            patches.append(content)
        candidates = torch.cat(patches)  # (N, D)
        features_done = time.perf_counter()
        size = coreset_size(candidates.shape[0], self.params.coreset_ratio, self.params.coreset_size)
        chosen = greedy_coreset(
            candidates, size, self.params.projection_dim, seed=self.params.seed, progress=True
        )  # (M,)
        # the bank is stored in float16; score with exactly what a reload will give
        self.bank = MemoryBank(candidates[chosen].half().float())
        coreset_seconds = time.perf_counter() - features_done
        self.meta = {
            "image_size": self.canvas,
            "grid": list(encoder.grid),
            "feature_dim": self.bank.dim,
            "bank_size": self.bank.size,
            "fitted_images": len(bank_rows),
            "patches": total,
        }
        self.calibration = None if val is not None else self._default_calibration(pipeline, holdout_rows or bank_rows)
        return {
            "images": len(bank_rows),
            "patches": total,
            "bank_size": self.bank.size,
            "bank_mb": self.bank.nbytes / 2**20,
            "feature_seconds": features_done - started,
            "coreset_seconds": coreset_seconds,
            "seconds": time.perf_counter() - started,
        }

    def _default_calibration(self, pipeline: Pipeline, rows: list[ManifestRow]) -> Calibration:
        """Thresholds from good parts only: beyond the worst of them and three deviations above their mean."""
        scores = np.asarray([score for score, _ in self._raw_scores(pipeline, rows, "hold-out")])
        threshold = float(max(scores.max() * 1.05, scores.mean() + 3 * scores.std()))
        good_level = float(np.median(scores))
        return Calibration(
            threshold, good_level, threshold, good_level, rule="fdr", target_fdr=0.0,
            source="good training parts", counts={"good": len(rows), "defective": 0},
        )  # fmt: skip

    def _raw_scores(self, pipeline: Pipeline, rows: list[ManifestRow], what: str) -> list[tuple[float, np.ndarray]]:
        results = []
        for _, image, features in self._patch_features(pipeline, rows, what):
            results.extend(self.raw_maps(features[None], [image.shape[:2]]))
        return results

    def calibrate(self, pipeline: Pipeline, val: list[ManifestRow], rule: str, target_fdr: float) -> dict[str, float]:
        """Choose image and pixel thresholds on validation rows by `rule` ('f1' or 'fdr') and store them."""
        raw = self._raw_scores(pipeline, val, "calibration")
        image_scores = np.asarray([score for score, _ in raw])
        is_defect = np.asarray([not row.is_good for row in val])
        pixel_scores, pixel_truth = [], []
        for row, (_, raw_map) in zip(val, raw):
            mask = row.read_mask()
            if mask is None and not row.is_good:
                continue  # a defect without pixel ground truth says nothing about which pixels
            mask = np.zeros(raw_map.shape, bool) if mask is None else mask
            scores, truth = _downsample(raw_map, mask)
            pixel_scores.append(scores.ravel())
            pixel_truth.append(truth.ravel())
        has_pixels = any(truth.any() for truth in pixel_truth)
        self.calibration = calibrate_scores(
            image_scores,
            is_defect,
            np.concatenate(pixel_scores) if has_pixels else None,
            np.concatenate(pixel_truth) if has_pixels else None,
            rule,
            target_fdr,
        )
        flagged = image_scores >= self.calibration.image_threshold
        good = ~is_defect
        summary = {
            "image_threshold": self.calibration.image_threshold,
            "pixel_threshold": self.calibration.pixel_threshold,
            "val_false_detection_rate": float(flagged[good].mean()) if good.any() else float("nan"),
        }
        if is_defect.any():
            summary["val_miss_rate"] = float((~flagged[is_defect]).mean())
        return summary

    # artifacts ---------------------------------------------------------------------------------------------

    def save_fitted(self, folder: Path) -> None:
        """Write memory_bank.npy (float16), calibration.json and meta.json into `folder`."""
        if not self.fitted:
            raise ConfigError("anomaly.patchcore has nothing to save: it is not fitted")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.bank.save(folder)
        self.calibration.save(folder)
        (folder / META_FILE).write_text(json.dumps(self.meta, indent=2) + "\n")

    def load_fitted(self, folder: Path) -> None:
        """Read what `save_fitted` wrote; ConfigError naming the file when it does not fit this head."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / META_FILE).read_text())
            canvas = int(meta["image_size"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{folder / META_FILE}: not a readable fitted-head description ({error})") from None
        bank = MemoryBank.load(folder)
        if bank.dim != self.input_dim:
            raise ConfigError(
                f"{folder}: memory bank has {bank.dim}-d patch features but the encoder gives {self.input_dim}-d; "
                "refit the model after changing its encoder"
            )
        self.bank, self.canvas, self.meta = bank, canvas, meta
        self.calibration = Calibration.load(folder)


def _downsample(raw_map: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A map and its mask at most PIXEL_SAMPLE_SIDE on the long side (a mask pixel counts if any of it is defect)."""
    height, width = raw_map.shape
    scale = PIXEL_SAMPLE_SIDE / max(height, width)
    if scale >= 1:
        return raw_map, mask
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    scores = cv2.resize(raw_map, size, interpolation=cv2.INTER_AREA)
    truth = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
    return scores, truth
