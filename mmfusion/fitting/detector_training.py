"""Train the template detector on crops: around labelled defects and at random, with flips, rotations and noise."""

from __future__ import annotations

import math
import multiprocessing
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from tqdm import tqdm

from mmfusion.data.manifest import ManifestRow
from mmfusion.encoders.base import Encoder
from mmfusion.fitting.detector_targets import focal_loss, geometry_loss, render_targets
from mmfusion.training.engine import pick_device
from mmfusion.types import InputError


@dataclass(frozen=True)
class TrainSettings:
    """How the detector is trained (the head's `training:` params)."""

    epochs: int = 8
    batch_size: int = 32
    crop: int = 160
    defect_crops: int = 3
    background_crops: int = 1
    learning_rate: float = 3e-3
    template_shift: float = 0.3
    noise: float = 0.5
    scale: float = 0.0
    invert: float = 0.0
    identical: float = 0.0
    morphology: float = 0.0
    weight_decay: float = 1e-4
    inverse_types: tuple[int, ...] = ()
    """invert: the type index each type becomes when copper and board swap (empty: every type stays)."""
    seed: int = 0
    device: str = "auto"
    """Where the network trains: auto (CUDA when there is one), cpu, cuda or cuda:N; crops are cut on the CPU."""
    workers: int = 0
    """Processes cutting the crops, one epoch each (0: in this process, one random stream for the whole run)."""


@dataclass
class LabelledPair:
    """A tested image, its template ((H, W, 3) uint8 RGB, or (H, W, 1) grey) and boxes (N, 5): x1 y1 x2 y2 type."""

    tested: np.ndarray
    template: np.ndarray
    boxes: np.ndarray


def load_pairs(rows: list[ManifestRow], types: list[str]) -> list[LabelledPair]:
    """Read every row's image, template and boxes; InputError naming the row for anything unusable."""
    index = {name: i for i, name in enumerate(types)}
    pairs = []
    for row in tqdm(rows, desc="reading pairs", unit="pair", disable=None):
        if row.reference is None:
            raise InputError(f"line {row.line}: reference: empty; the template detector trains on aligned pairs")
        boxes = row.read_boxes()
        unknown = sorted({b.type for b in boxes} - set(index))
        if unknown:
            raise InputError(f"line {row.line}: boxes: type(s) {', '.join(unknown)} unknown; expected {types}")
        table = np.array([[b.x1, b.y1, b.x2, b.y2, index[b.type]] for b in boxes], np.float32).reshape(-1, 5)
        pairs.append(LabelledPair(_compact(row.read_image()), _compact(row.read_reference()), table))
    return pairs


def _compact(image: np.ndarray) -> np.ndarray:
    """A grey image (equal channels) kept as (H, W, 1): a third of the memory, the same pixels once cropped."""
    if np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 0], image[:, :, 2]):
        return image[:, :, :1].copy()
    return image


def _window(pair: LabelledPair, crop: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a crop: around a random box's centre when the pair has boxes and rng says so."""
    height, width = pair.tested.shape[:2]
    if len(pair.boxes):
        x1, y1, x2, y2, _ = pair.boxes[rng.integers(len(pair.boxes))]
        margin = crop // 8
        left = (x1 + x2) / 2 - rng.uniform(margin, crop - margin)
        top = (y1 + y2) / 2 - rng.uniform(margin, crop - margin)
    else:
        left, top = rng.uniform(0, max(width - crop, 0)), rng.uniform(0, max(height - crop, 0))
    return int(np.clip(top, 0, max(height - crop, 0))), int(np.clip(left, 0, max(width - crop, 0)))


def _crop(image: np.ndarray, top: int, left: int, crop: int) -> np.ndarray:
    """A (crop, crop, 3) window, zero-padded where it leaves the image."""
    out = np.zeros((crop, crop, 3), np.uint8)
    window = image[max(top, 0) : top + crop, max(left, 0) : left + crop]  # (h, w, 1 or 3)
    out[max(-top, 0) : max(-top, 0) + window.shape[0], max(-left, 0) : max(-left, 0) + window.shape[1]] = window
    return out


def _dihedral(tested: np.ndarray, template: np.ndarray, boxes: np.ndarray, k: int, flip: bool):
    """Rotate a square crop by k quarter turns (counter-clockwise) and optionally mirror it, boxes too."""
    size = tested.shape[0]
    boxes = boxes.copy()
    for _ in range(k):
        x1, y1, x2, y2 = boxes[:, 0].copy(), boxes[:, 1].copy(), boxes[:, 2].copy(), boxes[:, 3].copy()
        boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3] = y1, size - x2, y2, size - x1
    tested, template = np.rot90(tested, k), np.rot90(template, k)
    if flip:
        x1, x2 = boxes[:, 0].copy(), boxes[:, 2].copy()
        boxes[:, 0], boxes[:, 2] = size - x2, size - x1
        tested, template = tested[:, ::-1], template[:, ::-1]
    return np.ascontiguousarray(tested), np.ascontiguousarray(template), boxes


