"""Training crops: the boxes follow the pixels through window, misregistration, quarter turns, flips and zoom."""

from __future__ import annotations

import numpy as np
import pytest

from mmfusion.fitting.detector_training import LabelledPair, TrainSettings, sample_crop


def pair_with_one_defect() -> LabelledPair:
    """A 400x400 light board with a dark 20x12 blob at x 200-220, y 150-162, boxed exactly."""
    tested = np.full((400, 400, 1), 255, np.uint8)
    tested[150:162, 200:220] = 0
    template = np.full((400, 400, 1), 255, np.uint8)
    return LabelledPair(tested, template, np.array([[200, 150, 220, 162, 0]], np.float32))


@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_the_box_covers_the_defect_in_every_crop(scale):
    settings = TrainSettings(crop=96, scale=scale, noise=0.0, template_shift=0.0)
    rng = np.random.default_rng(0)
    sides = set()
    for _ in range(40):
        tested, template, boxes = sample_crop(pair_with_one_defect(), settings, rng, around_defect=True)
        assert tested.shape == template.shape == (96, 96, 3)
        assert len(boxes) == 1
        x1, y1, x2, y2, _ = boxes[0]
        dark = np.argwhere(tested[:, :, 0] < 128)  # (n, 2) rows, columns
        assert len(dark)
        inside = (dark[:, 1] >= x1 - 1) & (dark[:, 1] <= x2) & (dark[:, 0] >= y1 - 1) & (dark[:, 0] <= y2)
        assert inside.all(), (boxes[0], dark.min(0), dark.max(0))
        sides.add(round(float(max(x2 - x1, y2 - y1)), 1))
    if scale:
        assert min(sides) < 20 / 1.2 and max(sides) > 20 * 1.2, sides  # zoomed both ways
    else:
        assert sides == {20.0}
