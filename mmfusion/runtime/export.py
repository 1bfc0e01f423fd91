"""`mmfusion export`: the pipeline graph as ONNX (FP32, FP16, INT8) or TensorRT engines, per modality group."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmfusion.config import ConfigError
from mmfusion.graph import PipelineGraph
from mmfusion.runtime.exported import (
    KINDS,
    ExportedGraph,
)
from mmfusion.runtime.parity import compare_outputs, within_fp32_parity
from mmfusion.runtime.specs import example_arrays, specs_from_examples
from mmfusion.runtime.tensors import DYNAMIC, TensorSpec
from mmfusion.types import InputError

OPSET = 17
EXPORT_PRECISIONS = {"onnx": ("fp32", "fp16", "int8"), "tensorrt": ("fp32", "fp16", "int8")}
DEFAULT_BATCH_SIZES = (1, 8, 32)


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


def export_group(
    name: str,
    graph: PipelineGraph,
    key: str,
    kind: str,
    precision: str,
    calibration: list[dict[str, np.ndarray]] | None,
    batch_sizes: tuple[int, ...],
    staging: Path,
) -> ExportedGraph:
    """One group of model `name`: trace FP32, check it against torch, then quantise/convert or build an engine.

    `calibration`: the image graph's preprocessed inputs for static INT8 (None: dynamic INT8 / no calibration).
    """
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
                f"{name}: the exported {key} graph does not match torch (max relative difference "
                f"{parity['max_relative_difference']:.2e}, min cosine {parity['min_cosine']:.6f}); not written"
            )
        target = staging / file_name
        quantization, mixed, bits = None, {}, None
        if kind == "tensorrt" or precision == "fp32":
            shutil.copyfile(fp32_path, target)
        elif precision == "fp16":
            quantize.convert_fp16_onnx(fp32_path, target)
        elif calibration is not None and key == "image":
            mixed = quantize.quantize_static_onnx(fp32_path, target, calibration)
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
