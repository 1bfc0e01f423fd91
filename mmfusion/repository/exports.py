"""Exports inside a model folder: versions/<n>/<kind>/, found, listed, verified and handed to a backend."""

from __future__ import annotations

from pathlib import Path

from mmfusion.config import ConfigError, RuntimeSpec
from mmfusion.graph import PipelineGraph
from mmfusion.registry import BACKENDS
from mmfusion.repository.versions import VERSIONS_DIR
from mmfusion.runtime.base import Backend
from mmfusion.runtime.exported import BACKEND_KIND, EXPORT_FILE, KINDS, ExportInfo, OpenedExport, read_export
from mmfusion.security.integrity import MANIFEST_NAME


def export_dir(model_dir: str | Path, version: int, kind: str) -> Path:
    """models/<name>/versions/<n>/<kind>/."""
    return Path(model_dir) / VERSIONS_DIR / str(version) / kind


def open_export(model_dir: Path, version: int, backend: str, precision: str | None) -> OpenedExport:
    """The verified export a compiled backend runs; errors say which `mmfusion export` command makes it."""
    kind = BACKEND_KIND[backend]
    folder = export_dir(model_dir, version, kind)
    command = f"mmfusion export {model_dir} --backend {kind}" + (f" --precision {precision}" if precision else "")
    if not (folder / MANIFEST_NAME).is_file() and not (folder / EXPORT_FILE).is_file():
        raise ConfigError(f"{model_dir.name}: version {version} has no {kind} export at {folder}; run `{command}`")
    info = read_export(folder)
    if precision is not None and info.precision != precision:
        raise ConfigError(
            f"{folder}: exported at precision {info.precision}, but runtime.precision is {precision}; run `{command}`"
        )
    return OpenedExport(folder, info)


def list_exports(model_dir: Path) -> list[tuple[Path, ExportInfo | None, str]]:
    """Every export folder under versions/: (folder, info or None, 'verified' or the reason it is refused)."""
    found = []
    root = Path(model_dir) / VERSIONS_DIR
    versions = (
        sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)) if root.is_dir() else []
    )
    for folder in (version / kind for version in versions for kind in KINDS):
        if not folder.is_dir():
            continue
        try:
            found.append((folder, read_export(folder), "verified"))
        except ConfigError as error:
            found.append((folder, None, str(error)))
    return found


def load_backend(model_dir: Path, runtime: RuntimeSpec, version: int, graph: PipelineGraph | None = None) -> Backend:
    """The runtime's backend, loaded with the graph (torch) or the model folder's verified export (compiled)."""
    backend = BACKENDS.get(runtime.backend)(runtime)
    export = open_export(Path(model_dir), version, runtime.backend, runtime.precision) if backend.runs_export else None
    backend.load(graph, export)
    return backend
