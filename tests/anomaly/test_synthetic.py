"""The synthetic part generator: deterministic per seed, masks and boxes agree, manifests load."""

from __future__ import annotations

import numpy as np

from mmfusion.data.manifest import load_manifest
from mmfusion.data.synthetic import DEFECT_TYPES, make_part


def test_parts_are_deterministic_per_seed_and_defects_change_only_their_mask():
    first = make_part(np.random.default_rng(5), 96, "scratch")
    again = make_part(np.random.default_rng(5), 96, "scratch")
    other = make_part(np.random.default_rng(6), 96, "scratch")
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    image, mask, boxes = first
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8 and mask.any()
    ((x1, y1, x2, y2, kind),) = boxes
    rows, cols = np.nonzero(mask)
    assert (x1, y1, x2, y2, kind) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1, "scratch")


def test_good_parts_have_empty_masks_and_no_boxes():
    image, mask, boxes = make_part(np.random.default_rng(0), 64)
    assert not mask.any() and boxes == []


def test_suite_manifests_split_good_and_defective_parts(suite):
    train = load_manifest(suite["train"])
    test = load_manifest(suite["test"])
    assert len(train) == 20 and all(row.is_good and row.mask is None for row in train)
    labels = [row.label for row in test]
    assert labels.count("good") == 8 and set(labels) == {"good", *DEFECT_TYPES}
    for row in test:
        mask = row.read_mask()
        assert mask.any() == (not row.is_good) == bool(row.read_boxes())
