"""Fit an anomaly.patchcore head: a coreset memory bank of good patches, then thresholds on validation parts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from mmfusion.config import ConfigError
from mmfusion.data.manifest import ManifestRow
from mmfusion.encoders.patch_grid import content_cells
from mmfusion.fitting.registry import FITTERS, Fitter
from mmfusion.fitting.thresholds import best_f1_threshold, choose_threshold
from mmfusion.heads.patchcore.calibration import Calibration
from mmfusion.heads.patchcore.coreset import coreset_size, greedy_coreset
from mmfusion.heads.patchcore.head import PatchCoreHead
from mmfusion.heads.patchcore.memory_bank import MemoryBank
from mmfusion.heads.patchcore.position_bank import PositionBank
from mmfusion.heads.patchcore.score_groups import ScoreGroups, texture
from mmfusion.types import InputError, Inputs, Modality

if TYPE_CHECKING:
    from mmfusion.pipeline import Pipeline

FIT_BATCH = 8
PIXEL_SAMPLE_SIDE = 256  # calibration compares maps and masks at most this large (long side)


def batches(rows: list[Any], size: int) -> list[list[Any]]:
    """Consecutive slices of `size` rows."""
    return [rows[start : start + size] for start in range(0, len(rows), size)]


def patch_features(
    pipeline: Pipeline, head_name: str, rows: list[ManifestRow], what: str
) -> Iterator[tuple[ManifestRow, np.ndarray, np.ndarray]]:
    """Yield (row, image, patch features (h, w, D)) for every row, batch by batch, with a progress bar."""
    key = f"{head_name}.patch_features"
    for batch in tqdm(batches(rows, FIT_BATCH), desc=what, unit="batch", disable=None):
        images = [row.read_image() for row in batch]
        features = pipeline.raw_outputs([Inputs(image=image) for image in images])[key]  # (B, h, w, D)
        yield from zip(batch, images, features)


def raw_scores(
    pipeline: Pipeline, head_name: str, rows: list[ManifestRow], what: str
) -> list[tuple[float, np.ndarray]]:
    """(raw image score, raw anomaly map at image size) for every row, through the head's memory bank."""
    head: PatchCoreHead = pipeline.graph.heads[head_name]
    results = []
    for _, image, features in patch_features(pipeline, head_name, rows, what):
        results.extend(head.raw_maps(features[None], [image.shape[:2]]))
    return results


