"""Where the defect is: patch scores -> smoothed anomaly map at image resolution -> boxes, and overlay images."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from mmfusion.encoders.patch_grid import content_size


def canvas_map(patch_scores: np.ndarray, canvas: int, sigma: float) -> np.ndarray:
    """Patch scores (h, w) upsampled to the (canvas, canvas) letterbox and Gaussian-smoothed (sigma in pixels)."""
    upsampled = cv2.resize(patch_scores.astype(np.float32), (canvas, canvas), interpolation=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(upsampled, (0, 0), sigma) if sigma > 0 else upsampled  # (S, S)


def content_map(smoothed: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """The part of a letterbox map (S, S) that covers the image content, (content_h, content_w)."""
    content_h, content_w = content_size(image_size[0], image_size[1], smoothed.shape[0])
    return smoothed[:content_h, :content_w]


def to_image_size(content: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """A content map resized to the input image's (H, W)."""
    height, width = image_size
    if content.shape == (height, width):
        return content.astype(np.float32, copy=False)
    return cv2.resize(content, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)


def boxes_from_map(
    anomaly_map: np.ndarray, level: float, min_area: int, label: str, fallback: bool = False
) -> list[dict[str, Any]]:
    """Boxes (x1, y1, x2, y2, label, score) around connected regions of `anomaly_map >= level`, largest score first.

    score is the region's peak value. Regions smaller than `min_area` pixels are dropped. With `fallback`
    (the image was judged defective but no region reaches `level`), the region around the map's peak at
    half its height above the map's median is returned instead, so a flagged part always shows where.
    """
    peak = float(anomaly_map.max())
    binary = anomaly_map >= level
    if fallback and not binary.any():
        binary = anomaly_map >= (peak + float(np.median(anomaly_map))) / 2
        min_area = 1
    height, width = anomaly_map.shape
    if binary.all() and (height * width >= min_area or fallback):  # one region, the whole map: nothing to label
        return [{"x1": 0, "y1": 0, "x2": width, "y2": height, "label": label, "score": peak}]
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    boxes = []
    for component in range(1, count):
        x, y, box_width, box_height, area = (int(v) for v in stats[component])
        if area < min_area:
            continue
        inside = anomaly_map[y : y + box_height, x : x + box_width]  # the region's peak, read within its box
        if area < box_width * box_height:
            inside = inside[labels[y : y + box_height, x : x + box_width] == component]
        boxes.append(
            {"x1": x, "y1": y, "x2": x + box_width, "y2": y + box_height, "label": label, "score": float(inside.max())}
        )
    if fallback and not boxes and count > 1:
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        x, y, box_width, box_height, _ = (int(v) for v in stats[largest])
        boxes.append({"x1": x, "y1": y, "x2": x + box_width, "y2": y + box_height, "label": label, "score": peak})
    return sorted(boxes, key=lambda box: -box["score"])


def heat_colours(anomaly_map: np.ndarray, top: float = 1.0) -> np.ndarray:
    """A normalised map (0 = good, 0.5 = threshold) as (H, W, 3) uint8 RGB in the JET colour map, capped at `top`."""
    scaled = np.clip(anomaly_map / top, 0.0, 1.0)
    coloured = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)  # BGR
    return cv2.cvtColor(coloured, cv2.COLOR_BGR2RGB)


def heat_strength(anomaly_map: np.ndarray, level: float = 0.5) -> np.ndarray:
    """How strongly each pixel of a map is shown, (H, W) float32 in [0, 1]: 0 at or below the map's own median
    (the item's background), 1 at its peak, or at `level` (the threshold) when the peak stays below it, so a
    map that never reaches the threshold is never drawn at full strength."""
    anomaly_map = np.asarray(anomaly_map, np.float32)
    low = float(np.median(anomaly_map))
    top = max(float(anomaly_map.max()), level)
    if top <= low:
        return np.zeros(anomaly_map.shape, np.float32)
    return np.clip((anomaly_map - low) / (top - low), 0.0, 1.0)


def overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    boxes: list[dict[str, Any]] = (),
    opacity: float = 0.75,
    level: float = 0.5,
) -> np.ndarray:
    """The image (H, W, 3) RGB with the map's heat colours blended in and the boxes drawn, (H, W, 3) uint8 RGB.

    Colour and opacity grow with heat_strength (JET, up to `opacity`), so the part shows through where the
    map is at its usual level and the hot region stands out whatever the map's scale.
    """
    strength = heat_strength(anomaly_map, level)  # (H, W)
    alpha = (opacity * strength)[:, :, None]
    blended = image.astype(np.float32) * (1.0 - alpha) + heat_colours(strength).astype(np.float32) * alpha
    blended = np.clip(blended.round(), 0, 255).astype(np.uint8)
    thickness = max(1, round(max(image.shape[:2]) / 300))
    for box in boxes:
        corner1 = (int(box["x1"]), int(box["y1"]))
        corner2 = (int(box["x2"]) - 1, int(box["y2"]) - 1)
        cv2.rectangle(blended, corner1, corner2, (255, 255, 255), thickness)
        text = f"{box.get('label', '')} {box.get('score', 0):.2f}"
        cv2.putText(blended, text, (corner1[0], max(10, corner1[1] - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255,) * 3)
    return blended


def write_overlay(path: str, image: np.ndarray, anomaly_map: np.ndarray, boxes: list[dict[str, Any]] = ()) -> None:
    """Write the overlay of an image, its anomaly map and boxes as a PNG file."""
    if not cv2.imwrite(str(path), cv2.cvtColor(overlay(image, anomaly_map, boxes), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
