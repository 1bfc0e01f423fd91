"""`mmfusion data split`: deterministic splits stratified by a column, never cutting a group across sets."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path

from mmfusion.data.csv_rows import report_problems
from mmfusion.data.table import Table, TableError, TableRow, read_table, write_table

SPLIT_NAMES = {2: ("train", "val"), 3: ("train", "val", "test")}


def parse_ratios(text: str) -> list[float]:
    """'8:1:1' -> [0.8, 0.1, 0.1]; ValueError naming the value when it is not 2 or 3 positive numbers."""
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in SPLIT_NAMES or min(parts) < 0 or sum(parts) <= 0 or parts[0] <= 0:
        raise ValueError(f"--ratios {text!r}: expected 2 or 3 non-negative numbers like 8:1:1 (train first, > 0)")
    return [p / sum(parts) for p in parts]


def _largest_remainder(count: int, ratios: list[float]) -> list[int]:
    """Split `count` items into integer parts proportional to `ratios` (ties go to earlier parts)."""
    exact = [count * r for r in ratios]
    parts = [int(e) for e in exact]
    order = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in order[: count - sum(parts)]:
        parts[i] += 1
    return parts


def _split_rows(rows: list[TableRow], ratios: list[float], stratify: str, seed: int) -> list[list[TableRow]]:
    """Exact stratification: each class is shuffled and cut by largest remainders."""
    splits: list[list[TableRow]] = [[] for _ in ratios]
    by_class: dict[str, list[TableRow]] = defaultdict(list)
    for row in rows:
        by_class[row.get(stratify)].append(row)
    for name in sorted(by_class):
        members = by_class[name]
        random.Random(f"{seed}:{name}").shuffle(members)
        start = 0
        for index, size in enumerate(_largest_remainder(len(members), ratios)):
            splits[index] += members[start : start + size]
            start += size
    return splits


def _split_groups(
    rows: list[TableRow], ratios: list[float], stratify: str, group: str, seed: int
) -> list[list[TableRow]]:
    """Greedy group assignment: largest groups first, each to the set whose class counts it brings closest to target."""
    groups: dict[str, list[TableRow]] = defaultdict(list)
    for row in rows:
        groups[row.get(group)].append(row)
    totals = Counter(row.get(stratify) for row in rows)
    targets = [{c: r * n for c, n in totals.items()} for r in ratios]
    counts: list[Counter] = [Counter() for _ in ratios]
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    names.sort(key=lambda name: -len(groups[name]))  # stable: equal sizes keep the seeded order
    splits: list[list[TableRow]] = [[] for _ in ratios]
    for name in names:
        members = Counter(row.get(stratify) for row in groups[name])

        def growth(index: int, members: Counter = members) -> float:
            """How much adding the group to a set raises its squared distance from target (per class share)."""
            return sum(
                ((counts[index][c] + n - targets[index][c]) ** 2 - (counts[index][c] - targets[index][c]) ** 2)
                / totals[c] ** 2
                for c, n in members.items()
            )

        best = min(range(len(ratios)), key=lambda i: (growth(i), -ratios[i], i))
        counts[best].update(members)
        splits[best] += groups[name]
    return splits


def split_table(
    table: Table, ratios: list[float], stratify: str = "label", group: str | None = None, seed: int = 0
) -> dict[str, list[TableRow]]:
    """Split a table's rows into train/val[/test], each in input order."""
    problems = [f"no column {column!r}" for column in (stratify, group) if column and column not in table.columns]
    if problems:
        raise ValueError(f"{table.path}: {'; '.join(problems)}; columns are {', '.join(table.columns)}")
    if group:
        report_problems(
            table.path, [f"line {r.line}: {group}: empty" for r in table.rows if not r.get(group)], TableError
        )
        parts = _split_groups(table.rows, ratios, stratify, group, seed)
    else:
        parts = _split_rows(table.rows, ratios, stratify, seed)
    return {name: sorted(rows, key=lambda r: r.line) for name, rows in zip(SPLIT_NAMES[len(ratios)], parts)}


def class_counts(splits: dict[str, list[TableRow]], stratify: str) -> str:
    """A table of per-class counts in each set."""
    classes = sorted({row.get(stratify) for rows in splits.values() for row in rows})
    width = max([len(stratify), *(len(c) for c in classes)])
    header = f"{stratify:<{width}}" + "".join(f"{name:>8}" for name in splits) + f"{'total':>8}"
    lines = [header]
    for name in [*classes, "total"]:
        counts = [sum(1 for r in rows if name == "total" or r.get(stratify) == name) for rows in splits.values()]
        lines.append(f"{name:<{width}}" + "".join(f"{n:>8}" for n in counts) + f"{sum(counts):>8}")
    return "\n".join(lines)


def split_file(
    source: str | Path,
    ratios: str,
    stratify: str = "label",
    group: str | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
) -> tuple[dict[str, Path], str]:
    """Write <stem>_train.csv, <stem>_val.csv[, <stem>_test.csv]; returns their paths and the count table."""
    table = read_table(source, require_label=stratify == "label")
    splits = split_table(table, parse_ratios(ratios), stratify, group, seed)
    folder = Path(out_dir) if out_dir else table.root
    paths = {}
    for name, rows in splits.items():
        paths[name] = write_table(folder / f"{table.path.stem}_{name}.csv", table.columns, rows, table.root)
    return paths, class_counts(splits, stratify)