def fit(
    pipeline: Pipeline, head_name: str, train: list[ManifestRow], val: list[ManifestRow] | None
) -> dict[str, float]:
    """Build the memory bank from good rows; calibrate on a hold-out of them (use `calibrate` for real data)."""
    head: PatchCoreHead = pipeline.graph.heads[head_name]
    params = head.params
    started = time.perf_counter()
    encoder = pipeline.encoder(Modality.IMAGE)
    head.canvas = getattr(encoder.params, "image_size", None)
    if head.canvas is None or getattr(encoder, "grid", None) is None:
        raise ConfigError(f"anomaly.patchcore needs encoder image.patch_features, got {encoder.registry_name}")
    good = [row for row in train if row.is_good]
    if not good:
        raise InputError("train manifest has no 'good' rows; anomaly.patchcore learns from good parts only")
    holdout = round(len(good) * params.holdout_fraction) if val is None and len(good) >= 5 else 0
    bank_rows, holdout_rows = good[: len(good) - holdout], good[len(good) - holdout :]
    if params.bank == "position":
        return fit_position_bank(pipeline, head_name, bank_rows, holdout_rows, val, started)
    # at most max_patches candidates in memory: each image gives an equal random share when there are more
    per_image = -(-params.max_patches // len(bank_rows))
    generator = torch.Generator().manual_seed(params.seed)
    patches, total = [], 0
    for _, image, features in patch_features(pipeline, head_name, bank_rows, "features"):
        cells = content_cells(image.shape[0], image.shape[1], head.canvas, features.shape[:2])
        content = torch.from_numpy(features[cells].astype(np.float32))  # (n, D)
        total += content.shape[0]
        if content.shape[0] > per_image:
            content = content[torch.randperm(content.shape[0], generator=generator)[:per_image]]  # (per_image, D)
        patches.append(content)
    candidates = torch.cat(patches)  # (N, D)
    features_done = time.perf_counter()
    size = coreset_size(candidates.shape[0], params.coreset_ratio, params.coreset_size)
    chosen = greedy_coreset(candidates, size, params.projection_dim, seed=params.seed, progress=True)  # (M,)
    # the bank is stored in float16; score with exactly what a reload will give
    head.bank = MemoryBank(candidates[chosen].half().float(), params.search)  # (M, D)
    coreset_seconds = time.perf_counter() - features_done
    head.meta = {
        "image_size": head.canvas,
        "grid": list(encoder.grid),
        "feature_dim": head.bank.dim,
        "bank_size": head.bank.size,
        "fitted_images": len(bank_rows),
        "patches": total,
    }
    head.calibration = None if val is not None else default_calibration(pipeline, head_name, holdout_rows or bank_rows)
    return {
        "images": len(bank_rows),
        "patches": total,
        "bank_size": head.bank.size,
        "bank_mb": head.bank.nbytes / 2**20,
        "feature_seconds": features_done - started,
        "coreset_seconds": coreset_seconds,
        "seconds": time.perf_counter() - started,
    }


def fit_position_bank(
    pipeline: Pipeline,
    head_name: str,
    bank_rows: list[ManifestRow],
    holdout_rows: list[ManifestRow],
    val: list[ManifestRow] | None,
    started: float,
) -> dict[str, float]:
    """Keep every good part's patch features per grid position, standardised by leave-self-out scores."""
    head: PatchCoreHead = pipeline.graph.heads[head_name]
    params, (height, width) = head.params, pipeline.encoder(Modality.IMAGE).grid
    if len(bank_rows) * height * width > params.max_patches:
        raise ConfigError(
            f"anomaly.patchcore bank: position keeps all {len(bank_rows)} parts x {height * width} positions = "
            f"{len(bank_rows) * height * width} patches, over max_patches {params.max_patches}; "
            "raise max_patches or fit fewer parts"
        )
    if len(bank_rows) <= params.neighbours:
        raise InputError(
            f"train manifest: {len(bank_rows)} good parts for the position bank; "
            f"bank: position with neighbours: {params.neighbours} needs at least {params.neighbours + 1}"
        )
    features, sizes = [], []
    for _, image, parts in patch_features(pipeline, head_name, bank_rows, "features"):
        features.append(parts)
        sizes.append(image.shape[:2])
    bank = np.stack(features).reshape(len(bank_rows), height * width, -1)  # (N, L, D)
    features_done = time.perf_counter()
    # stored in float16: standardise with exactly what a reload will give
    head.bank = PositionBank(bank.astype(np.float16).transpose(1, 0, 2), params.neighbours)  # (L, N, D)
    left_out = head.bank.fit_standardisation().reshape(len(bank_rows), height, width).numpy()  # (N, h, w)
    head.groups = None
    if params.score_groups > 1:
        scores = np.array([head.image_score(part, size)[0] for part, size in zip(left_out, sizes)])  # (N,)
        textures = texture(head.bank.features.transpose(0, 1))  # (N, D)
        head.groups = ScoreGroups.fit(textures, scores, params.score_groups, params.seed)
    head.meta = {
        "image_size": head.canvas,
        "grid": [height, width],
        "feature_dim": head.bank.dim,
        "bank": "position",
        "bank_parts": head.bank.parts,
        "score_groups": params.score_groups,
        "fitted_images": len(bank_rows),
        "patches": head.bank.parts * head.bank.positions,
    }
    head.calibration = None if val is not None else default_calibration(pipeline, head_name, holdout_rows or bank_rows)
    return {
        "images": len(bank_rows),
        "patches": head.bank.parts * head.bank.positions,
        "bank_size": head.bank.parts,
        "bank_mb": head.bank.nbytes / 2**20,
        "feature_seconds": features_done - started,
        "coreset_seconds": time.perf_counter() - features_done,
        "seconds": time.perf_counter() - started,
    }


def default_calibration(pipeline: Pipeline, head_name: str, rows: list[ManifestRow]) -> Calibration:
    """Thresholds from good parts only: beyond the worst of them and three deviations above their mean."""
    scores = np.asarray([score for score, _ in raw_scores(pipeline, head_name, rows, "hold-out")])  # (N,)
    threshold = float(max(scores.max() * 1.05, scores.mean() + 3 * scores.std()))
    good_level = float(np.median(scores))
    return Calibration(
        threshold, good_level, threshold, good_level, rule="fdr", target_fdr=0.0,
        source="good training parts", counts={"good": len(rows), "defective": 0},
    )  # fmt: skip


def calibrate(
    pipeline: Pipeline, head_name: str, val: list[ManifestRow], rule: str, target_fdr: float
) -> dict[str, float]:
    """Choose image and pixel thresholds on validation rows by `rule` ('f1' or 'fdr') and store them in the head."""
    head: PatchCoreHead = pipeline.graph.heads[head_name]
    raw = raw_scores(pipeline, head_name, val, "calibration")
    image_scores = np.asarray([score for score, _ in raw])  # (N,)
    is_defect = np.asarray([not row.is_good for row in val])  # (N,)
    pixel_scores, pixel_truth = [], []
    for row, (_, raw_map) in zip(val, raw):
        mask = row.read_mask()
        if mask is None and not row.is_good:
            continue  # a defect without pixel ground truth says nothing about which pixels
        mask = np.zeros(raw_map.shape, bool) if mask is None else mask  # (H, W)
        scores, truth = downsample(raw_map, mask)
        pixel_scores.append(scores.ravel())
        pixel_truth.append(truth.ravel())
    has_pixels = any(truth.any() for truth in pixel_truth)
    head.calibration = calibrate_scores(
        image_scores,
        is_defect,
        np.concatenate(pixel_scores) if has_pixels else None,
        np.concatenate(pixel_truth) if has_pixels else None,
        rule,
        target_fdr,
    )
    flagged = image_scores >= head.calibration.image_threshold  # (N,)
    good = ~is_defect
    summary = {
        "image_threshold": head.calibration.image_threshold,
        "pixel_threshold": head.calibration.pixel_threshold,
        "val_false_detection_rate": float(flagged[good].mean()) if good.any() else float("nan"),
    }
    if is_defect.any():
        summary["val_miss_rate"] = float((~flagged[is_defect]).mean())
    return summary


def calibrate_scores(
    image_scores: np.ndarray,
    is_defect: np.ndarray,
    pixel_scores: np.ndarray | None,
    pixel_truth: np.ndarray | None,
    rule: str,
    target_fdr: float,
    source: str = "validation",
) -> Calibration:
    """Choose the image threshold by `rule`; the pixel threshold by best pixel F1 when masks exist, else alike."""
    image_scores = np.asarray(image_scores, np.float64)  # (N,)
    is_defect = np.asarray(is_defect, bool)  # (N,)
    good = image_scores[~is_defect]
    if good.size == 0:
        raise InputError("validation manifest has no good rows; normalisation needs good parts")
    image_threshold = choose_threshold(image_scores, is_defect, rule, target_fdr)
    image_good_level = float(np.median(good))
    if pixel_scores is not None and pixel_truth is not None and pixel_truth.any() and not pixel_truth.all():
        # never above the image threshold: the image score is the map's peak, so a flagged part always has a region
        pixel_threshold = min(best_f1_threshold(pixel_scores, pixel_truth)[0], image_threshold)
        pixel_good_level = float(np.median(pixel_scores[~pixel_truth]))
    else:
        # no pixel ground truth: flag pixels at the image threshold, normalised by the good parts' median
        pixel_threshold, pixel_good_level = image_threshold, image_good_level
    counts = {"good": int((~is_defect).sum()), "defective": int(is_defect.sum())}
    return Calibration(
        image_threshold=float(image_threshold),
        image_good_level=image_good_level,
        pixel_threshold=float(pixel_threshold),
        pixel_good_level=pixel_good_level,
        rule=rule,
        target_fdr=float(target_fdr),
        source=source,
        counts=counts,
    )


def downsample(raw_map: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A map and its mask at most PIXEL_SAMPLE_SIDE on the long side (a mask pixel counts if any of it is defect)."""
    height, width = raw_map.shape
    scale = PIXEL_SAMPLE_SIDE / max(height, width)
    if scale >= 1:
        return raw_map, mask
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    scores = cv2.resize(raw_map, size, interpolation=cv2.INTER_AREA)  # (h, w)
    truth = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0  # (h, w)
    return scores, truth


FITTERS.register("anomaly.patchcore")(Fitter(fit_data="good", fit=fit, calibrate=calibrate))
