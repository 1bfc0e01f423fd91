"""Dataset cleaning: unreadable or empty files, exact and near duplicates, conflicting labels; a reason per drop."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasketch import MinHashLSH
from tqdm import tqdm

from mmfusion.data.table import Table, TableRow, write_table
from mmfusion.media import decode_audio, decode_image, video_frame_count
from mmfusion.training import fingerprints as fp
from mmfusion.types import InputError

NEAR_ORDER = ("image", "audio", "text")
"""The column whose fingerprint finds near-duplicate candidates, first present wins."""
REPORT_COLUMNS = ("line", "action", "reason", "duplicate_of", "detail")


@dataclass(frozen=True)
class CleanOptions:
    """Near-duplicate thresholds."""

    image_distance: int = 6
    """Largest perceptual-hash Hamming distance (of 64 bits) for two images to be near duplicates."""
    text_similarity: float = 0.8
    """Smallest Jaccard similarity of character 3-gram sets for two texts to be near duplicates."""
    audio_distance: float = 0.15
    """Largest fingerprint bit error rate for two recordings to be near duplicates."""


@dataclass(frozen=True)
class Decision:
    """What cleaning did with one row and why (`action` is 'dropped' or 'kept' for a flagged row)."""

    line: int
    action: str
    reason: str
    detail: str = ""
    duplicate_of: int | None = None


@dataclass
class CleanResult:
    """Rows kept (in input order) and a decision for every dropped or flagged row."""

    kept: list[TableRow]
    decisions: list[Decision] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Dropped rows per reason."""
        return dict(Counter(d.reason for d in self.decisions if d.action == "dropped"))


@dataclass
class Content:
    """A readable row's content: the exact key over its media cells and near-duplicate fingerprints."""

    key: tuple[str, ...]
    near: dict[str, Any]


class Unusable(Exception):
    """A row whose file is missing, empty or unreadable; args: (reason, detail)."""


def _read_content(table: Table, row: TableRow, column: str) -> tuple[str, Any]:
    """(exact hash, fingerprint or None) of one media cell; Unusable when it cannot be used."""
    value = row.get(column)
    if column == "text":
        normalised = fp.normalise_text(value)
        if not normalised:
            raise Unusable("empty", "text: only whitespace")
        shingles = fp.text_shingles(value)
        return hashlib.sha256(normalised.encode()).hexdigest(), (shingles, fp.text_minhash(shingles))
    path = table.resolve(row, column)
    if not path.is_file():
        raise Unusable("unreadable", f"{column}: {value!r} does not exist")
    if path.stat().st_size == 0:
        raise Unusable("empty", f"{column}: {value!r} is an empty file")
    try:
        if column == "image":
            image = decode_image(path, f"{column} {value!r}")
            return fp.sha256_array(image), fp.image_phash(image)
        if column == "audio":
            waveform = decode_audio(path, f"{column} {value!r}")
            if not np.any(waveform):
                raise Unusable("empty", f"{column}: {value!r} is silent (every sample is zero)")
            return fp.sha256_array(waveform), fp.audio_fingerprint(waveform)
    except InputError as error:
        raise Unusable("unreadable", str(error)) from None
    if video_frame_count(path) <= 0:
        raise Unusable("unreadable", f"{column}: {value!r} has no frames OpenCV can read")
    return hashlib.sha256(path.read_bytes()).hexdigest(), None


def _near_distance(column: str, a: Any, b: Any) -> float:
    """Distance between two fingerprints of a column (0 = same)."""
    if column == "image":
        return float(fp.hamming(a, b))
    if column == "audio":
        return a.distance(b)
    return 1.0 - fp.jaccard(a[0], b[0])


class NearIndex:
    """Kept rows' fingerprints of the candidate column, searchable for near duplicates."""

    def __init__(self, column: str, options: CleanOptions) -> None:
        self.column = column
        self.options = options
        self.lines: list[int] = []
        self.fingerprints: list[Any] = []
        self.lsh = MinHashLSH(threshold=max(0.3, options.text_similarity - 0.2), num_perm=fp.MINHASH_PERMUTATIONS)

    def limit(self, column: str) -> float:
        if column == "image":
            return float(self.options.image_distance)
        if column == "audio":
            return self.options.audio_distance
        return 1.0 - self.options.text_similarity

    def candidates(self, fingerprint: Any) -> list[int]:
        """Indices of kept rows within the column's limit, closest first."""
        if not self.lines:
            return []
        if self.column == "image":
            hashes = np.asarray(self.fingerprints, dtype=np.uint64)
            distances = np.bitwise_count(hashes ^ np.uint64(fingerprint)).astype(float)
            indices = np.flatnonzero(distances <= self.limit("image"))
        elif self.column == "text":
            indices = np.asarray(sorted(self.lsh.query(fingerprint[1])), dtype=int)
            distances = np.array([_near_distance("text", fingerprint, f) for f in self.fingerprints])
            indices = indices[distances[indices] <= self.limit("text")] if indices.size else indices
        else:
            distances = np.array([fingerprint.distance(f) for f in self.fingerprints])
            indices = np.flatnonzero(distances <= self.limit("audio"))
        return sorted(indices.tolist(), key=lambda i: (distances[i], i))

    def add(self, line: int, fingerprint: Any) -> None:
        if self.column == "text":
            self.lsh.insert(str(len(self.lines)), fingerprint[1])
        self.lines.append(line)
        self.fingerprints.append(fingerprint)


