"""Defect types from connectivity: an open cuts a conductor and a short joins two; a mousebite or a spur does neither.

Within a box, compare the tested board with its template. An open splits a trace, so the gaps on either side of it
become one background region (fewer background components), or cuts a pour into pieces; a mousebite only nibbles the
edge. A short bridges two conductors (fewer copper components); a spur sticks out of one. A pin-hole is missing copper
that meets no board, spurious copper an island that meets no copper. This holds on any board design, which a network
trained on a few designs does not: on DeepPCB boards of a design left out of training, the detector called 77 of
414 mousebites opens (docs/pcb-template.md, "Types from connectivity").
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import cv2
import numpy as np

from mmfusion.data.manifest import Box

CUT, NICK = "open", "mousebite"  # missing copper: severs a conductor / does not
JOIN, SPUR = "short", "spur"  # extra copper: joins two conductors / does not
HOLE, ISLAND = "pin-hole", "copper"  # missing copper that meets no board / extra copper that meets no copper
TOPOLOGY_TYPES = (CUT, NICK, JOIN, SPUR)
MISSING, EXTRA = (CUT, NICK, HOLE), (JOIN, SPUR, ISLAND)
SIDED = frozenset(MISSING + EXTRA)
INVERSE_TYPES = {CUT: JOIN, JOIN: CUT, NICK: SPUR, SPUR: NICK, HOLE: ISLAND, ISLAND: HOLE}
"""What each type is read as when copper and board swap: a cut conductor joins two board regions, a nick is a
spur of board, a hole in copper is an island of board."""
LEVEL = 128  # grey level between copper and board
MIN_PIECE = 60
"""Pixels a piece of copper needs to count when a cut splits a pour: smaller ones are binarisation specks.
Chosen on DeepPCB's 640x640 pairs of the designs other than group20085 (20 to 150 tried)."""


def copper_mask(image: np.ndarray, copper: Literal["dark", "light"]) -> np.ndarray:
    """(H, W) bool: where an RGB (H, W, 3) or grey (H, W) uint8 image shows copper."""
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    return grey < LEVEL if copper == "dark" else grey >= LEVEL


def components(mask: np.ndarray) -> int:
    """Number of 8-connected regions of True in a (h, w) bool mask."""
    return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1


def pieces(mask: np.ndarray, min_area: int) -> int:
    """Number of 8-connected regions of True in a (h, w) bool mask with at least `min_area` pixels."""
    stats = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)[2]  # (n, 5), row 0 the rest
    return int((stats[1:, cv2.CC_STAT_AREA] >= min_area).sum())


def severs(now: np.ndarray, before: np.ndarray, min_piece: int) -> bool:
    """Whether the copper lost from `before` to `now` ((h, w) bool) cut it: it falls into more pieces of at least
    `min_piece` pixels (a cut across a wide pour), or the board on either side joins up (a cut across a trace)."""
    return pieces(now, min_piece) > pieces(before, min_piece) or components(~now) < components(~before)


def largest_touches(change: np.ndarray, neighbour: np.ndarray) -> bool | None:
    """Whether the largest 8-connected region of `change` (h, w) bool touches `neighbour` (h, w) bool; None if
    `change` is empty."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(change.astype(np.uint8), connectivity=8)
    if count <= 1:
        return None
    region = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    return bool((cv2.dilate(region, np.ones((3, 3), np.uint8)) > 0)[neighbour].any())


def topology_type(
    kind: str, now: np.ndarray, before: np.ndarray, named: frozenset[str], min_piece: int = MIN_PIECE
) -> str:
    """The type a box of type `kind` gets from its copper masks, tested `now` and template `before` ((h, w) bool).

    The box keeps its side (copper missing or extra). Missing copper: a hole that meets no board is a pin-hole, a
    cut that severs the copper an open, else a mousebite; extra copper: an island that meets no copper is spurious
    copper, a bridge between conductors a short, else a spur. Pin-hole and copper only where `named`. (Holes and
    islands first: on DeepPCB's designs other than group20085 that order types them better than the reverse.)
    """
    if kind in MISSING:
        if HOLE in named and largest_touches(before & ~now, ~before) is False:
            return HOLE
        return CUT if severs(now, before, min_piece) else NICK
    if ISLAND in named and largest_touches(now & ~before, before) is False:
        return ISLAND
    return JOIN if components(now) < components(before) else SPUR


def retype(
    boxes: list[Box],
    tested: np.ndarray,
    template: np.ndarray,
    copper: Literal["dark", "light"] = "dark",
    named: frozenset[str] = frozenset(TOPOLOGY_TYPES),
    min_piece: int = MIN_PIECE,
) -> list[Box]:
    """Boxes of the types in MISSING and EXTRA retyped within their side by what they change in the copper between
    the template and the tested image (both (H, W, 3) RGB or (H, W) grey uint8, aligned); see topology_type.

    Other types, boxes that hold no pixels, and types not `named` (the head's labels) are kept; scores and
    coordinates are unchanged.
    """
    height, width = tested.shape[:2]
    out = []
    for box in boxes:
        x1, y1 = max(0, int(round(box.x1))), max(0, int(round(box.y1)))
        x2, y2 = min(width, int(round(box.x2))), min(height, int(round(box.y2)))
        if box.type not in named or box.type not in SIDED or x2 <= x1 or y2 <= y1:
            out.append(box)
            continue
        now = copper_mask(tested[y1:y2, x1:x2], copper)  # (h, w)
        before = copper_mask(template[y1:y2, x1:x2], copper)
        kind = topology_type(box.type, now, before, named, min_piece)
        out.append(box if kind == box.type else dataclasses.replace(box, type=kind))
    return out
