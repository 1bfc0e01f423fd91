"""Boxes from the detector's maps: peaks of each type's heatmap, sizes read at the peaks, class-agnostic NMS."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter

from mmfusion.data.manifest import Box


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one (4,) box with (N, 4) boxes, all x1 y1 x2 y2."""
    width = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = width * height
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum((box[2] - box[0]) * (box[3] - box[1]) + areas - inter, 1e-9)


def non_maximum_suppression(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Indices kept by greedy NMS, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    for index in order:
        if keep and (box_iou(boxes[index], boxes[keep]) > iou_threshold).any():
            continue
        keep.append(int(index))
    return keep


def decode_boxes(
    heatmap: np.ndarray,
    geometry: np.ndarray,
    stride: int,
    types: list[str],
    min_score: float,
    nms_iou: float,
    image_size: tuple[int, int] | None = None,
    max_boxes: int = 100,
) -> list[Box]:
    """One item's boxes: heatmap (K, h, w) probabilities, geometry (4, h, w) -> Boxes in pixels.

    geometry holds log width, log height (cells) and the centre relative to the cell's corner (cells).

    A peak is a cell that is the maximum of its 3x3 neighbourhood in its type's map and scores at least
    `min_score`; overlapping boxes of any type (IoU > nms_iou) keep only the best-scoring one.
    """
    peaks = (heatmap == maximum_filter(heatmap, size=(1, 3, 3), mode="constant")) & (heatmap >= min_score)
    kinds, rows, cols = np.nonzero(peaks)
    if len(kinds) == 0:
        return []
    scores = heatmap[kinds, rows, cols]
    order = np.argsort(-scores, kind="stable")[: 4 * max_boxes]
    kinds, rows, cols, scores = kinds[order], rows[order], cols[order], scores[order]
    widths = np.exp(geometry[0, rows, cols]) * stride
    heights = np.exp(geometry[1, rows, cols]) * stride
    centre_x, centre_y = (cols + geometry[2, rows, cols]) * stride, (rows + geometry[3, rows, cols]) * stride
    corners = np.stack(
        [centre_x - widths / 2, centre_y - heights / 2, centre_x + widths / 2, centre_y + heights / 2], 1
    )
    limit_h, limit_w = image_size if image_size is not None else (heatmap.shape[1] * stride, heatmap.shape[2] * stride)
    corners = np.clip(corners, 0, [limit_w, limit_h, limit_w, limit_h])
    keep = non_maximum_suppression(corners, scores, nms_iou)[:max_boxes]
    return [Box(*(float(v) for v in corners[i]), types[kinds[i]], float(scores[i])) for i in keep]
