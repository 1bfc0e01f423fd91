"""The one CSV reader under every manifest: header checks, then (line number, row) pairs, bad rows reported."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from pathlib import Path

from mmfusion.types import InputError

MAX_SHOWN = 20


def read_rows(
    path: str | Path,
    what: str,
    required: tuple[str, ...],
    allowed: tuple[str, ...] | None = None,
    error: type[InputError] = InputError,
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, {column: stripped value}) per row of a CSV with a header; `error` naming the file when it is unusable.

    `what` names the file in messages ("manifest", "example pool"); `required` columns must be present and, with
    `allowed`, no other column may appear.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {str(path)!r} does not exist")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [(c or "").strip() for c in reader.fieldnames or []]
        missing = [c for c in required if c not in columns]
        if missing:
            optional = [c for c in allowed or () if c not in required]
            raise error(
                f"{path}: missing column(s) {', '.join(missing)}; got {', '.join(columns) or 'no header'}; "
                f"expected {', '.join(required)}" + (f" and optionally {', '.join(optional)}" if optional else "")
            )
        unknown = [c for c in columns if allowed is not None and c not in allowed]
        if unknown:
            raise error(f"{path}: unknown column(s) {', '.join(unknown)}; allowed: {', '.join(allowed or ())}")
        for values in reader:
            yield reader.line_num, {(k or "").strip(): (v or "").strip() for k, v in values.items() if k is not None}


def report_problems(path: str | Path, problems: list[str], error: type[InputError] = InputError) -> None:
    """Raise `error` listing the first problems (each already carries its line number), if any."""
    if not problems:
        return
    shown = "; ".join(problems[:MAX_SHOWN])
    more = f"; and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
    raise error(f"{path}: {len(problems)} bad row(s): {shown}{more}")


def collect_rows(
    path: str | Path,
    rows: Iterator[tuple[int, dict[str, str]]],
    check: Callable[[int, dict[str, str], list[str]], object | None],
    error: type[InputError] = InputError,
    expected: str = "at least one row",
) -> list:
    """Every row `check` accepts (it appends a problem and returns None otherwise); all problems raised at once."""
    accepted, problems = [], []
    for line, values in rows:
        item = check(line, values, problems)
        if item is not None:
            accepted.append(item)
    report_problems(path, problems, error)
    if not accepted:
        raise error(f"{path}: no rows; expected {expected}")
    return accepted
