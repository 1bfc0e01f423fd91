"""Write a pipeline graph's export: trace each modality group into a staging folder, seal it, swap it in."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mmfusion.graph import PipelineGraph
from mmfusion.runtime.export import DEFAULT_BATCH_SIZES, OPSET, export_group
from mmfusion.runtime.exported import ExportInfo, exporter_versions, publish, seal, staging_dir


def build_export(
    name: str,
    version: int,
    graph: PipelineGraph,
    keys: list[str],
    destination: Path,
    kind: str = "onnx",
    precision: str = "fp32",
    batches: list[dict[str, np.ndarray]] | None = None,
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
    calibration_info: dict[str, Any] | None = None,
    progress: bool = False,
) -> Path:
    """Export `graph`'s groups `keys` to `destination` (built beside it, sha256-sealed, then renamed in)."""
    staging = staging_dir(destination)
    try:
        graphs = {}
        steps = tqdm(keys, desc=f"export {name} {kind} {precision}", unit="graph", disable=not progress)
        for key in steps:
            graphs[key] = export_group(name, graph, key, kind, precision, batches, batch_sizes, staging)
        info = ExportInfo(
            model=name,
            version=version,
            kind=kind,
            precision=precision,
            batch_sizes=tuple(batch_sizes),
            graphs=graphs,
            calibration=calibration_info,
            exporter=exporter_versions(),
            opset=OPSET,
        )
        seal(staging, info)
        publish(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination
