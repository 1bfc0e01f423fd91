"""Types from connectivity: opens and shorts change how many conductors there are, mousebites and spurs do not; a
pin-hole meets no board and spurious copper no copper."""

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
    """(100, 100) grey: a dark pour 22 px wide, two dark vertical traces 8 px wide and a 20x20 pad on a light board."""
    image = np.full((100, 100), 255, np.uint8)
    image[:, 0:22] = 0
    image[:, 30:38] = 0
    image[:, 60:68] = 0
    image[10:30, 75:95] = 0
    return image


def defects() -> np.ndarray:
    """The board with its left trace cut (rows 20-25), a bite out of it (rows 60-65), a bridge between the traces
    (rows 40-44) and a bump on the right trace (rows 80-84)."""
    image = board()
    image[20:26, 30:38] = 255  # open: the trace severed
    image[60:66, 30:34] = 255  # mousebite: half its width gone
    image[40:45, 38:60] = 0  # short: the two traces joined
    image[80:85, 68:74] = 0  # spur: a stub on one trace
    image[50:54, 0:22] = 255  # open across the pour: the copper in two, the board on its far side only
    image[70:74, 16:22] = 255  # mousebite in the pour's edge
    image[18:22, 83:87] = 255  # pin-hole: a hole in the pad
    image[88:92, 45:50] = 0  # spurious copper: an island on the board
    return image


BOXES = {  # where each defect is, as x1, y1, x2, y2
    "open": (26, 16, 42, 30),
    "mousebite": (26, 56, 42, 70),
    "short": (34, 37, 64, 48),
    "spur": (64, 76, 78, 88),
}
MORE = {  # defects that need pieces, holes and islands, as x1, y1, x2, y2
    "open": (0, 44, 26, 60),
    "mousebite": (10, 64, 26, 80),
    "pin-hole": (78, 13, 92, 27),
    "copper": (42, 85, 53, 95),
}
MISSING, EXTRA = ["open", "mousebite", "pin-hole"], ["short", "spur", "copper"]


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


@pytest.mark.parametrize("claimed", MISSING)
@pytest.mark.parametrize("where", ["open", "mousebite", "pin-hole"])
def test_missing_copper_is_typed_by_what_it_cuts_and_what_it_meets(claimed, where):
    (out,) = retype([Box(*MORE[where], type=claimed)], defects(), board(), named=frozenset(LABELS))
    assert out.type == where


@pytest.mark.parametrize("claimed", EXTRA)
def test_an_island_on_the_board_is_spurious_copper(claimed):
    (out,) = retype([Box(*MORE["copper"], type=claimed)], defects(), board(), named=frozenset(LABELS))
    assert out.type == "copper"


def test_a_box_keeps_its_side_and_pin_hole_and_copper_need_naming():
    named = frozenset(LABELS)
    assert retype([Box(*MORE["pin-hole"], type="spur")], defects(), board(), named=named)[0].type == "spur"
    assert retype([Box(*MORE["pin-hole"], type="open")], defects(), board())[0].type == "mousebite"  # four named
    assert retype([Box(*MORE["copper"], type="copper")], defects(), board())[0].type == "copper"  # not named: kept


def test_specks_split_off_by_a_cut_do_not_make_it_an_open():
    tested = board()
    tested[60:66, 17:22] = 255  # a bite at the pour's edge...
    tested[63, 19] = 0  # ...that leaves a 1-pixel speck of copper inside it
    box = Box(10, 54, 26, 72, type="open")
    assert retype([box], tested, board(), named=frozenset(LABELS))[0].type == "mousebite"
    assert retype([box], tested, board(), named=frozenset(LABELS), min_piece=1)[0].type == "open"


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
    island = [Box(*MORE["copper"], type="spur")]
    assert [b.type for b in on.retype(island, item)] == ["copper"]  # the head names all six
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
    """DeepPCB's annotated boxes of group20085 (the unseen-boards fold), each offered as another type of its side."""
    split = deeppcb_manifests(shared_datasets / "deeppcb-trainval", tmp_path, split="group", seed=0)
    other = {kind: side[(side.index(kind) + 1) % 3] for side in (MISSING, EXTRA) for kind in side}
    right, total = Counter(), Counter()
    for row in load_manifest(split["val"])[::3]:
        tested = cv2.imread(str(row.image), cv2.IMREAD_GRAYSCALE)
        template = cv2.imread(str(row.reference), cv2.IMREAD_GRAYSCALE)
        truth = row.read_boxes()
        offered = [Box(b.x1, b.y1, b.x2, b.y2, other[b.type]) for b in truth]
        for gt, got in zip(truth, retype(offered, tested, template, named=frozenset(LABELS)), strict=True):
            total[gt.type] += 1
            right[gt.type] += got.type == gt.type
    assert set(total) == set(LABELS) and min(total.values()) >= 60, total
    accuracy = {kind: right[kind] / total[kind] for kind in total}
    assert all(value >= 0.9 for value in accuracy.values()), accuracy
    assert sum(right.values()) / sum(total.values()) >= 0.95, accuracy


def test_copper_reads_rgb_and_grey_alike():
    grey = defects()
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    assert np.array_equal(copper_mask(rgb, "dark"), grey < 128)
    assert np.array_equal(copper_mask(grey, "light"), grey >= 128)
