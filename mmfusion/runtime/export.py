"""`mmfusion export`: the pipeline graph as ONNX (FP32, FP16, INT8) or TensorRT engines, per modality group."""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mmfusion.config import ConfigError, RuntimeSpec
from mmfusion.graph import PipelineGraph
from mmfusion.runtime.base import DYNAMIC, TensorSpec
from mmfusion.runtime.exported import (
    KINDS,
    ExportedGraph,
    ExportInfo,
    export_dir,
    exporter_versions,
    publish,
    seal,
    staging_dir,
)
from mmfusion.runtime.specs import default_groups, example_arrays, parse_groups, specs_from_examples
from mmfusion.types import InputError

OPSET = 17
EXPORT_PRECISIONS = {"onnx": ("fp32", "fp16", "int8"), "tensorrt": ("fp32", "fp16", "int8")}
DEFAULT_BATCH_SIZES = (1, 8, 32)
FP32_RELATIVE_TOLERANCE = 1e-4
FP32_MIN_COSINE = 0.9999


class GroupGraph(nn.Module):
    """The pipeline graph with positional inputs for one modality group: the module an ONNX file holds."""

    def __init__(self, graph: PipelineGraph, input_names: list[str], output_names: list[str]) -> None:
        super().__init__()
        self.graph = graph
        self.input_names = input_names
        self.output_names = output_names

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.graph(dict(zip(self.input_names, tensors)))
        return tuple(outputs[name] for name in self.output_names)


def _run_graph(graph: PipelineGraph, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        outputs = graph({name: torch.from_numpy(array) for name, array in arrays.items()})
    return {name: value.numpy() for name, value in outputs.items()}


def _dynamic_axes(specs: list[TensorSpec]) -> dict[str, dict[int, str]]:
    return {
        spec.name: {
            axis: "batch" if axis == 0 else f"{spec.name}.{axis}" for axis, d in enumerate(spec.shape) if d == DYNAMIC
        }
        for spec in specs
    }


def export_group_onnx(graph: PipelineGraph, group: str, path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Trace one modality group of the graph to an FP32 ONNX file with dynamic batch (and sequence) axes.

    The TorchScript-based exporter (dynamo=False) is used: the graph's Python-level checks (modality sets,
    batch agreement, fusion weights) trace to constants, where torch.export stops at them.
    """
    first = example_arrays(graph, group, batch=2, variant=0)
    second = example_arrays(graph, group, batch=3, variant=1)
    input_specs = specs_from_examples([first, second])
    output_specs = specs_from_examples([_run_graph(graph, first), _run_graph(graph, second)])
    input_names = [spec.name for spec in input_specs]
    output_names = [spec.name for spec in output_specs]
    module = GroupGraph(graph, input_names, output_names).eval()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.MultiheadAttention's inference fast path (open_clip towers) is one fused op ONNX has no symbol for.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings for the checks above, exporter deprecation notices
            torch.onnx.export(
                module,
                tuple(torch.from_numpy(first[name]) for name in input_names),
                str(path),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=_dynamic_axes(input_specs + output_specs),
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return input_specs, output_specs


def row_cosines(expected: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Cosine of each row pair of two (N, D) arrays, as float64; 1.0 where either row is all zeros."""
    expected, got = np.asarray(expected, np.float64), np.asarray(got, np.float64)
    norms = np.linalg.norm(expected, axis=1) * np.linalg.norm(got, axis=1)  # (N,)
    return np.where(norms > 0, (expected * got).sum(1) / np.maximum(norms, 1e-30), 1.0)


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, float]:
    """Worst relative max difference and worst per-row cosine over every float output."""
    worst_relative, worst_cosine = 0.0, 1.0
    for name, expected in reference.items():
        got = np.asarray(candidate[name], dtype=np.float64)
        expected = np.asarray(expected, dtype=np.float64)
        if got.shape != expected.shape:
            raise ValueError(f"output {name}: shape {got.shape} differs from torch's {expected.shape}")
        scale = max(float(np.abs(expected).max(initial=0.0)), 1e-12)
        worst_relative = max(worst_relative, float(np.abs(got - expected).max(initial=0.0)) / scale)
        cosine = row_cosines(expected.reshape(len(expected), -1), got.reshape(len(got), -1))  # (B,)
        worst_cosine = min(worst_cosine, float(cosine.min(initial=1.0)))
    return {"max_relative_difference": worst_relative, "min_cosine": worst_cosine}


def within_fp32_parity(parity: dict[str, float]) -> bool:
    """FP32 backends must match torch within 1e-4 relative or a cosine of at least 0.9999."""
    return parity["max_relative_difference"] <= FP32_RELATIVE_TOLERANCE or parity["min_cosine"] >= FP32_MIN_COSINE


def _onnx_outputs(path: Path, arrays: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(output_names, session.run(output_names, arrays)))


