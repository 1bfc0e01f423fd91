"""Findings: what a pipeline found (boxes, labels, flags, scores), in the terms a report speaks of."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from mmfusion.heads.report import DEFAULT_SEVERITY_CUTS, OK_LABELS

LOCATIONS = ("top-left", "top", "top-right", "left", "centre", "right", "bottom-left", "bottom", "bottom-right")
WHOLE_PART = "whole part"
SEVERITIES = ("minor", "major", "critical")


@dataclass(frozen=True)
class Finding:
    """One defect: its type, where it is, how severe, its score, and the head and image it came from."""

    type: str
    location: str = WHOLE_PART
    severity: str = "minor"
    score: float = 1.0
    source: str = ""
    image: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def severity_of(score: float, cuts: tuple[float, float] = DEFAULT_SEVERITY_CUTS) -> str:
    """minor / major / critical by score."""
    if score < cuts[0]:
        return SEVERITIES[0]
    return SEVERITIES[1] if score < cuts[1] else SEVERITIES[2]


def location_of(x: float, y: float) -> str:
    """The 3x3 grid cell name of a point given as fractions (0..1) of the image width and height."""
    column = min(2, max(0, int(x * 3)))
    row = min(2, max(0, int(y * 3)))
    return LOCATIONS[row * 3 + column]


def box_location(box: Mapping[str, float], width: int, height: int) -> str:
    """The grid cell of a box's centre in an image of `width` x `height` pixels."""
    x = (float(box["x1"]) + float(box["x2"])) / 2 / max(width, 1)
    y = (float(box["y1"]) + float(box["y2"])) / 2 / max(height, 1)
    return location_of(x, y)


def _from_head(
    head: str,
    result: Mapping[str, Any],
    image: int,
    size: tuple[int, int] | None,
    ok_labels: frozenset[str],
    cuts: tuple[float, float],
) -> list[Finding]:
    """Findings of one head's postprocessed result: its boxes, else its flags, else its label."""
    boxes = result.get("boxes") or []
    if boxes:
        width, height = size if size is not None else (1, 1)
        found = []
        for box in boxes:
            score = float(box.get("score", 1.0))
            location = box_location(box, width, height) if size is not None else WHOLE_PART
            label = str(box.get("label") or head)
            found.append(Finding(label, location, severity_of(score, cuts), round(score, 4), head, image))
        return found
    scores = result.get("scores") or {}
    flags = [flag for flag in result.get("flags") or [] if flag.lower() not in ok_labels]
    if flags:
        return [
            Finding(flag, WHOLE_PART, severity_of(float(scores.get(flag, 1.0)), cuts), 1.0, head, image)
            for flag in flags
        ]
    label = str(result.get("label") or "")
    if label.lower() in ok_labels:
        return []
    score = float(result.get("score", scores.get(label, 1.0)))
    return [Finding(label, WHOLE_PART, severity_of(score, cuts), round(score, 4), head, image)]


def findings_from_outputs(
    outputs: Mapping[str, Mapping[str, Any]],
    sources: Iterable[str] | None = None,
    image: int = 0,
    size: tuple[int, int] | None = None,
    ok_labels: Iterable[str] = OK_LABELS,
    cuts: tuple[float, float] = DEFAULT_SEVERITY_CUTS,
) -> list[Finding]:
    """Every finding in a prediction's head outputs, in head order; `size` is the image's (width, height)."""
    wanted = list(outputs) if sources is None else list(sources)
    ok = frozenset(label.lower() for label in ok_labels)
    found: list[Finding] = []
    for head in wanted:
        if head in outputs:
            found += _from_head(head, outputs[head], image, size, ok, cuts)
    return found


def findings_text(findings: list[Finding]) -> str:
    """The findings as prompt input: one line each, 'none' when empty."""
    if not findings:
        return "none"
    return "\n".join(
        f"{f.type} at the {f.location}, score {f.score:.2f}" + (f" (image {f.image + 1})" if f.image else "")
        for f in findings
    )
