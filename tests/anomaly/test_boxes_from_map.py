"""boxes_from_map: one box per connected region over the level, scored by the region's own peak."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mmfusion.heads.patchcore.localisation import boxes_from_map


def labelled_reference(anomaly_map: np.ndarray, level: float, min_area: int) -> list[dict]:
    """The plain definition: label the regions, a box and the peak over each region's own pixels."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((anomaly_map >= level).astype(np.uint8), connectivity=8)
    boxes = []
    for component in range(1, count):
        x, y, width, height, area = (int(v) for v in stats[component])
        if area >= min_area:
            score = float(anomaly_map[labels == component].max())
            boxes.append({"x1": x, "y1": y, "x2": x + width, "y2": y + height, "label": "defect", "score": score})
    return sorted(boxes, key=lambda box: -box["score"])


def spotted(seed: int, shape=(120, 160)) -> np.ndarray:
    """Smooth random blobs: many regions over 0.5, of every shape (L-shapes share boxes with other regions)."""
    noise = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return cv2.GaussianBlur(noise, (0, 0), 3) * 12 - 5.5


@pytest.mark.parametrize("seed", range(4))
def test_regions_and_their_peaks_match_the_plain_definition(seed):
    anomaly_map = spotted(seed)
    boxes = boxes_from_map(anomaly_map, 0.5, 4, "defect")
    assert len(boxes) >= 5 and boxes == labelled_reference(anomaly_map, 0.5, 4)


def test_a_region_inside_another_regions_box_keeps_its_own_peak():
    anomaly_map = np.zeros((40, 40), np.float32)
    anomaly_map[5:35, 5] = anomaly_map[5, 5:35] = anomaly_map[34, 5:35] = 0.6  # a U around the centre
    anomaly_map[18:22, 18:22] = 0.9  # a hotter region within the U's box
    first, second = boxes_from_map(anomaly_map, 0.5, 1, "defect")
    assert (first["score"], second["score"]) == (pytest.approx(0.9), pytest.approx(0.6))
    assert (first["x1"], first["y1"], first["x2"], first["y2"]) == (18, 18, 22, 22)


def test_a_map_over_the_level_everywhere_is_one_box_at_its_peak():
    anomaly_map = np.full((30, 50), 0.7, np.float32)
    anomaly_map[10, 20] = 2.5
    assert boxes_from_map(anomaly_map, 0.5, 16, "defect") == [
        {"x1": 0, "y1": 0, "x2": 50, "y2": 30, "label": "defect", "score": 2.5}
    ]
    tiny = np.full((3, 3), 0.7, np.float32)  # a region smaller than min_area: no box, unless a verdict needs one
    assert boxes_from_map(tiny, 0.5, 16, "defect") == []
    assert boxes_from_map(tiny, 0.5, 16, "defect", fallback=True)[0]["x2"] == 3


def test_fallback_shows_the_peak_when_no_region_reaches_the_level():
    anomaly_map = np.zeros((20, 20), np.float32)
    anomaly_map[12:15, 3:6] = 0.3
    assert boxes_from_map(anomaly_map, 0.5, 4, "defect") == []
    (box,) = boxes_from_map(anomaly_map, 0.5, 4, "defect", fallback=True)
    assert (box["x1"], box["y1"], box["x2"], box["y2"], box["score"]) == (3, 12, 6, 15, pytest.approx(0.3))
