"""General dataset tables: CSV rows of media columns (image, video, audio, text, ...) plus a label and free columns."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from mmfusion.data.csv_rows import report_problems
from mmfusion.data.manifest import ManifestError

MEDIA_COLUMNS = ("image", "video", "audio", "text")
PATH_COLUMNS = ("image", "video", "audio", "reference", "mask", "boxes")
"""Columns holding file paths, relative to the CSV's folder."""
SOURCE_COLUMN = "source"


class TableError(ManifestError):
    """A dataset table with bad rows; the message lists every bad row with its line number."""


@dataclass(frozen=True)
class TableRow:
    """One row: `line` is its line number in the CSV (the header is line 1); `values` maps column -> text."""

    line: int
    values: dict[str, str]

    def get(self, column: str) -> str:
        return (self.values.get(column) or "").strip()

    @property
    def label(self) -> str:
        return self.get("label")

    def media(self) -> dict[str, str]:
        """The non-empty media cells of this row (image, video, audio, text)."""
        return {c: self.get(c) for c in MEDIA_COLUMNS if self.get(c)}

    def with_values(self, **values: str) -> TableRow:
        return replace(self, values={**self.values, **values})


@dataclass
class Table:
    """A checked dataset table: its columns, rows and the folder its relative paths start from."""

    path: Path
    columns: list[str]
    rows: list[TableRow] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.path.parent

    def resolve(self, row: TableRow, column: str) -> Path | None:
        """The absolute path in a path column of a row, or None when the cell is empty."""
        value = row.get(column)
        return (self.root / value).resolve() if value else None

    def media_columns(self) -> list[str]:
        return [c for c in MEDIA_COLUMNS if c in self.columns]

    def absolute(self, row: TableRow) -> TableRow:
        """The row with every path cell made absolute (so it can be written next to another CSV)."""
        values = dict(row.values)
        for column in PATH_COLUMNS:
            path = self.resolve(row, column)
            if path is not None:
                values[column] = str(path)
        return replace(row, values=values)


def read_table(
    path: str | Path,
    require_label: bool = True,
    required: tuple[str, ...] = (),
    check_files: bool = True,
    require_media: bool = True,
) -> Table:
    """Read a dataset CSV; TableError listing every bad row (with line numbers) before any work.

    A row needs at least one media cell (image, video, audio or text) and, with `require_label`,
    a label. With `check_files`, every path cell must name an existing file (checking that the
    file decodes is left to the reader of that modality). Cleaning passes `check_files=False` and
    `require_media=False`: it drops such rows with a reason instead.
    """
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: table does not exist")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        columns = [c.strip() for c in header or []]
        needed = [*(("label",) if require_label else ()), *required]
        missing = [c for c in needed if c not in columns]
        if not columns or missing or not any(c in MEDIA_COLUMNS for c in columns):
            raise TableError(
                f"{path}: header {','.join(columns) or '(none)'}: expected at least one of "
                f"{', '.join(MEDIA_COLUMNS)}{' and ' + ', '.join(needed) if needed else ''}"
                f"{'; missing ' + ', '.join(missing) if missing else ''}"
            )
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise TableError(f"{path}: column(s) {', '.join(repeated)} appear more than once in the header")
        table = Table(path, columns)
        problems: list[str] = []
        for cells in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(columns):
                problems.append(f"line {line}: {len(cells)} fields; the header has {len(columns)}")
                continue
            row = TableRow(line, dict(zip(columns, cells)))
            if _check_row(table, row, needed, check_files, require_media, problems):
                table.rows.append(row)
    report_problems(path, problems, TableError)
    if not table.rows:
        raise TableError(f"{path}: no rows; expected at least one")
    return table


def _check_row(
    table: Table, row: TableRow, needed: list[str], check_files: bool, require_media: bool, problems: list[str]
) -> bool:
    count = len(problems)
    if require_media and not row.media():
        problems.append(f"line {row.line}: no {'/'.join(c for c in MEDIA_COLUMNS if c in table.columns)}; expected one")
    for column in needed:
        if not row.get(column):
            problems.append(f"line {row.line}: {column}: empty")
    if check_files:
        for column in PATH_COLUMNS:
            path = table.resolve(row, column)
            if path is not None and not path.is_file():
                problems.append(f"line {row.line}: {column}: {row.get(column)!r} does not exist")
    return len(problems) == count


def write_table(path: str | Path, columns: list[str], rows: list[TableRow], root: Path | None = None) -> Path:
    """Write rows as a CSV; path cells (absolute, or relative to `root`) are made relative to the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            cells = []
            for column in columns:
                value = row.get(column)
                if value and column in PATH_COLUMNS:
                    absolute = Path(value) if Path(value).is_absolute() else (root or path.parent) / value
                    value = Path(os.path.relpath(absolute.resolve(), path.parent.resolve())).as_posix()
                cells.append(value)
            writer.writerow(cells)
    return path
