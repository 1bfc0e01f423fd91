"""Defect-preserving image augmentation: flips and quarter turns (masks, references, boxes alike), mild photometry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from mmfusion.data.manifest import Box

GEOMETRIC = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270")
"""Exact transforms: nothing is cropped or interpolated, so a defect and its outline survive unchanged."""


@dataclass(frozen=True)
class Photometric:
    """Lighting and sensor changes mild enough to keep scratches and spots visible."""

    contrast: float = 1.0
    brightness: float = 0.0
    gamma: float = 1.0
    noise_sigma: float = 0.0

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W, 3) uint8."""
        scaled = (image.astype(np.float32) / 255.0) ** self.gamma  # (H, W, 3)
        scaled = (scaled - 0.5) * self.contrast + 0.5 + self.brightness
        if self.noise_sigma:
            scaled = scaled + rng.normal(0.0, self.noise_sigma, scaled.shape).astype(np.float32)
        return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)

    def describe(self) -> str:
        return f"contrast={self.contrast:.2f},brightness={self.brightness:+.2f},gamma={self.gamma:.2f}"


def random_photometric(rng: np.random.Generator) -> Photometric:
    return Photometric(
        contrast=float(rng.uniform(0.85, 1.15)),
        brightness=float(rng.uniform(-0.08, 0.08)),
        gamma=float(rng.uniform(0.85, 1.15)),
        noise_sigma=float(rng.uniform(0.0, 0.01)),
    )


def transform_array(array: np.ndarray, name: str) -> np.ndarray:
    """Apply a geometric transform to an (H, W[, C]) array (image, reference or mask)."""
    operations: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "identity": lambda a: a,
        "hflip": lambda a: a[:, ::-1],
        "vflip": lambda a: a[::-1],
        "rot90": lambda a: np.rot90(a, 1),  # counter-clockwise
        "rot180": lambda a: np.rot90(a, 2),
        "rot270": lambda a: np.rot90(a, 3),
    }
    return np.ascontiguousarray(operations[name](array))


def transform_box(box: Box, name: str, width: int, height: int) -> Box:
    """Map a box of a width x height image the way `transform_array` maps its pixels."""
    x1, y1, x2, y2 = box.x1, box.y1, box.x2, box.y2
    corners = {
        "identity": (x1, y1, x2, y2),
        "hflip": (width - x2, y1, width - x1, y2),
        "vflip": (x1, height - y2, x2, height - y1),
        "rot90": (y1, width - x2, y2, width - x1),
        "rot180": (width - x2, height - y2, width - x1, height - y1),
        "rot270": (height - y2, x1, height - y1, x2),
    }[name]
    return Box(*corners, box.type, box.score)


def write_boxes(path, boxes: list[Box]) -> None:
    """A boxes file in the manifest format: one `x1 y1 x2 y2 type` line per box."""
    path.write_text("".join(f"{b.x1:g} {b.y1:g} {b.x2:g} {b.y2:g} {b.type}\n" for b in boxes))


def write_rgb(path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write the image")