def clean_table(table: Table, options: CleanOptions | None = None, progress: bool = False) -> CleanResult:
    """Drop unusable rows, exact duplicates, conflicting labels and same-label near duplicates."""
    options = options or CleanOptions()
    columns = table.media_columns()
    decisions: list[Decision] = []
    contents: dict[int, Content] = {}
    for row in tqdm(table.rows, desc="reading", unit="row", disable=not progress):
        try:
            read = {c: _read_content(table, row, c) for c in columns if row.get(c)}
            if not read:
                raise Unusable("empty", f"no {'/'.join(columns)}")
        except Unusable as unusable:
            reason, detail = unusable.args
            decisions.append(Decision(row.line, "dropped", reason, detail))
            continue
        key = tuple(read[c][0] if c in read else "" for c in columns)
        contents[row.line] = Content(key, {c: value[1] for c, value in read.items() if value[1] is not None})
    exact_kept = _drop_exact(table, contents, decisions)
    kept = _drop_near(exact_kept, contents, options, decisions)
    decisions.sort(key=lambda d: d.line)
    return CleanResult(kept, decisions)


def _drop_exact(table: Table, contents: dict[int, Content], decisions: list[Decision]) -> list[TableRow]:
    """Keep the first row of each exact content; drop every row of a content given different labels."""
    by_key: dict[tuple[str, ...], list[TableRow]] = defaultdict(list)
    for row in table.rows:
        if row.line in contents:
            by_key[contents[row.line].key].append(row)
    kept = []
    for row in table.rows:
        if row.line not in contents:
            continue
        same = by_key[contents[row.line].key]
        labels = sorted({r.label for r in same})
        if len(labels) > 1:
            others = ", ".join(str(r.line) for r in same if r.line != row.line)
            detail = f"labels {', '.join(labels)} for the same content (lines {others})"
            decisions.append(Decision(row.line, "dropped", "conflicting_labels", detail, same[0].line))
        elif row is not same[0]:
            decisions.append(Decision(row.line, "dropped", "exact_duplicate", "same content", same[0].line))
        else:
            kept.append(row)
    return kept


def _drop_near(
    rows: list[TableRow], contents: dict[int, Content], options: CleanOptions, decisions: list[Decision]
) -> list[TableRow]:
    """Drop a row near-duplicating an earlier kept row with the same label; flag near duplicates across labels."""
    present = {c for row in rows for c in contents[row.line].near}
    column = next((c for c in NEAR_ORDER if c in present), None)
    if column is None:
        return rows
    index = NearIndex(column, options)
    labels: dict[int, str] = {}
    kept = []
    for row in rows:
        near = contents[row.line].near
        if column not in near:
            kept.append(row)
            continue
        match = None
        for candidate in index.candidates(near[column]):
            other = contents[index.lines[candidate]].near
            if all(c in other and _near_distance(c, near[c], other[c]) <= index.limit(c) for c in near if c != column):
                match = index.lines[candidate]
                break
        distance = _near_distance(column, near[column], contents[match].near[column]) if match is not None else None
        if match is not None and labels[match] == row.label:
            decisions.append(
                Decision(row.line, "dropped", "near_duplicate", f"{column} distance {distance:.3g}", match)
            )
            continue
        if match is not None:
            detail = f"{column} distance {distance:.3g}; label {row.label!r} vs {labels[match]!r}"
            decisions.append(Decision(row.line, "kept", "near_duplicate_other_label", detail, match))
        index.add(row.line, near[column])
        labels[row.line] = row.label
        kept.append(row)
    return kept


def write_report(path: str | Path, decisions: list[Decision]) -> Path:
    """The report CSV: one line per dropped or flagged row with its reason."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(REPORT_COLUMNS)
        for d in decisions:
            writer.writerow([d.line, d.action, d.reason, "" if d.duplicate_of is None else d.duplicate_of, d.detail])
    return path


def clean_file(
    source: str | Path, out: str | Path, report: str | Path | None = None, options: CleanOptions | None = None
) -> tuple[CleanResult, Path]:
    """Clean a table file: write the cleaned table and the report (default: OUT with `.report.csv`)."""
    from mmfusion.data.table import read_table

    table = read_table(source, check_files=False, require_media=False)
    result = clean_table(table, options, progress=True)
    out = Path(out)
    write_table(out, table.columns, [table.absolute(r) for r in result.kept])
    report_path = Path(report) if report else out.with_suffix(".report.csv")
    write_report(report_path, result.decisions)
    return result, report_path
