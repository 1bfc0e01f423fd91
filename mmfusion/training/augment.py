"""`mmfusion data augment`: new rows from glossary text and defect-preserving image transforms, each with its source."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mmfusion.data.csv_rows import report_problems
from mmfusion.data.manifest import read_boxes
from mmfusion.data.table import SOURCE_COLUMN, Table, TableError, TableRow, read_table, write_table
from mmfusion.media import decode_image
from mmfusion.training import image_augment as ia
from mmfusion.training.glossary import Glossary, load_glossary, text_variants

AUGMENTATION_COLUMN = "augmentation"


def _augment_image_files(
    table: Table, row: TableRow, geometric: str, files: Path, stem: str, rng: np.random.Generator
) -> tuple[dict[str, str], str]:
    """Write the transformed image (and its reference, mask, boxes); returns the new path cells and a description."""
    image = decode_image(table.resolve(row, "image"), f"line {row.line}: image")
    height, width = image.shape[:2]
    photometric = ia.random_photometric(rng)
    cells: dict[str, str] = {}
    target = files / f"{stem}.png"
    ia.write_rgb(target, photometric.apply(ia.transform_array(image, geometric), rng))
    cells["image"] = str(target)
    reference = table.resolve(row, "reference")
    if reference is not None:
        target = files / f"{stem}_reference.png"
        ia.write_rgb(target, ia.transform_array(decode_image(reference, f"line {row.line}: reference"), geometric))
        cells["reference"] = str(target)
    mask = table.resolve(row, "mask")
    if mask is not None:
        pixels = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
        target = files / f"{stem}_mask.png"
        cv2.imwrite(str(target), ia.transform_array(pixels, geometric))
        cells["mask"] = str(target)
    boxes = table.resolve(row, "boxes")
    if boxes is not None:
        target = files / f"{stem}_boxes.txt"
        ia.write_boxes(target, [ia.transform_box(b, geometric, width, height) for b in read_boxes(boxes)])
        cells["boxes"] = str(target)
    return cells, f"{geometric}+{photometric.describe()}"


def augment_row(
    table: Table, row: TableRow, glossary: Glossary, per_row: int, seed: int, files: Path
) -> list[TableRow]:
    """Up to `per_row` new rows made from one row (fewer when its text has no variation left)."""
    rng = random.Random(f"{seed}:{row.line}")
    array_rng = np.random.default_rng([seed, row.line])
    texts = text_variants(row.get("text"), glossary, per_row, rng) if row.get("text") else []
    geometric = array_rng.permutation(ia.GEOMETRIC[1:]).tolist() if row.get("image") else []
    count = per_row if geometric else len(texts)
    new_rows = []
    for k in range(count):
        cells: dict[str, str] = {SOURCE_COLUMN: str(row.line)}
        notes = []
        if geometric:
            image_cells, note = _augment_image_files(
                table, row, geometric[k % len(geometric)], files, f"line{row.line}_{k}", array_rng
            )
            cells.update(image_cells)
            notes.append(note)
        if k < len(texts):
            cells["text"], note = texts[k]
            notes.append(note)
        cells[AUGMENTATION_COLUMN] = "; ".join(notes)
        new_rows.append(table.absolute(row).with_values(**cells))
    return new_rows


def augment_file(
    source: str | Path, out: str | Path, glossary: str | Path | None = None, per_row: int = 2, seed: int = 0
) -> tuple[int, int]:
    """Write OUT with every original row plus the new rows; returns (original, new) row counts."""
    if per_row < 1:
        raise ValueError(f"per_row {per_row}: expected at least 1")
    table = read_table(source, require_label=False)
    terms = load_glossary(glossary) if glossary else Glossary([])
    problems = []
    for row in table.rows:
        if row.get("image") and (row.get("video") or row.get("audio")):
            problems.append(
                f"line {row.line}: image augmentation of rows that also carry video or audio is not supported"
            )
    report_problems(table.path, problems, TableError)
    out = Path(out)
    files = out.parent / f"{out.stem}_files"
    files.mkdir(parents=True, exist_ok=True)
    new_rows: list[TableRow] = []
    for row in tqdm(table.rows, desc="augmenting", unit="row"):
        new_rows += augment_row(table, row, terms, per_row, seed, files)
    columns = [*table.columns, *(c for c in (SOURCE_COLUMN, AUGMENTATION_COLUMN) if c not in table.columns)]
    originals = [table.absolute(r) for r in table.rows]
    write_table(out, columns, originals + new_rows)
    return len(originals), len(new_rows)
