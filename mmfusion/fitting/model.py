"""Fit and calibrate every head of a model that learns from data, into a verifiable fitted model folder.

A head kind that learns has a fitter in FITTERS (mmfusion.fitting.registry), keyed by the head's registry name:
it declares `fit_data` ("good": good rows only, "labelled": every row) and does `fit` and `calibrate`. The head
itself implements `save_fitted(folder)` and `load_fitted(folder)`; the pipeline gives it `fitted/<head name>/`
when the folder is loaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import yaml

from mmfusion.config import CONFIG_FILE, ConfigError
from mmfusion.data.manifest import ManifestRow, load_manifest
from mmfusion.fitting import detection, patchcore  # noqa: F401  (their fitters register on import)
from mmfusion.fitting.registry import FIT_DATA, FITTERS, Fitter
from mmfusion.fitting.thresholds import RULES
from mmfusion.pipeline import Pipeline
from mmfusion.repository.folder import CALIBRATION_DIR, FITTED_DIR, resolve_model_dir
from mmfusion.security.integrity import MANIFEST_NAME, write_manifest
from mmfusion.types import InputError


def head_fitters(pipeline: Pipeline) -> dict[str, Fitter]:
    """The fitter of each head of a pipeline that learns from data (its kind is in FITTERS), by head name."""
    kinds = {name: pipeline.config.heads[name].name for name in pipeline.graph.heads}
    return {name: FITTERS.get(kind) for name, kind in kinds.items() if kind in FITTERS}


def _check_rule(rule: str, target_fdr: float) -> None:
    if rule not in RULES:
        raise InputError(f"--rule: {rule!r}; expected one of {', '.join(RULES)}")
    if not 0.0 <= target_fdr < 1.0:
        raise InputError(f"--target-fdr: {target_fdr}; expected a rate in [0, 1)")


def _training_rows(head_name: str, fitter: Fitter, rows: list[ManifestRow]) -> list[ManifestRow]:
    fit_data = fitter.fit_data
    if fit_data not in FIT_DATA:
        raise ConfigError(f"head {head_name!r}: fit_data {fit_data!r}; expected one of {', '.join(FIT_DATA)}")
    chosen = [row for row in rows if row.is_good] if fit_data == "good" else rows
    if not chosen:
        raise InputError(f"train manifest: no usable rows for head {head_name!r}, which learns from {fit_data} rows")
    return chosen


def copy_model_folder(source: Path, out: Path) -> None:
    """Copy a model folder to `out`, leaving behind its fitted artifacts, its integrity manifest and its
    `calibration/` images (INT8 is calibrated and checked on images of the parts the copy is fitted to)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out: {str(out)!r} exists and is not an empty folder; choose a new folder")
    if out.resolve().is_relative_to(source.resolve()):
        raise InputError(f"--out: {str(out)!r} is inside the model folder {str(source)!r}; choose a folder outside it")
    left_behind = shutil.ignore_patterns(FITTED_DIR, MANIFEST_NAME, CALIBRATION_DIR)
    shutil.copytree(source, out, dirs_exist_ok=True, ignore=left_behind)
    name_after_folder(out)


def _yaml_string(text: str) -> str:
    """`text` as a YAML scalar that reads back as that string: plain when it can be, else double-quoted."""
    try:
        plain = yaml.safe_load(text) == text
    except yaml.YAMLError:
        plain = False
    return text if plain else json.dumps(text)


def name_after_folder(folder: Path) -> None:
    """Set the `name:` of a copied model's config.yaml to the copy's folder name (a model is served by it)."""
    path = folder / CONFIG_FILE
    name = Path(os.path.abspath(folder)).name  # as `config.check_folder_name` sees it
    text = path.read_text()
    renamed, count = re.subn(r"^name:.*$", f"name: {_yaml_string(name)}", text, count=1, flags=re.MULTILINE)
    if count == 0:  # no top-level `name:` line to edit in place: rewrite the YAML (comments are lost)
        raw = yaml.safe_load(text)
        renamed = yaml.safe_dump({**raw, "name": name}, sort_keys=False) if isinstance(raw, dict) else text
    path.write_text(renamed)


def _calibrate_heads(
    pipeline: Pipeline, fitters: dict[str, Fitter], val: list[ManifestRow], rule: str, target_fdr: float
) -> dict[str, dict[str, float]]:
    return {name: fitter.calibrate(pipeline, name, val, rule, target_fdr) for name, fitter in fitters.items()}


def _save(pipeline: Pipeline, fitters: dict[str, Fitter], folder: Path) -> None:
    for name in fitters:
        target = folder / FITTED_DIR / name
        if target.exists():
            shutil.rmtree(target)
        pipeline.graph.heads[name].save_fitted(target)
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
    pipeline = Pipeline(out, backend="torch")  # fitting changes the torch weights: an export would be stale
    try:
        fitters = head_fitters(pipeline)
        if not fitters:
            raise ConfigError(f"model {pipeline.name!r} has no head that learns from data; nothing to fit")
        rows = {name: _training_rows(name, fitter, train) for name, fitter in fitters.items()}
        summaries = {name: dict(fitter.fit(pipeline, name, rows[name], val)) for name, fitter in fitters.items()}
        if val is not None:
            for name, numbers in _calibrate_heads(pipeline, fitters, val, rule, target_fdr).items():
                summaries[name].update(numbers)
        _save(pipeline, fitters, out)
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
        fitters = head_fitters(pipeline)
        missing = [name for name in fitters if not (folder / FITTED_DIR / name).is_dir()]
        if not fitters or missing:
            raise ConfigError(f"{folder}: not a fitted model folder (no {FITTED_DIR}/ for {missing or 'any head'}); "
                              "run mmfusion fit first")  # fmt: skip
        summaries = _calibrate_heads(pipeline, fitters, val, rule, target_fdr)
        _save(pipeline, fitters, folder)
    finally:
        pipeline.close()
    return summaries