def sample_crop(pair: LabelledPair, settings: TrainSettings, rng: np.random.Generator, around_defect: bool):
    """One augmented training crop: (tested, template, boxes in crop pixels)."""
    crop = settings.crop
    zoom = math.exp(rng.uniform(-1.0, 1.0) * math.log1p(settings.scale)) if settings.scale else 1.0
    window = max(8, int(round(crop / zoom)))  # source pixels that become the crop
    source = pair if around_defect else LabelledPair(pair.tested, pair.template, pair.boxes[:0])
    top, left = _window(source, window, rng)
    tested = _crop(pair.tested, top, left, window)
    shift_y, shift_x = rng.integers(-1, 2, size=2) if rng.random() < settings.template_shift else (0, 0)
    template = _crop(pair.template, top + shift_y, left + shift_x, window)  # small misregistration, as on a real line
    boxes = pair.boxes.copy()
    boxes[:, [0, 2]] -= left
    boxes[:, [1, 3]] -= top
    if window != crop:
        boxes[:, :4] *= crop / window
        tested = cv2.resize(tested, (crop, crop), interpolation=cv2.INTER_LINEAR)
        template = cv2.resize(template, (crop, crop), interpolation=cv2.INTER_LINEAR)
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    boxes = boxes[(centre_x >= 0) & (centre_x < crop) & (centre_y >= 0) & (centre_y < crop)]
    tested, template, boxes = _dihedral(tested, template, boxes, int(rng.integers(4)), bool(rng.integers(2)))
    if settings.identical and rng.random() < settings.identical:
        tested, template = (tested, tested) if rng.random() < 0.5 else (template, template)
        template, boxes = template.copy(), boxes[:0]
    if settings.morphology and rng.random() < settings.morphology:
        tested, template = _reshape_copper(tested, template, rng)
    if settings.invert and rng.random() < settings.invert:
        tested, template, boxes = 255 - tested, 255 - template, boxes.copy()
        if settings.inverse_types:
            boxes[:, 4] = np.asarray(settings.inverse_types, np.float32)[boxes[:, 4].astype(np.int64)]
    if rng.random() < settings.noise:
        sigma = rng.uniform(1.0, 8.0)
        tested = np.clip(tested + rng.normal(0, sigma, tested.shape), 0, 255).astype(np.uint8)
        template = np.clip(template + rng.normal(0, sigma, template.shape), 0, 255).astype(np.uint8)
    return tested, template, boxes


def _reshape_copper(tested: np.ndarray, template: np.ndarray, rng: np.random.Generator):
    """Both (crop, crop, 3) images eroded or dilated alike by a 3x3 or 5x5 square: every edge moves 1 or 2 pixels."""
    kernel = np.ones((3, 3) if rng.random() < 0.5 else (5, 5), np.uint8)
    operation = cv2.erode if rng.random() < 0.5 else cv2.dilate
    return operation(tested, kernel), operation(template, kernel)


def epoch_crops(pairs: list[LabelledPair], settings: TrainSettings, rng: np.random.Generator) -> list:
    """Every crop of one epoch, shuffled: `defect_crops` per pair with boxes and `background_crops` per pair."""
    crops = []
    for pair in pairs:
        around = min(settings.defect_crops, len(pair.boxes))
        crops += [sample_crop(pair, settings, rng, True) for _ in range(around)]
        crops += [sample_crop(pair, settings, rng, False) for _ in range(settings.background_crops)]
    order = rng.permutation(len(crops))
    return [crops[i] for i in order]


_WORKER_PAIRS: list[LabelledPair] = []
"""The pairs a forked crop worker reads: inherited, never pickled."""


