"""The export folder format: export.json (specs, precision, parity, tool versions), sha256 manifest, checked reading."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from mmfusion.config import ConfigError
from mmfusion.runtime.tensors import TensorSpec
from mmfusion.security.integrity import IntegrityError, verify_manifest, write_manifest

EXPORT_FILE = "export.json"
EXPORT_FORMAT = 1
KINDS = ("onnx", "tensorrt")
"""The export kinds, each in versions/<n>/<kind>/ of a model folder."""
BACKEND_KIND = {"onnxruntime": "onnx", "tensorrt": "tensorrt"}
"""Which exported folder each compiled backend reads."""
EXPORTER_PACKAGES = ("mmfusion", "torch", "onnx", "onnxruntime", "onnxscript", "tensorrt")


@dataclass(frozen=True)
class ExportedGraph:
    """One graph file of an export: the modality group it reads and its tensor specs."""

    group: str
    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    quantization: str | None = None
    parity: dict[str, float] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)
    int16_weights: list[str] = field(default_factory=list)
    """Weights a static INT8 export kept at 16 bits to hold its output fidelity (see runtime.quantize)."""
    weight_bits: int | None = None
    """INT8 exports: 7 (made on a CPU without int8 dot-product instructions) or 8 (made on one with them)."""
    fp32_layers: list[str] = field(default_factory=list)
    """Weight layers (node names) a static INT8 graph left in FP32: the prefix `backend: auto` keeps wide."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "quantization": self.quantization,
            "parity": self.parity,
            "engine": self.engine,
            "int16_weights": self.int16_weights,
            "weight_bits": self.weight_bits,
            "fp32_layers": self.fp32_layers,
        }

    @classmethod
    def from_dict(cls, group: str, raw: dict[str, Any]) -> ExportedGraph:
        return cls(
            group=group,
            file=str(raw["file"]),
            inputs=[TensorSpec.from_dict(s) for s in raw["inputs"]],
            outputs=[TensorSpec.from_dict(s) for s in raw["outputs"]],
            quantization=raw.get("quantization"),
            parity=dict(raw.get("parity") or {}),
            engine=dict(raw.get("engine") or {}),
            int16_weights=list(raw.get("int16_weights") or []),
            weight_bits=raw.get("weight_bits"),
            fp32_layers=list(raw.get("fp32_layers") or []),
        )


@dataclass(frozen=True)
class ExportInfo:
    """What export.json records: model, version, kind, precision, graphs, calibration set and tool versions."""

    model: str
    version: int
    kind: str
    precision: str
    batch_sizes: tuple[int, ...]
    graphs: dict[str, ExportedGraph]
    calibration: dict[str, Any] | None = None
    exporter: dict[str, str] = field(default_factory=dict)
    opset: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": EXPORT_FORMAT,
            "model": self.model,
            "version": self.version,
            "kind": self.kind,
            "precision": self.precision,
            "batch_sizes": list(self.batch_sizes),
            "opset": self.opset,
            "graphs": {group: graph.to_dict() for group, graph in self.graphs.items()},
            "calibration": self.calibration,
            "exporter": self.exporter,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExportInfo:
        return cls(
            model=str(raw["model"]),
            version=int(raw["version"]),
            kind=str(raw["kind"]),
            precision=str(raw["precision"]),
            batch_sizes=tuple(int(b) for b in raw["batch_sizes"]),
            graphs={group: ExportedGraph.from_dict(group, g) for group, g in raw["graphs"].items()},
            calibration=raw.get("calibration"),
            exporter=dict(raw.get("exporter") or {}),
            opset=raw.get("opset"),
        )


def exporter_versions() -> dict[str, str]:
    """Installed versions of the packages that produce and read exports."""
    versions = {}
    for package in EXPORTER_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def staging_dir(destination: Path) -> Path:
    """An empty folder beside `destination` to build an export in before it replaces the old one."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{destination.name}-", dir=destination.parent))


def seal(folder: Path, info: ExportInfo) -> None:
    """Write export.json, then the sha256 manifest of every file (export.json included)."""
    (folder / EXPORT_FILE).write_text(json.dumps(info.to_dict(), indent=2) + "\n")
    write_manifest(folder)


def publish(staging: Path, destination: Path) -> None:
    """Replace `destination` by the finished `staging` folder (old export removed only after the swap)."""
    retired = None
    if destination.exists():
        retired = destination.with_name(f".{destination.name}-old")
        shutil.rmtree(retired, ignore_errors=True)
        destination.rename(retired)
    staging.rename(destination)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def read_export(folder: Path) -> ExportInfo:
    """export.json of a folder whose files all match its sha256 manifest; ConfigError naming the file otherwise."""
    try:
        verify_manifest(folder)
    except IntegrityError as error:
        raise ConfigError(f"{folder}: refused to load the export: {error}") from None
    try:
        return ExportInfo.from_dict(json.loads((folder / EXPORT_FILE).read_text()))
    except FileNotFoundError:
        raise ConfigError(f"{folder}: no {EXPORT_FILE}; not a folder written by `mmfusion export`") from None
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{folder / EXPORT_FILE}: not a valid export description ({error})") from None


def folder_size(folder: Path, suffixes: tuple[str, ...] = (".onnx", ".data", ".engine")) -> int:
    """Bytes of the graph/weight files of an export."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.suffix in suffixes)


@dataclass(frozen=True)
class OpenedExport:
    """A verified export folder and what its export.json says: what a compiled backend loads."""

    folder: Path
    info: ExportInfo
