"""(image, report) manifests: CSV `image,report[,text,product,type,location,severity]`, and synthetic suites."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from mmfusion.data.manifest import read_rgb
from mmfusion.reports.findings import Finding, box_location
from mmfusion.reports.report import compose
from mmfusion.templates.schema import PromptTemplate
from mmfusion.types import InputError

FIELD_COLUMNS = ("type", "location", "severity")
SYNTHETIC_SEVERITY = {"crack": "critical", "scratch": "major", "spot": "minor"}
"""Plant policy for the synthetic parts: a crack is critical, a scratch major, a spot minor."""
NONE_TYPE = "none"


@dataclass(frozen=True)
class ReportRow:
    """One checked manifest row; `expected` holds the type/location/severity columns that are filled."""

    line: int
    image: Path | None
    report: str
    text: str = ""
    expected: dict[str, str] = field(default_factory=dict)
    product: str = ""

    def read_image(self) -> np.ndarray:
        if self.image is None:
            raise InputError(f"line {self.line}: no image")
        return read_rgb(self.image)


def load_report_manifest(path: str | Path, need_image: bool = True, need_report: bool = True) -> list[ReportRow]:
    """Read a report manifest; every bad row is reported with its line number before any work starts."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest {str(path)!r}: no such file")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        wanted = [c for c, need in (("image", need_image), ("report", need_report)) if need and c not in columns]
        if wanted:
            raise InputError(f"{path}: missing columns {wanted}; have {columns}")
        rows, problems = [], []
        for values in reader:
            line = reader.line_num
            image_value = (values.get("image") or "").strip()
            image = (path.parent / image_value) if image_value else None
            if need_image and (image is None or not image.is_file()):
                problems.append(f"{path}:{line}: image {image_value!r} does not exist")
                continue
            report = (values.get("report") or "").strip()
            if need_report and not report:
                problems.append(f"{path}:{line}: empty report")
                continue
            expected = {c: values[c].strip() for c in FIELD_COLUMNS if (values.get(c) or "").strip()}
            text, product = ((values.get(c) or "").strip() for c in ("text", "product"))
            rows.append(ReportRow(line, image, report, text, expected, product))
    if problems:
        raise InputError("; ".join(problems[:20]) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else ""))
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows


def synthetic_finding(boxes: list[tuple[int, int, int, int, str]], size: int) -> Finding | None:
    """The ground-truth finding of a synthetic part: its defect type, location and the policy severity."""
    if not boxes:
        return None
    x1, y1, x2, y2, kind = boxes[0]
    location = box_location({"x1": x1, "y1": y1, "x2": x2, "y2": y2}, size, size)
    return Finding(kind, location, SYNTHETIC_SEVERITY[kind], 1.0)


def make_report_suite(
    folder: str | Path, count: int, template: PromptTemplate, size: int = 96, seed: int = 0, good_fraction: float = 0.25
) -> Path:
    """Write `count` synthetic parts (scratch, spot, crack or good) and their reports to folder/reports.csv."""
    from mmfusion.data.synthetic import DEFECT_TYPES, make_part

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    good = int(round(count * good_fraction))
    kinds: list[str | None] = [DEFECT_TYPES[i % len(DEFECT_TYPES)] for i in range(count - good)] + [None] * good
    rows = []
    for index, kind in enumerate(kinds):
        image, _, boxes = make_part(rng, size, kind)
        name = f"images/{kind or NONE_TYPE}_{index:04d}.png"
        cv2.imwrite(str(folder / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        finding = synthetic_finding(boxes, size)
        report = compose(template, [finding] if finding else []).text
        expected = (
            {"type": finding.type, "location": finding.location, "severity": finding.severity}
            if finding
            else {"type": NONE_TYPE, "location": "", "severity": ""}
        )
        rows.append({"image": name, "report": report, **expected})
    path = folder / "reports.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "report", *FIELD_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    return path
