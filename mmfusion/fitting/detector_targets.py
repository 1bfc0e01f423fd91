"""Training targets and losses for the centre-heatmap detector (CenterNet, Zhou et al. 2019)."""

from __future__ import annotations

import numpy as np
import torch

SIGMA_PER_SIZE = 0.54 / 6  # TTFNet's Gaussian: sigma = alpha * side / 6, alpha = 0.54
MIN_SIGMA = 0.6  # cells: keep at least the centre's neighbours as soft negatives


def render_targets(
    boxes: list[tuple[float, float, float, float, int]], types: int, height: int, width: int, stride: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heatmap (K, h, w) with a Gaussian peak of 1 per box centre, geometry (4, h, w) and its weight (h, w).

    Boxes are (x1, y1, x2, y2, type index) in pixels of the cell grid's image; a box whose centre falls
    outside the grid is skipped. Geometry (log width, log height in cells, centre x and y relative to the
    cell's corner, in cells) is supervised wherever a box's Gaussian exceeds 0.3, weighted by it, so that
    cells next to a peak also know the box.
    """
    heatmap = np.zeros((types, height, width), np.float32)
    geometry = np.zeros((4, height, width), np.float32)
    weight = np.zeros((height, width), np.float32)
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    for x1, y1, x2, y2, kind in boxes:
        kind = int(kind)
        centre_x, centre_y = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
        col, row = int(np.floor(centre_x)), int(np.floor(centre_y))
        if not (0 <= row < height and 0 <= col < width):
            continue
        box_w, box_h = (x2 - x1) / stride, (y2 - y1) / stride
        sigma_x, sigma_y = max(MIN_SIGMA, SIGMA_PER_SIZE * box_w), max(MIN_SIGMA, SIGMA_PER_SIZE * box_h)
        gaussian = np.exp(-((cols - col) ** 2) / (2 * sigma_x**2) - (rows - row) ** 2 / (2 * sigma_y**2))  # (h, w)
        np.maximum(heatmap[kind], gaussian, out=heatmap[kind])
        heatmap[kind, row, col] = 1.0
        claim = (gaussian > 0.3) & (gaussian >= weight)
        geometry[0][claim], geometry[1][claim] = np.log(box_w), np.log(box_h)
        geometry[2][claim] = (centre_x - cols + np.zeros_like(rows))[claim]
        geometry[3][claim] = (centre_y - rows + np.zeros_like(cols))[claim]
        weight[claim] = gaussian[claim]
    return heatmap, geometry, weight


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel focal loss, normalised by the number of centres."""
    probability = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)  # (B, K, h, w)
    positive = target.eq(1.0).float()
    positive_loss = torch.log(probability) * (1 - probability) ** alpha * positive
    negative_loss = torch.log(1 - probability) * probability**alpha * (1 - target) ** beta * (1 - positive)
    return -(positive_loss.sum() + negative_loss.sum()) / positive.sum().clamp_min(1.0)


def geometry_loss(predicted: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted L1 on log box sizes and centre offsets; predicted/target (B, 4, h, w), weight (B, h, w)."""
    error = (predicted - target).abs().sum(1)  # (B, h, w)
    return (error * weight).sum() / weight.sum().clamp_min(1.0)