def _epoch_in_worker(settings: TrainSettings, epoch: int) -> list:
    """One epoch's crops from its own random stream (seed, epoch): the same run for any number of workers."""
    return epoch_crops(_WORKER_PAIRS, settings, np.random.default_rng([settings.seed, epoch]))


def epochs_of_crops(pairs: list[LabelledPair], settings: TrainSettings) -> Iterator[list]:
    """Each epoch's shuffled crops in order; with `workers`, cut ahead in processes forked now (workers + 1 ahead)."""
    if settings.workers <= 0:
        return _epochs_here(pairs, settings)
    global _WORKER_PAIRS
    _WORKER_PAIRS = pairs
    pool = multiprocessing.get_context("fork").Pool(settings.workers)  # forked before any CUDA work in this process
    _WORKER_PAIRS = []
    return _epochs_from(pool, settings)


def _epochs_here(pairs: list[LabelledPair], settings: TrainSettings) -> Iterator[list]:
    rng = np.random.default_rng(settings.seed)
    for _ in range(settings.epochs):
        yield epoch_crops(pairs, settings, rng)


def _epochs_from(pool, settings: TrainSettings) -> Iterator[list]:
    with pool:
        pending: deque = deque()
        for epoch in range(settings.epochs):
            pending.append(pool.apply_async(_epoch_in_worker, (settings, epoch)))
            if len(pending) > settings.workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def training_device(name: str) -> torch.device:
    """auto: CUDA when this machine has it, else the CPU (engine.pick_device); InputErrors name the bad value."""
    try:
        return pick_device(name)
    except ValueError:
        raise InputError(f"device: {name!r}; this machine has no CUDA device; expected cpu or auto") from None
    except RuntimeError:
        raise InputError(f"device: {name!r}; expected auto, cpu, cuda or cuda:N") from None


def train_detector(head, encoder: Encoder, pairs: list[LabelledPair], settings: TrainSettings) -> dict[str, float]:
    """Train `head` (a DetectionHead) in place on crops of `pairs` read through `encoder`; returns loss figures.

    The head trains on `settings.device` and is back on the device it came on when this returns.
    """
    device, home = training_device(settings.device), next(head.parameters()).device
    torch.manual_seed(settings.seed)
    stride, types = head.params.stride, len(head.spec.labels)
    cells = settings.crop // stride
    per_epoch = sum(min(settings.defect_crops, len(p.boxes)) + settings.background_crops for p in pairs)
    steps = settings.epochs * math.ceil(per_epoch / settings.batch_size)
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.learning_rate, total_steps=steps, pct_start=0.15)
    crops_by_epoch = epochs_of_crops(pairs, settings)  # forks (with workers) before CUDA starts here
    head.to(device).train()
    encoder.to(device)
    started, losses = time.perf_counter(), []
    progress = tqdm(total=steps, desc=f"training detector ({device.type})", unit="batch", mininterval=10)
    for crops in crops_by_epoch:
        for start in range(0, len(crops), settings.batch_size):
            batch = crops[start : start + settings.batch_size]
            arrays = encoder.preprocess([(tested, template) for tested, template, _ in batch])
            targets = [render_targets(boxes.tolist(), types, cells, cells, stride) for _, _, boxes in batch]
            heatmap = torch.from_numpy(np.stack([t[0] for t in targets])).to(device)  # (B, K, h, w)
            geometry = torch.from_numpy(np.stack([t[1] for t in targets])).to(device)  # (B, 4, h, w)
            weight = torch.from_numpy(np.stack([t[2] for t in targets])).to(device)  # (B, h, w)
            fused = encoder(**{name: torch.from_numpy(value).to(device) for name, value in arrays.items()})
            logits, predicted_geometry = head.maps(fused)
            heat_loss = focal_loss(logits, heatmap)
            box_loss = geometry_loss(predicted_geometry, geometry, weight)
            loss = heat_loss + box_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append((heat_loss.item(), box_loss.item()))
            progress.update()
            progress.set_postfix(heat=f"{heat_loss.item():.3f}", box=f"{box_loss.item():.3f}", refresh=False)
    progress.close()
    head.to(home).eval()
    encoder.to(home)
    tail = np.array(losses[-max(1, len(losses) // 10) :])
    return {
        "train_pairs": float(len(pairs)),
        "train_steps": float(len(losses)),
        "train_seconds": time.perf_counter() - started,
        "final_heatmap_loss": float(tail[:, 0].mean()),
        "final_box_loss": float(tail[:, 1].mean()),
    }
