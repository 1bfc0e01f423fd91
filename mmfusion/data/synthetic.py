"""Synthetic inspection parts: textured surfaces with painted scratches, spots and cracks whose masks are known."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from mmfusion.data.manifest import GOOD, write_manifest

DEFECT_TYPES = ("scratch", "spot", "crack")


def make_surface(rng: np.random.Generator, size: int) -> np.ndarray:
    """A defect-free part: brushed-metal grain under random illumination, (size, size, 3) float32 in [0, 255]."""
    grain = rng.normal(0.0, 1.0, (size * 2, size * 2)).astype(np.float32)
    # brushing: a long thin blur along a direction that varies a little from part to part
    length = max(9, size // 6) | 1
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0 / length
    angle = rng.uniform(-8.0, 8.0)
    rotation = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), angle, 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (length, length))
    kernel /= kernel.sum()
    grain = cv2.filter2D(grain, -1, kernel)
    start = size // 2
    grain = grain[start : start + size, start : start + size]
    grain = grain / (grain.std() + 1e-6)
    fine = cv2.GaussianBlur(rng.normal(0.0, 1.0, (size, size)).astype(np.float32), (0, 0), 0.7)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) / size
    direction = rng.uniform(0, 2 * np.pi)
    gradient = np.cos(direction) * (cols - 0.5) + np.sin(direction) * (rows - 0.5)  # linear light falloff
    centre = rng.uniform(0.3, 0.7, 2)
    vignette = ((cols - centre[0]) ** 2 + (rows - centre[1]) ** 2).astype(np.float32)
    base = rng.uniform(120.0, 150.0)
    luminance = base + rng.uniform(10, 25) * gradient - rng.uniform(10, 30) * vignette
    luminance += rng.uniform(7.0, 10.0) * grain + 3.0 * fine
    tint = np.asarray([1.0, 1.0, 1.0], np.float32) + rng.uniform(-0.03, 0.03, 3).astype(np.float32)
    return luminance[:, :, None] * tint  # (S, S, 3)


def _scratch(rng: np.random.Generator, size: int) -> np.ndarray:
    """A thin, slightly curved line: alpha (size, size) float32 in [0, 1]."""
    alpha = np.zeros((size, size), np.float32)
    length = rng.uniform(0.15, 0.35) * size
    angle = rng.uniform(0, np.pi)
    start = rng.uniform(0.2, 0.8, 2) * size
    bend = rng.uniform(-0.15, 0.15)
    points = []
    for t in np.linspace(0.0, 1.0, 12):
        along = angle + bend * (t - 0.5) * 2
        points.append(start + t * length * np.array([np.cos(along), np.sin(along)]))
    cv2.polylines(alpha, [np.round(points).astype(np.int32)], False, 1.0, thickness=int(rng.integers(1, 3)))
    return alpha


def _spot(rng: np.random.Generator, size: int) -> np.ndarray:
    """A soft-edged blotch (stain, pit or splash)."""
    alpha = np.zeros((size, size), np.float32)
    centre = tuple(int(v) for v in rng.uniform(0.2, 0.8, 2) * size)
    axes = tuple(int(v) for v in rng.uniform(0.025, 0.06, 2) * size + 2)
    cv2.ellipse(alpha, centre, axes, rng.uniform(0, 180), 0, 360, 1.0, thickness=-1)
    return cv2.GaussianBlur(alpha, (0, 0), max(1.0, axes[0] / 4))


def _crack(rng: np.random.Generator, size: int) -> np.ndarray:
    """A jagged random-walk fissure with a branch."""
    alpha = np.zeros((size, size), np.float32)
    position = rng.uniform(0.25, 0.75, 2) * size
    heading = rng.uniform(0, 2 * np.pi)
    step = size / 60
    points = [position.copy()]
    for _ in range(int(rng.integers(14, 24))):
        heading += rng.normal(0, 0.5)
        position = position + step * np.array([np.cos(heading), np.sin(heading)])
        points.append(position.copy())
    cv2.polylines(alpha, [np.round(points).astype(np.int32)], False, 1.0, thickness=2)
    branch_from = points[len(points) // 2]
    branch_heading = heading + rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2)
    branch = [branch_from]
    for _ in range(int(rng.integers(5, 10))):
        branch_heading += rng.normal(0, 0.4)
        branch.append(branch[-1] + step * np.array([np.cos(branch_heading), np.sin(branch_heading)]))
    cv2.polylines(alpha, [np.round(branch).astype(np.int32)], False, 1.0, thickness=1)
    return alpha


PAINTERS = {"scratch": _scratch, "spot": _spot, "crack": _crack}


def paint_defect(rng: np.random.Generator, surface: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect of `kind` onto a float surface in place; returns (surface, mask (S, S) bool)."""
    if kind not in PAINTERS:
        raise ValueError(f"defect kind {kind!r} is not known; allowed: {', '.join(PAINTERS)}")
    alpha = PAINTERS[kind](rng, surface.shape[0])  # (S, S)
    # cracks are dark; scratches and spots are brighter or darker than the surface
    sign = -1.0 if kind == "crack" or rng.random() < 0.5 else 1.0
    contrast = rng.uniform(45.0, 70.0) if kind != "spot" else rng.uniform(35.0, 55.0)
    surface += (sign * contrast * alpha)[:, :, None]
    return surface, alpha > 0.25


