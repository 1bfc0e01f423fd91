"""FITTERS: how each head kind that learns from data is fitted and calibrated, keyed by the head's registry name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mmfusion.registry import Registry

if TYPE_CHECKING:
    from mmfusion.data.manifest import ManifestRow
    from mmfusion.pipeline import Pipeline

FIT_DATA = ("good", "labelled")

FitFunction = Callable[["Pipeline", str, "list[ManifestRow]", "list[ManifestRow] | None"], dict[str, Any]]
CalibrateFunction = Callable[["Pipeline", str, "list[ManifestRow]", str, float], dict[str, Any]]


@dataclass
class Fitter:
    """One head kind's learning: which train rows it reads (`fit_data`), `fit` and `calibrate`.

    fit(pipeline, head_name, train_rows, val_rows) -> summary numbers; it leaves the head ready to save.
    calibrate(pipeline, head_name, val_rows, rule, target_fdr) -> summary numbers; it re-chooses thresholds only.
    fit_data: "good" (the good train rows only) or "labelled" (every train row).
    """

    fit_data: str
    fit: FitFunction
    calibrate: CalibrateFunction


FITTERS = Registry("fitter")
