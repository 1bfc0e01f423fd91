"""`mmfusion export`: a model folder's pipeline graph written as a verified export in versions/<n>/<kind>/."""

from __future__ import annotations

import json
from pathlib import Path

from mmfusion.config import RuntimeSpec
from mmfusion.pipeline import Pipeline
from mmfusion.repository.export_build import build_export
from mmfusion.repository.exports import export_dir
from mmfusion.runtime import quantize
from mmfusion.runtime.export import DEFAULT_BATCH_SIZES, check_export_request
from mmfusion.runtime.specs import default_groups, parse_groups
from mmfusion.security.integrity import MANIFEST_NAME, write_manifest


def _refresh_model_manifest(model_dir: Path, added: Path) -> None:
    """A model folder with its own sha256 manifest gets the new export's files added (after checking the rest)."""
    manifest = model_dir / MANIFEST_NAME
    if not manifest.is_file():
        return
    listed = set(json.loads(manifest.read_text())["files"])
    prefix = added.relative_to(model_dir).as_posix() + "/"
    kept = {name for name in listed if not name.startswith(prefix) and (model_dir / name).is_file()}
    new = {p.relative_to(model_dir).as_posix() for p in added.rglob("*") if p.is_file()}
    write_manifest(model_dir, sorted(kept | new))


def export_model(
    model: str | Path,
    kind: str = "onnx",
    precision: str = "fp32",
    calibration: str | Path | None = None,
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
    groups: str | None = None,
    version: int | None = None,
    progress: bool = False,
) -> Path:
    """Export a model folder's graph to models/<name>/versions/<n>/<kind>/ and return that folder."""
    check_export_request(kind, precision, calibration)
    pipeline = Pipeline(model, backend=RuntimeSpec(backend="torch"), version=version)  # FP32 on the CPU
    graph = pipeline.graph.eval()
    modalities = list(pipeline.config.encoders)
    keys = parse_groups(groups, modalities) if groups else default_groups(modalities)
    rows = quantize.load_calibration_rows(calibration) if calibration is not None else None
    calibration_info = None
    if rows is not None:
        calibration_info = {
            "manifest": str(calibration),
            "items": len(rows),
            "sha256": quantize.calibration_hash(calibration, rows),
        }
    # static INT8 and TensorRT calibrate on the image graph's inputs, preprocessed by the pipeline itself
    batches = list(quantize.calibration_batches(pipeline, rows)) if rows is not None else None
    destination = export_dir(pipeline.model_dir, pipeline.version, kind)
    build_export(
        pipeline.name, pipeline.version, graph, keys, destination, kind, precision, batches, batch_sizes,
        calibration_info, progress,
    )  # fmt: skip
    pipeline.close()
    _refresh_model_manifest(pipeline.model_dir, destination)
    return destination
