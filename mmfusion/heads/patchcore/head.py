"""PatchCore-style anomaly head: patch features in the graph; memory-bank search, thresholds and boxes outside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from mmfusion.config import ConfigError, HeadSpec, PartParams
from mmfusion.encoders.patch_grid import content_cells
from mmfusion.heads.base import Head
from mmfusion.heads.patchcore.calibration import Calibration
from mmfusion.heads.patchcore.localisation import boxes_from_map, canvas_map, content_map, to_image_size
from mmfusion.heads.patchcore.memory_bank import MemoryBank
from mmfusion.heads.patchcore.position_bank import PositionBank
from mmfusion.heads.patchcore.score_groups import ScoreGroups, texture
from mmfusion.registry import HEADS
from mmfusion.security.integrity import IntegrityError, read_model_file
from mmfusion.types import Embedding

META_FILE = "meta.json"
DEFECT, GOOD = "defect", "good"


class PatchCoreParams(PartParams):
    """`params:` for anomaly.patchcore."""

    coreset_ratio: float = Field(default=0.02, gt=0.0, le=1.0)
    coreset_size: int | None = Field(default=None, ge=1)
    max_patches: int = Field(default=300_000, ge=1)
    projection_dim: int = Field(default=32, ge=0)
    smoothing_sigma: float = Field(default=4.0, ge=0.0)
    min_box_area: int = Field(default=16, ge=1)
    holdout_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    search: Literal["auto", "fp32", "bf16"] = "auto"  # memory-bank products (memory_bank.py); auto: bf16 if native
    bank: Literal["coreset", "position"] = "coreset"
    """coreset: one bank of good patches from anywhere; position: every good part's patch kept per grid
    position, for parts framed alike (position_bank.py)."""
    neighbours: int = Field(default=3, ge=1)
    """bank: position: a patch's score is its mean distance to this many nearest good patches at its position."""
    top_patches: int = Field(default=0, ge=0)
    """0: the image score is the smoothed map's peak; N: the mean of the N highest patch scores on the content."""
    score_groups: int = Field(default=1, ge=1)
    """bank: position: cluster the good parts into this many groups by texture (k-means on each channel's spread
    across positions) and put image scores on their group's scale, so one threshold serves mono- and
    polycrystalline cells alike (score_groups.py); 1: one scale for all."""
    seed: int = 0


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

    def __init__(self, params: PatchCoreParams, input_dim: int, spec: HeadSpec) -> None:
        super().__init__(params, input_dim, spec)
        if params.score_groups > 1 and params.bank != "position":
            raise ConfigError(
                f"anomaly.patchcore score_groups: {params.score_groups} needs bank: position (its leave-self-out "
                f"scores set each group's scale), got bank: {params.bank}; set bank: position or score_groups: 1"
            )
        self.bank: MemoryBank | PositionBank | None = None
        self.groups: ScoreGroups | None = None
        self.calibration: Calibration | None = None
        self.canvas: int | None = None
        self.meta: dict[str, Any] = {}

    @property
    def fitted(self) -> bool:
        """True once the head has a memory bank and a calibration (fitted here or loaded)."""
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
        batch, height, width, dim = patch_features.shape
        if isinstance(self.bank, PositionBank):
            patch_scores = self.bank.scores(patch_features.reshape(batch, height * width, dim))  # (B, h*w)
        else:
            patch_scores = self.bank.distances(patch_features.reshape(batch * height * width, dim))
        patch_scores = patch_scores.reshape(batch, height, width)  # (B, h, w)
        results = [self.image_score(scores, size) for scores, size in zip(patch_scores, image_sizes)]
        if self.groups is not None:  # score and map alike, so the pixel threshold stays on the image score's scale
            medians, spreads = self.groups.levels(texture(patch_features.reshape(batch, height * width, dim)))
            results = [
                ((score - median) / spread, ((raw_map - median) / spread).astype(np.float32))
                for (score, raw_map), median, spread in zip(results, medians, spreads)
            ]
        return results

    def image_score(self, patch_scores: np.ndarray, size: tuple[int, int] | None) -> tuple[float, np.ndarray]:
        """(image score, anomaly map at image size) of one part's patch scores (h, w), before any score group."""
        size = size or (self.canvas, self.canvas)
        content = content_map(canvas_map(patch_scores, self.canvas, self.params.smoothing_sigma), size)
        score = float(content.max())
        if self.params.top_patches:
            on_content = patch_scores[content_cells(size[0], size[1], self.canvas, patch_scores.shape)]  # (n,)
            score = float(np.sort(on_content)[-self.params.top_patches :].mean())
        return score, to_image_size(content, size)

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

    # artifacts ---------------------------------------------------------------------------------------------

    def save_fitted(self, folder: Path) -> None:
        """Write the bank (memory_bank.npy, or position_bank.npy + position_stats.npy), score_groups.json when
        there are groups, calibration.json and meta.json."""
        if not self.fitted:
            raise ConfigError("anomaly.patchcore has nothing to save: it is not fitted")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.bank.save(folder)
        if self.groups is not None:
            self.groups.save(folder)
        self.calibration.save(folder)
        (folder / META_FILE).write_text(json.dumps(self.meta, indent=2) + "\n")

    def load_fitted(self, folder: Path) -> None:
        """Read what `save_fitted` wrote; ConfigError naming the file when it does not fit this head."""
        folder = Path(folder)
        try:
            meta = json.loads(read_model_file(folder / META_FILE))
            canvas = int(meta["image_size"])
        except IntegrityError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{folder / META_FILE}: not a readable fitted-head description ({error})") from None
        if meta.get("bank", "coreset") != self.params.bank:
            raise ConfigError(
                f"{folder}: fitted with bank: {meta.get('bank', 'coreset')}, but the config says bank: "
                f"{self.params.bank}; refit the model after changing it"
            )
        if self.params.bank == "position":
            bank = PositionBank.load(folder, self.params.neighbours)
        else:
            bank = MemoryBank.load(folder, self.params.search)
        if bank.dim != self.input_dim:
            raise ConfigError(
                f"{folder}: memory bank has {bank.dim}-d patch features but the encoder gives {self.input_dim}-d; "
                "refit the model after changing its encoder"
            )
        groups = ScoreGroups.load(folder, self.params.score_groups, bank.dim) if self.params.score_groups > 1 else None
        self.bank, self.groups, self.canvas, self.meta = bank, groups, canvas, meta
        self.calibration = Calibration.load(folder)
