"""Training crops: the boxes follow the pixels through window, misregistration, quarter turns, flips and zoom."""

from __future__ import annotations

import numpy as np
import pytest

from mmfusion.fitting.detection import inverse_types
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


def test_inverted_crops_swap_copper_and_board_and_read_each_type_as_its_inverse():
    inverse = inverse_types(["open", "short", "mousebite", "spur", "copper", "pin-hole"])
    assert inverse == (1, 0, 3, 2, 5, 4)
    assert inverse_types(["open", "scratch"]) == (0, 1)  # no inverse named: the type stays
    plain = TrainSettings(crop=96, noise=0.0, template_shift=0.0)
    inverted = TrainSettings(crop=96, noise=0.0, template_shift=0.0, invert=1.0, inverse_types=inverse)
    pair = pair_with_one_defect()
    pair.boxes[:, 4] = 4  # copper: an extra dark island
    before = sample_crop(pair, plain, np.random.default_rng(3), around_defect=True)
    after = sample_crop(pair, inverted, np.random.default_rng(3), around_defect=True)
    np.testing.assert_array_equal(after[0], 255 - before[0])
    np.testing.assert_array_equal(after[1], 255 - before[1])
    np.testing.assert_array_equal(after[2][:, :4], before[2][:, :4])
    assert before[2][:, 4].tolist() == [4] and after[2][:, 4].tolist() == [5]  # a light hole in dark copper
    assert pair.boxes[:, 4].tolist() == [4]  # the pair itself is untouched


def test_half_inverted_crops_draw_both_and_no_invert_keeps_the_random_stream():
    pair = pair_with_one_defect()
    settings = TrainSettings(crop=96, noise=0.0, template_shift=0.0, invert=0.5, inverse_types=(1, 0))
    kinds = [sample_crop(pair, settings, np.random.default_rng(s), True)[2][0, 4] for s in range(40)]
    assert 5 < sum(kinds) < 35  # type 0 read as type 1 in about half
    rng, same = np.random.default_rng(9), np.random.default_rng(9)
    sample_crop(pair, TrainSettings(crop=96), rng, True)
    sample_crop(pair, TrainSettings(crop=96, inverse_types=(1, 0)), same, True)
    assert rng.random() == same.random()  # invert: 0 draws nothing: earlier configs train as before


def test_identical_crops_show_one_image_twice_and_nothing_to_find():
    settings = TrainSettings(crop=96, noise=0.0, template_shift=0.0, identical=1.0)
    shown = set()
    for seed in range(12):
        tested, template, boxes = sample_crop(pair_with_one_defect(), settings, np.random.default_rng(seed), True)
        np.testing.assert_array_equal(tested, template)
        assert len(boxes) == 0
        shown.add(bool((tested < 128).any()))  # the defect's blob (tested twice) or the clean board (template twice)
    assert shown == {True, False}


def test_reshaped_crops_move_every_edge_alike_and_keep_the_boxes():
    plain = TrainSettings(crop=96, noise=0.0, template_shift=0.0)
    reshaped = TrainSettings(crop=96, noise=0.0, template_shift=0.0, morphology=1.0)
    changes = set()
    for seed in range(16):
        before = sample_crop(pair_with_one_defect(), plain, np.random.default_rng(seed), around_defect=True)
        after = sample_crop(pair_with_one_defect(), reshaped, np.random.default_rng(seed), around_defect=True)
        np.testing.assert_array_equal(after[2], before[2])  # the boxes stay where they were
        assert (after[1] == 255).all()  # the blank template stays blank: no edge to move
        dark_before, dark_after = before[0][:, :, 0] < 128, after[0][:, :, 0] < 128
        across = int(dark_after.any(0).sum()) - int(dark_before.any(0).sum())
        down = int(dark_after.any(1).sum()) - int(dark_before.any(1).sum())
        assert across == down  # both sides of the blob moved by the same pixels
        changes.add(across)
    assert changes == {-4, -2, 2, 4}, changes  # one or two pixels narrower or wider on each side
