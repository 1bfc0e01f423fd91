"""Image dataset manifests: CSV rows `image,label[,mask][,reference][,boxes]`, paths relative to the CSV.

Box types in boxes files are names (`open`, `scratch`) or, with a type map, ids mapped to names (DeepPCB's 1-6).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from mmfusion.data.csv_rows import collect_rows, read_rows
from mmfusion.types import InputError

GOOD = "good"
REQUIRED_COLUMNS = ("image", "label")
OPTIONAL_COLUMNS = ("mask", "reference", "boxes")
BOOKKEEPING_COLUMNS = ("source", "augmentation", "group")
"""Accepted and ignored: written by `mmfusion data augment` (source row, transform) and used by `data split --group`."""
TYPE_MAPS: dict[str, dict[str, str]] = {
    "deeppcb": {"1": "open", "2": "short", "3": "mousebite", "4": "spur", "5": "copper", "6": "pin-hole"},
}
"""Built-in type maps by name: DeepPCB's numeric type codes -> the names the pcb-template model gives its boxes."""
TYPE_MAP_SUFFIX = ".types.yaml"
"""A manifest's own type map lies beside it: `test.csv` -> `test.types.yaml` (lines `ID: NAME`)."""


class ManifestError(InputError):
    """A manifest with bad rows; the message lists every bad row with its line number."""


@dataclass(frozen=True)
class Box:
    """One ground-truth or predicted box in image pixels; `type` is the defect type; `line` its line in the
    boxes file it was read from (0 when it was not read from one)."""

    x1: float
    y1: float
    x2: float
    y2: float
    type: str
    score: float = 1.0
    line: int = field(default=0, compare=False, repr=False)

    def to_dict(self) -> dict:
        return {"x1": self.x1, "y1": self.y1, "x2": self.x2, "y2": self.y2, "label": self.type, "score": self.score}


@dataclass(frozen=True)
class TypeMap:
    """Box type ids as written in boxes files -> type names; `source` (a built-in name or a file) names it in errors."""

    names: dict[str, str]
    source: str

    def name(self, value: str, path: Path, line: int) -> str:
        """The name of type id `value` read at `path`:`line`; InputError naming all four when the map lacks it."""
        if value in self.names:
            return self.names[value]
        raise InputError(
            f"{path}:{line}: type {value!r} is not in the type map {self.source}; "
            f"expected one of {', '.join(self.names)}"
        )


def read_type_map(spec: str | Path | Mapping[Any, Any] | TypeMap) -> TypeMap:
    """A type map from a built-in name (`deeppcb`), a YAML or JSON file of `ID: NAME`, inline `1=open,2=short`
    or a mapping; InputError saying what was expected otherwise."""
    if isinstance(spec, TypeMap):
        return spec
    if isinstance(spec, Mapping):
        raw, source = spec, "given"
    else:
        text = str(spec).strip()
        if text in TYPE_MAPS:
            raw, source = TYPE_MAPS[text], repr(text)
        elif Path(text).is_file():
            source = str(text)
            try:
                raw = yaml.safe_load(Path(text).read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError) as error:
                problem = str(error).splitlines()[0]
                raise InputError(
                    f"{text}: not a YAML or JSON type map ({problem}); expected lines 'ID: NAME'"
                ) from None
        elif "=" in text:
            raw, source = {}, repr(text)
            for item in text.split(","):
                key, equals, value = (part.strip() for part in item.partition("="))
                if not equals or not key:
                    raise InputError(
                        f"type map {text!r}: {item.strip()!r} is not ID=NAME; expected e.g. 1=open,2=short"
                    )
                raw[key] = value
        else:
            raise InputError(
                f"type map {text!r}: not a built-in map ({', '.join(TYPE_MAPS)}), an existing YAML/JSON file, "
                "or ID=NAME pairs such as 1=open,2=short"
            )
    if not isinstance(raw, Mapping) or not raw:
        raise InputError(f"type map {source}: got {raw!r}; expected a mapping of box type ids to names, e.g. 1: open")
    names = {}
    for key, value in raw.items():
        if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
            raise InputError(f"type map {source}: id {key!r} maps to {value!r}; expected a type name")
        names[str(key).strip()] = str(value).strip()
    return TypeMap(names, source)


@dataclass(frozen=True)
class ManifestRow:
    """One checked row; `line` is its line number in the CSV (the header is line 1)."""

    line: int
    image: Path
    label: str
    mask: Path | None = None
    reference: Path | None = None
    boxes: Path | None = None
    type_map: TypeMap | None = field(default=None, compare=False, repr=False)

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
        return [] if self.boxes is None else read_boxes(self.boxes, self.type_map)


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; InputError naming the file when it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{path}: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_boxes(path: Path, type_map: TypeMap | None = None) -> list[Box]:
    """A boxes file: one `x1 y1 x2 y2 type` line per box (commas also accepted); blank lines skipped.

    With a type map the last field is an id (DeepPCB's `1`-`6`) and the box gets the map's name for it.
    """
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
        kind = fields[4] if type_map is None else type_map.name(fields[4], path, number)
        boxes.append(Box(x1, y1, x2, y2, kind, line=number))
    return boxes


def _image_size(path: Path) -> tuple[int, int] | None:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return None if image is None else image.shape[:2]


def _check_row(
    line: int, values: dict[str, str], root: Path, problems: list[str], type_map: TypeMap | None = None
) -> ManifestRow | None:
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
            read_boxes(paths["boxes"], type_map)
        except InputError as error:
            problems.append(f"line {line}: boxes: {error}")
    if len(problems) > count:
        return None
    return ManifestRow(line, paths["image"], label, paths["mask"], paths["reference"], paths["boxes"], type_map)


def load_manifest(
    path: str | Path, type_map: str | Path | Mapping[Any, Any] | TypeMap | None = None
) -> list[ManifestRow]:
    """Read and check every row; ManifestError listing every bad row (with line numbers) before any work.

    `type_map` (see read_type_map) maps the boxes files' type ids to names; without one, the manifest's own
    `<stem>.types.yaml` beside it is used when present, else box types are read as written.
    """
    if type_map is None and Path(path).with_suffix(TYPE_MAP_SUFFIX).is_file():
        type_map = Path(path).with_suffix(TYPE_MAP_SUFFIX)
    types = None if type_map is None else read_type_map(type_map)
    rows = read_rows(
        path, "manifest", REQUIRED_COLUMNS, REQUIRED_COLUMNS + OPTIONAL_COLUMNS + BOOKKEEPING_COLUMNS, ManifestError
    )
    root = Path(path).parent

    def check(line: int, values: dict[str, str], problems: list[str]) -> ManifestRow | None:
        return _check_row(line, values, root, problems, types)

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
