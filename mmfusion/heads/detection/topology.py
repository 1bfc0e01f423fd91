"""Defect types from connectivity: an open cuts a conductor and a short joins two; a mousebite or a spur does neither.

Within a box, compare the tested board with its template. An open splits a trace, so the gaps on either side of it
become one background region (fewer background components); a mousebite only nibbles the edge. A short bridges two
conductors (fewer copper components); a spur sticks out of one. This holds on any board design, which a network
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
TOPOLOGY_TYPES = (CUT, NICK, JOIN, SPUR)
LEVEL = 128  # grey level between copper and board


def copper_mask(image: np.ndarray, copper: Literal["dark", "light"]) -> np.ndarray:
    """(H, W) bool: where an RGB (H, W, 3) or grey (H, W) uint8 image shows copper."""
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    return grey < LEVEL if copper == "dark" else grey >= LEVEL


def components(mask: np.ndarray) -> int:
    """Number of 8-connected regions of True in a (h, w) bool mask."""
    return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1


def retype(
    boxes: list[Box], tested: np.ndarray, template: np.ndarray, copper: Literal["dark", "light"] = "dark"
) -> list[Box]:
    """Boxes typed open or mousebite, short or spur, retyped by what they change in the copper between the template
    and the tested image (both (H, W, 3) RGB or (H, W) grey uint8, aligned).

    Other types, and boxes that hold no pixels, keep their type; scores and coordinates are unchanged.
    """
    height, width = tested.shape[:2]
    out = []
    for box in boxes:
        x1, y1 = max(0, int(round(box.x1))), max(0, int(round(box.y1)))
        x2, y2 = min(width, int(round(box.x2))), min(height, int(round(box.y2)))
        if box.type not in TOPOLOGY_TYPES or x2 <= x1 or y2 <= y1:
            out.append(box)
            continue
        now = copper_mask(tested[y1:y2, x1:x2], copper)  # (h, w)
        before = copper_mask(template[y1:y2, x1:x2], copper)
        if box.type in (CUT, NICK):
            kind = CUT if components(~now) < components(~before) else NICK
        else:
            kind = JOIN if components(now) < components(before) else SPUR
        out.append(box if kind == box.type else dataclasses.replace(box, type=kind))
    return out