def check_export_request(kind: str, precision: str, calibration: str | Path | None) -> None:
    """One-line errors for a backend/precision/calibration combination that cannot be exported."""
    if kind not in KINDS:
        raise InputError(f"--backend {kind!r}: expected one of {', '.join(KINDS)}")
    if precision not in EXPORT_PRECISIONS[kind]:
        raise InputError(f"--precision {precision!r}: expected one of {', '.join(EXPORT_PRECISIONS[kind])}")
    if calibration is not None and precision != "int8":
        raise InputError(f"--calibration applies to --precision int8 only, not {precision}")
    if calibration is not None and not Path(calibration).is_file():
        raise InputError(f"--calibration {calibration}: no such manifest file")
    if kind == "tensorrt":
        from mmfusion.runtime.tensorrt_backend import require_tensorrt

        require_tensorrt()
        if precision == "int8" and calibration is None:
            raise InputError("--precision int8 with --backend tensorrt needs --calibration MANIFEST.csv")


def _refresh_model_manifest(model_dir: Path, added: Path) -> None:
    """A model folder with its own sha256 manifest gets the new export's files added (after checking the rest)."""
    from mmfusion.repository.manifests import MANIFEST_NAME, write_manifest

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
    from mmfusion.pipeline import Pipeline
    from mmfusion.runtime import quantize

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
    destination = export_dir(pipeline.model_dir, pipeline.version, kind)
    staging = staging_dir(destination)
    try:
        graphs = {}
        steps = tqdm(keys, desc=f"export {pipeline.name} {kind} {precision}", unit="graph", disable=not progress)
        for key in steps:
            graphs[key] = _export_group(pipeline, graph, key, kind, precision, rows, batch_sizes, staging)
        info = ExportInfo(
            model=pipeline.name,
            version=pipeline.version,
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
    pipeline.close()
    _refresh_model_manifest(pipeline.model_dir, destination)
    return destination


def _export_group(pipeline, graph, key, kind, precision, rows, batch_sizes, staging: Path) -> ExportedGraph:
    """One group: trace FP32, check it against torch, then quantise/convert or build a TensorRT engine."""
    from mmfusion.runtime import quantize

    file_name = f"{key}.onnx"
    with tempfile.TemporaryDirectory(prefix="mmfusion-export-") as work:
        fp32_path = Path(work) / file_name
        inputs, outputs = export_group_onnx(graph, key, fp32_path)
        check = example_arrays(graph, key, batch=3, variant=2)
        reference = _run_graph(graph, check)
        output_names = [spec.name for spec in outputs]
        parity = compare_outputs(reference, _onnx_outputs(fp32_path, check, output_names))
        if not within_fp32_parity(parity):
            raise ConfigError(
                f"{pipeline.name}: the exported {key} graph does not match torch (max relative difference "
                f"{parity['max_relative_difference']:.2e}, min cosine {parity['min_cosine']:.6f}); not written"
            )
        target = staging / file_name
        quantization, mixed, bits = None, {}, None
        if kind == "tensorrt" or precision == "fp32":
            shutil.copyfile(fp32_path, target)
        elif precision == "fp16":
            quantize.convert_fp16_onnx(fp32_path, target)
        elif rows is not None and key == "image":
            batches = list(quantize.calibration_batches(pipeline, rows))
            mixed = quantize.quantize_static_onnx(fp32_path, target, batches)
            quantization, bits = "static-qdq", mixed["weight_bits"]
        else:
            quantization, bits = "dynamic", quantize.quantize_dynamic_onnx(fp32_path, target)
        if quantization is not None:
            parity = compare_outputs(reference, _onnx_outputs(target, check, output_names))
            if mixed:
                parity["calibration_output_cosine"] = mixed["output_cosine"]
                parity["int8_only_calibration_output_cosine"] = mixed["int8_only_output_cosine"]
    engine = {}
    if kind == "tensorrt":
        from mmfusion.runtime.tensorrt_backend import build_engine

        calibration = list(quantize.calibration_batches(pipeline, rows)) if rows is not None else None
        limits = _dim_limits(graph, inputs)
        engine = build_engine(target, staging / f"{key}.engine", precision, batch_sizes, inputs, calibration, limits)
    wide = list(mixed.get("int16_weights", []))
    return ExportedGraph(key, file_name, inputs, outputs, quantization, parity, engine, wide, bits)


def _dim_limits(graph: PipelineGraph, inputs: list[TensorSpec]) -> dict[str, int]:
    """Largest size of each input's dynamic non-batch dimensions: the encoder's max_length where it has one."""
    limits = {}
    for spec in inputs:
        if DYNAMIC in spec.shape[1:]:
            encoder = graph.encoders[spec.name.split(".", 1)[0]]
            max_length = getattr(encoder.params, "max_length", None)
            if max_length is not None:
                limits[spec.name] = int(max_length)
    return limits