def mask_boxes(mask: np.ndarray, kind: str) -> list[tuple[int, int, int, int, str]]:
    """The bounding box (x1, y1, x2, y2, type) of a defect mask, in pixels (x2, y2 exclusive)."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return []
    return [(int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1, kind)]


def make_part(
    rng: np.random.Generator, size: int, defect: str | None = None
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int, str]]]:
    """One part image (S, S, 3) uint8 RGB, its defect mask (S, S) bool and boxes; `defect` None = a good part."""
    surface = make_surface(rng, size)
    mask = np.zeros((size, size), bool)
    boxes: list[tuple[int, int, int, int, str]] = []
    if defect is not None:
        surface, mask = paint_defect(rng, surface, defect)
        boxes = mask_boxes(mask, defect)
    surface += rng.normal(0.0, 1.5, surface.shape).astype(np.float32)  # sensor noise
    return np.clip(surface, 0, 255).astype(np.uint8), mask, boxes


def _write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), pixels):
        raise OSError(f"could not write {path}")
    return path


def _write_split(
    folder: Path, split: str, count: int, defect_fraction: float, size: int, rng: np.random.Generator
) -> Path:
    defective = int(round(count * defect_fraction))
    kinds: list[str | None] = [DEFECT_TYPES[i % len(DEFECT_TYPES)] for i in range(defective)]
    kinds += [None] * (count - defective)
    rows = []
    for index, kind in enumerate(kinds):
        image, mask, boxes = make_part(rng, size, kind)
        stem = f"{kind or GOOD}_{index:03d}"
        row: dict[str, str | Path | None] = {"image": _write_png(folder / split / f"{stem}.png", image)}
        row["label"] = kind or GOOD
        if split != "train":
            row["mask"] = _write_png(folder / split / "masks" / f"{stem}.png", mask.astype(np.uint8) * 255)
            if boxes:
                boxes_path = folder / split / "boxes" / f"{stem}.txt"
                boxes_path.parent.mkdir(parents=True, exist_ok=True)
                boxes_path.write_text("".join(f"{x1} {y1} {x2} {y2} {t}\n" for x1, y1, x2, y2, t in boxes))
                row["boxes"] = boxes_path
        rows.append(row)
    return write_manifest(folder / f"{split}.csv", rows)


def make_synthetic_suite(
    folder: Path,
    n_train_good: int = 60,
    n_val: int = 40,
    n_test: int = 60,
    size: int = 256,
    seed: int = 0,
    defect_fraction: float = 0.5,
) -> dict[str, Path]:
    """Write train (good only), val and test (good and defective, with masks and boxes) manifests under `folder`."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    return {
        "train": _write_split(folder, "train", n_train_good, 0.0, size, rng),
        "val": _write_split(folder, "val", n_val, defect_fraction, size, rng),
        "test": _write_split(folder, "test", n_test, defect_fraction, size, rng),
    }
