"""Types from connectivity: opens and shorts change how many conductors there are, mousebites and spurs do not."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest

from mmfusion.config import ConfigError, HeadSpec
from mmfusion.data.deeppcb import deeppcb_manifests
from mmfusion.data.manifest import Box, load_manifest
from mmfusion.heads.detection.head import DetectionHead, DetectionParams
from mmfusion.heads.detection.topology import copper_mask, retype
from mmfusion.types import Inputs

LABELS = ["open", "short", "mousebite", "spur", "copper", "pin-hole"]


def board() -> np.ndarray:
    """(100, 100) grey: two dark vertical traces 8 px wide on a light board."""
    image = np.full((100, 100), 255, np.uint8)
    image[:, 30:38] = 0
    image[:, 60:68] = 0
    return image


def defects() -> np.ndarray:
    """The board with its left trace cut (rows 20-25), a bite out of it (rows 60-65), a bridge between the traces
    (rows 40-44) and a bump on the right trace (rows 80-84)."""
    image = board()
    image[20:26, 30:38] = 255  # open: the trace severed
    image[60:66, 30:34] = 255  # mousebite: half its width gone
    image[40:45, 38:60] = 0  # short: the two traces joined
    image[80:85, 68:74] = 0  # spur: a stub on one trace
    return image


BOXES = {  # where each defect is, as x1, y1, x2, y2
    "open": (26, 16, 42, 30),
    "mousebite": (26, 56, 42, 70),
    "short": (34, 37, 64, 48),
    "spur": (64, 76, 78, 88),
}


@pytest.mark.parametrize("claimed", ["open", "mousebite"])
@pytest.mark.parametrize("where", ["open", "mousebite"])
def test_a_cut_is_an_open_and_a_bite_a_mousebite_whatever_the_network_said(claimed, where):
    box = Box(*BOXES[where], type=claimed, score=0.7)
    (out,) = retype([box], defects(), board())
    assert out.type == where
    assert (out.x1, out.y1, out.x2, out.y2, out.score) == (box.x1, box.y1, box.x2, box.y2, 0.7)


@pytest.mark.parametrize("claimed", ["short", "spur"])
@pytest.mark.parametrize("where", ["short", "spur"])
def test_a_bridge_is_a_short_and_a_stub_a_spur_whatever_the_network_said(claimed, where):
    (out,) = retype([Box(*BOXES[where], type=claimed)], defects(), board())
    assert out.type == where


def test_light_copper_reads_the_inverted_images_the_same_way():
    partner = {"open": "mousebite", "mousebite": "open", "short": "spur", "spur": "short"}
    offered = [Box(*BOXES[kind], type=partner[kind]) for kind in BOXES]
    found = retype(offered, 255 - defects(), 255 - board(), "light")
    assert [b.type for b in retype(offered, 255 - defects(), 255 - board(), "dark")] != [
        "open",
        "mousebite",
        "short",
        "spur",
    ]
    assert [b.type for b in found] == ["open", "mousebite", "short", "spur"]


def test_other_types_and_empty_boxes_keep_their_type():
    boxes = [Box(*BOXES["open"], type="pin-hole"), Box(*BOXES["short"], type="copper"), Box(200, 200, 220, 220, "open")]
    assert retype(boxes, defects(), board()) == boxes


def test_the_head_retypes_only_when_asked_and_only_with_both_images():
    spec = HeadSpec(name="detection", labels=LABELS)
    rgb = lambda grey: np.repeat(grey[:, :, None], 3, axis=2)  # noqa: E731
    item = Inputs(image=rgb(defects()), reference=rgb(board()))
    boxes = [Box(*BOXES["open"], type="mousebite")]
    on = DetectionHead(DetectionParams(topology_types=True), 64 * 3, spec)
    assert [b.type for b in on.retype(boxes, item)] == ["open"]
    assert on.retype(boxes, Inputs(image=rgb(defects()))) == boxes
    assert on.retype(boxes, None) == boxes
    off = DetectionHead(DetectionParams(), 64 * 3, spec)
    assert off.retype(boxes, item) == boxes


def test_topology_types_needs_the_four_type_names():
    with pytest.raises(ConfigError, match="lack mousebite, spur"):
        DetectionHead(
            DetectionParams(topology_types=True), 64 * 3, HeadSpec(name="detection", labels=["open", "short"])
        )


def test_the_rule_types_real_boards_of_a_design_the_detector_never_saw(shared_datasets, tmp_path):
    """DeepPCB's annotated boxes of group20085 (the unseen-boards fold), each offered with its partner type."""
    split = deeppcb_manifests(shared_datasets / "deeppcb-trainval", tmp_path, split="group", seed=0)
    partner = {"open": "mousebite", "mousebite": "open", "short": "spur", "spur": "short"}
    right, total = Counter(), Counter()
    for row in load_manifest(split["val"])[::3]:
        tested = cv2.imread(str(row.image), cv2.IMREAD_GRAYSCALE)
        template = cv2.imread(str(row.reference), cv2.IMREAD_GRAYSCALE)
        truth = [b for b in row.read_boxes() if b.type in partner]
        offered = [Box(b.x1, b.y1, b.x2, b.y2, partner[b.type]) for b in truth]
        for gt, got in zip(truth, retype(offered, tested, template), strict=True):
            total[gt.type] += 1
            right[gt.type] += got.type == gt.type
    assert min(total.values()) >= 80, total
    accuracy = {kind: right[kind] / total[kind] for kind in total}
    assert all(value >= 0.9 for value in accuracy.values()), accuracy
    assert sum(right.values()) / sum(total.values()) >= 0.95, accuracy


def test_copper_reads_rgb_and_grey_alike():
    grey = defects()
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    assert np.array_equal(copper_mask(rgb, "dark"), grey < 128)
    assert np.array_equal(copper_mask(grey, "light"), grey >= 128)
