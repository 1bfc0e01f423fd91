"""Fit and calibrate every head of a model that learns from data, into a verifiable fitted model folder.

A head that learns declares `fit_data` ("good": good rows only, "labelled": every row) and implements
`fit(pipeline, train, val)`, `calibrate(pipeline, val, rule, target_fdr)`, `save_fitted(folder)` and
`load_fitted(folder)`; the pipeline gives it `fitted/<head name>/` when the folder is loaded.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mmfusion.config import ConfigError
from mmfusion.data.manifest import ManifestRow, load_manifest
from mmfusion.heads.patchcore.calibration import RULES
from mmfusion.pipeline import FITTED_DIR, Pipeline, resolve_model_dir
from mmfusion.repository.manifests import MANIFEST_NAME, write_manifest
from mmfusion.types import InputError

FIT_DATA = ("good", "labelled")


def fittable_heads(pipeline: Pipeline) -> dict[str, Any]:
    """The heads of a pipeline that learn from data (they have `fit` and `fit_data`)."""
    return {name: head for name, head in pipeline.graph.heads.items() if hasattr(head, "fit")}


def _check_rule(rule: str, target_fdr: float) -> None:
    if rule not in RULES:
        raise InputError(f"--rule: {rule!r}; expected one of {', '.join(RULES)}")
    if not 0.0 <= target_fdr < 1.0:
        raise InputError(f"--target-fdr: {target_fdr}; expected a rate in [0, 1)")


def _training_rows(head_name: str, head: Any, rows: list[ManifestRow]) -> list[ManifestRow]:
    fit_data = getattr(head, "fit_data", None)
    if fit_data not in FIT_DATA:
        raise ConfigError(f"head {head_name!r}: fit_data {fit_data!r}; expected one of {', '.join(FIT_DATA)}")
    chosen = [row for row in rows if row.is_good] if fit_data == "good" else rows
    if not chosen:
        raise InputError(f"train manifest: no usable rows for head {head_name!r}, which learns from {fit_data} rows")
    return chosen


def copy_model_folder(source: Path, out: Path) -> None:
    """Copy a model folder to `out`, leaving its old fitted artifacts and integrity manifest behind."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out: {str(out)!r} exists and is not an empty folder; choose a new folder")
    if out.resolve().is_relative_to(source.resolve()):
        raise InputError(f"--out: {str(out)!r} is inside the model folder {str(source)!r}; choose a folder outside it")
    shutil.copytree(source, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(FITTED_DIR, MANIFEST_NAME))


def _calibrate_heads(pipeline: Pipeline, heads: dict[str, Any], val: list[ManifestRow], rule: str, target_fdr: float):
    return {name: head.calibrate(pipeline, val, rule, target_fdr) for name, head in heads.items()}


def _save(pipeline: Pipeline, heads: dict[str, Any], folder: Path) -> None:
    for name, head in heads.items():
        target = folder / FITTED_DIR / name
        if target.exists():
            shutil.rmtree(target)
        head.save_fitted(target)
    write_manifest(folder)


def fit_model(
    model: str | Path,
    train_manifest: str | Path,
    out: str | Path,
    val_manifest: str | Path | None = None,
    rule: str = "f1",
    target_fdr: float = 0.01,
) -> dict[str, dict[str, float]]:
    """Copy `model` to `out`, fit each learning head on the train rows, calibrate on val, save and sign.

    Manifests are read and checked (every bad row reported) before anything is copied or computed.
    Returns each head's summary numbers (fit, then calibration).
    """
    _check_rule(rule, target_fdr)
    source = resolve_model_dir(model)
    train = load_manifest(train_manifest)
    val = load_manifest(val_manifest) if val_manifest is not None else None
    out = Path(out)
    created = not out.exists()
    copy_model_folder(source, out)
    try:
        return _fit_copied(out, train, val, rule, target_fdr)
    except BaseException:
        # a half-fitted folder must not look usable; leave --out as it was
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _fit_copied(
    out: Path, train: list[ManifestRow], val: list[ManifestRow] | None, rule: str, target_fdr: float
) -> dict[str, dict[str, float]]:
    pipeline = Pipeline(out)
    try:
        heads = fittable_heads(pipeline)
        if not heads:
            raise ConfigError(f"model {pipeline.name!r} has no head that learns from data; nothing to fit")
        rows = {name: _training_rows(name, head, train) for name, head in heads.items()}
        summaries = {name: dict(head.fit(pipeline, rows[name], val)) for name, head in heads.items()}
        if val is not None:
            for name, numbers in _calibrate_heads(pipeline, heads, val, rule, target_fdr).items():
                summaries[name].update(numbers)
        _save(pipeline, heads, out)
    finally:
        pipeline.close()
    return summaries


def calibrate_model(
    folder: str | Path, val_manifest: str | Path, rule: str = "f1", target_fdr: float = 0.01
) -> dict[str, dict[str, float]]:
    """Re-choose the thresholds of a fitted model folder on validation rows, without refitting; re-sign it."""
    _check_rule(rule, target_fdr)
    folder = resolve_model_dir(folder)
    val = load_manifest(val_manifest)
    pipeline = Pipeline(folder)
    try:
        heads = fittable_heads(pipeline)
        missing = [name for name in heads if not (folder / FITTED_DIR / name).is_dir()]
        if not heads or missing:
            raise ConfigError(f"{folder}: not a fitted model folder (no {FITTED_DIR}/ for {missing or 'any head'}); "
                              "run mmfusion fit first")  # fmt: skip
        summaries = _calibrate_heads(pipeline, heads, val, rule, target_fdr)
        _save(pipeline, heads, folder)
    finally:
        pipeline.close()
    return summaries
