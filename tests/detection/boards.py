"""Synthetic PCB pairs in DeepPCB's look (black copper on white, 640x640): a clean board and one with defects."""

from __future__ import annotations

import cv2
import numpy as np

SIZE = 640
SHORT_CENTRE = (250, 150)  # a bridge between the two horizontal tracks
SPUR_CENTRE = (336, 425)  # a sliver sticking out of the vertical track


def clean_board() -> np.ndarray:
    """Tracks and pads: (H, W, 3) uint8 RGB, copper black."""
    board = np.full((SIZE, SIZE), 255, np.uint8)
    cv2.line(board, (60, 120), (580, 120), 0, 14)
    cv2.line(board, (60, 180), (580, 180), 0, 14)
    cv2.line(board, (320, 300), (320, 560), 0, 14)
    cv2.line(board, (100, 400), (320, 300), 0, 12)
    cv2.circle(board, (100, 400), 26, 0, -1)
    cv2.circle(board, (100, 400), 10, 255, -1)
    cv2.rectangle(board, (440, 380), (490, 430), 0, -1)
    cv2.line(board, (465, 430), (465, 560), 0, 12)
    return np.repeat(board[:, :, None], 3, axis=2)


def defective_board() -> np.ndarray:
    """The clean board with a short between the horizontal tracks and a spur on the vertical track."""
    board = clean_board()[:, :, 0].copy()
    x, y = SHORT_CENTRE
    cv2.line(board, (x, 127), (x + 4, 173), 0, 5)
    x, y = SPUR_CENTRE
    spur = np.array([[326, y - 6], [346, y - 1], [346, y + 2], [326, y + 6]], np.int32)
    cv2.fillPoly(board, [spur], 0)
    return np.repeat(board[:, :, None], 3, axis=2)


def centre(box: dict) -> tuple[float, float]:
    return (box["x1"] + box["x2"]) / 2, (box["y1"] + box["y2"]) / 2


def near(box: dict, point: tuple[int, int], tolerance: float = 16.0) -> bool:
    """True when the box's centre lies within `tolerance` pixels of `point`."""
    x, y = centre(box)
    return abs(x - point[0]) <= tolerance and abs(y - point[1]) <= tolerance
