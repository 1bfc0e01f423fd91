"""Image dataset manifests: CSV rows `image,label[,mask][,reference][,boxes]`, paths relative to the CSV."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mmfusion.data.csv_rows import collect_rows, read_rows
from mmfusion.types import InputError

GOOD = "good"
REQUIRED_COLUMNS = ("image", "label")
OPTIONAL_COLUMNS = ("mask", "reference", "boxes")
BOOKKEEPING_COLUMNS = ("source", "augmentation", "group")
"""Accepted and ignored: written by `mmfusion data augment` (source row, transform) and used by `data split --group`."""


class ManifestError(InputError):
    """A manifest with bad rows; the message lists every bad row with its line number."""


@dataclass(frozen=True)
class Box:
    """One ground-truth or predicted box in image pixels; `type` is the defect type."""

    x1: float
    y1: float
    x2: float
    y2: float
    type: str
    score: float = 1.0

    def to_dict(self) -> dict:
        return {"x1": self.x1, "y1": self.y1, "x2": self.x2, "y2": self.y2, "label": self.type, "score": self.score}


@dataclass(frozen=True)
class ManifestRow:
    """One checked row; `line` is its line number in the CSV (the header is line 1)."""

    line: int
    image: Path
    label: str
    mask: Path | None = None
    reference: Path | None = None
    boxes: Path | None = None

    @property
    def is_good(self) -> bool:
        return self.label == GOOD

    def read_image(self) -> np.ndarray:
        """The image as (H, W, 3) uint8 RGB."""
        return read_rgb(self.image)

    def read_reference(self) -> np.ndarray | None:
        """The golden template as (H, W, 3) uint8 RGB, when the row has one."""
        return None if self.reference is None else read_rgb(self.reference)

    def read_mask(self) -> np.ndarray | None:
        """The pixel ground truth as (H, W) bool (non-zero = defect), when the row has one."""
        if self.mask is None:
            return None
        mask = cv2.imread(str(self.mask), cv2.IMREAD_GRAYSCALE)
        return None if mask is None else mask > 0

    def read_boxes(self) -> list[Box]:
        """The ground-truth boxes, when the row has a boxes file."""
        return [] if self.boxes is None else read_boxes(self.boxes)


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; InputError naming the file when it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{path}: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_boxes(path: Path) -> list[Box]:
    """A boxes file: one `x1 y1 x2 y2 type` line per box (commas also accepted); blank lines skipped."""
    boxes = []
    for number, text in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = text.replace(",", " ").split()
        if not fields:
            continue
        if len(fields) != 5:
            raise InputError(f"{path}:{number}: expected 'x1 y1 x2 y2 type', got {text!r}")
        try:
            x1, y1, x2, y2 = (float(v) for v in fields[:4])
        except ValueError:
            raise InputError(f"{path}:{number}: coordinates must be numbers, got {text!r}") from None
        if x2 <= x1 or y2 <= y1:
            raise InputError(f"{path}:{number}: expected x1 < x2 and y1 < y2, got {text!r}")
        boxes.append(Box(x1, y1, x2, y2, fields[4]))
    return boxes


def _image_size(path: Path) -> tuple[int, int] | None:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return None if image is None else image.shape[:2]


def _check_row(line: int, values: dict[str, str], root: Path, problems: list[str]) -> ManifestRow | None:
    """Resolve and check one row; append each problem found to `problems` (the row is dropped if any)."""
    count = len(problems)
    paths: dict[str, Path | None] = {}
    for column in ("image", *OPTIONAL_COLUMNS):
        value = (values.get(column) or "").strip()
        if not value:
            if column == "image":
                problems.append(f"line {line}: image: empty; expected a path")
            paths[column] = None
            continue
        path = (root / value).resolve()
        if not path.is_file():
            problems.append(f"line {line}: {column}: {value!r} does not exist")
        paths[column] = path
    label = (values.get("label") or "").strip()
    if not label:
        problems.append(f"line {line}: label: empty; expected 'good' or a defect type")
    if len(problems) > count:
        return None
    sizes = {}
    for column in ("image", "mask", "reference"):
        if paths[column] is not None:
            sizes[column] = _image_size(paths[column])
            if sizes[column] is None:
                problems.append(f"line {line}: {column}: {values[column].strip()!r} is not a readable image")
    for column in ("mask", "reference"):
        if sizes.get(column) and sizes.get("image") and sizes[column] != sizes["image"]:
            (h, w), (ih, iw) = sizes[column], sizes["image"]
            problems.append(f"line {line}: {column}: size {w}x{h} differs from the image's {iw}x{ih}")
    if paths["boxes"] is not None:
        try:
            read_boxes(paths["boxes"])
        except InputError as error:
            problems.append(f"line {line}: boxes: {error}")
    if len(problems) > count:
        return None
    return ManifestRow(line, paths["image"], label, paths["mask"], paths["reference"], paths["boxes"])


def load_manifest(path: str | Path) -> list[ManifestRow]:
    """Read and check every row; ManifestError listing every bad row (with line numbers) before any work."""
    rows = read_rows(
        path, "manifest", REQUIRED_COLUMNS, REQUIRED_COLUMNS + OPTIONAL_COLUMNS + BOOKKEEPING_COLUMNS, ManifestError
    )
    root = Path(path).parent

    def check(line: int, values: dict[str, str], problems: list[str]) -> ManifestRow | None:
        return _check_row(line, values, root, problems)

    return collect_rows(path, rows, check, ManifestError, "at least one image")


def write_manifest(path: str | Path, rows: list[dict[str, str | Path | None]]) -> Path:
    """Write rows (dicts of column -> path or label) as a manifest, paths made relative to its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if any(row.get(c) is not None for row in rows)]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            out = {}
            for column in columns:
                value = row.get(column)
                if isinstance(value, Path):
                    value = Path(os.path.relpath(Path(value).resolve(), path.parent.resolve())).as_posix()
                out[column] = "" if value is None else value
            writer.writerow(out)
    return path
