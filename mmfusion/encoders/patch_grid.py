"""Multi-scale patch features: letterbox geometry and the aggregation of backbone feature maps into patch tokens."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from mmfusion.media import area_resize


def content_size(height: int, width: int, canvas: int) -> tuple[int, int]:
    """(height, width) of an image letterboxed into a square canvas: the long side fills it, aspect kept."""
    scale = canvas / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def letterbox(image: np.ndarray, canvas: int) -> np.ndarray:
    """An (H, W, 3) uint8 image scaled into the top-left of a (canvas, canvas, 3) square; the rest is mirrored.

    Mirroring (rather than a flat colour) keeps the padding's texture statistics close to the part's, so
    patches at the content edge do not look anomalous.
    """
    height, width = content_size(image.shape[0], image.shape[1], canvas)
    shrinking = height < image.shape[0]
    resized = area_resize(image, width, height) if shrinking else cv2.resize(image, (width, height))  # bilinear
    if (height, width) == (canvas, canvas):
        return resized
    return cv2.copyMakeBorder(resized, 0, canvas - height, 0, canvas - width, cv2.BORDER_REFLECT_101)


def content_cells(height: int, width: int, canvas: int, grid: tuple[int, int]) -> np.ndarray:
    """(h, w) bool: the grid cells whose centres lie on the image content of a letterboxed (height, width) image."""
    content_h, content_w = content_size(height, width, canvas)
    rows = (np.arange(grid[0]) + 0.5) * canvas / grid[0]
    cols = (np.arange(grid[1]) + 0.5) * canvas / grid[1]
    return (rows[:, None] < content_h) & (cols[None, :] < content_w)


def aggregate_patches(maps: list[torch.Tensor], neighbourhood: int) -> torch.Tensor:
    """Locally averaged feature maps of several strides, resized to the finest grid and concatenated.

    maps: [(B, C_i, h_i, w_i)] finest first; returns (B, sum C_i, h_0, w_0). The neighbourhood average
    (PatchCore's local aggregation) gives each patch some context without losing resolution.
    """
    size = maps[0].shape[-2:]
    pooled = []
    for feature_map in maps:
        if neighbourhood > 1:
            feature_map = F.avg_pool2d(
                feature_map, neighbourhood, stride=1, padding=neighbourhood // 2, count_include_pad=False
            )  # (B, C, h_i, w_i)
        if feature_map.shape[-2:] != size:
            feature_map = F.interpolate(feature_map, size=size, mode="bilinear", align_corners=False)
        pooled.append(feature_map)
    return torch.cat(pooled, dim=1)  # (B, sum C, h, w)
