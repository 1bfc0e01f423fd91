"""INT8 on CPU with ONNX Runtime: dynamic quantisation, and static QDQ calibrated on an image manifest."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mmfusion.security.integrity import sha256_file
from mmfusion.types import InputError, Inputs, Modality

DYNAMIC_OPS = ["MatMul", "Gemm"]
"""Dynamic INT8 pays off on matrix products; ConvInteger is slower than FP32 convolution in ORT on CPU."""
CALIBRATION_BATCH = 8
MAX_CALIBRATION_ITEMS = 256
LOG = logging.getLogger(__name__)


def _preprocessed(source: Path, work: Path) -> Path:
    """ORT's recommended pre-quantisation pass (shape inference, graph fusions); the source when it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = work / "pre.onnx"
    try:
        quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
    except Exception as error:  # the pass is an optimisation; quantising the plain graph is still correct
        LOG.warning("pre-quantisation pass failed on %s (%s); quantising the graph as exported", source, error)
        return source
    return target


def quantize_dynamic_onnx(source: Path, destination: Path) -> int:
    """INT8 weights, activations quantised per batch at run time (no calibration data needed); the weight bits."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    bits = weight_bits()
    with tempfile.TemporaryDirectory(prefix="mmfusion-quant-") as work:
        prepared = _preprocessed(source, Path(work))
        quantize_dynamic(
            str(prepared),
            str(destination),
            op_types_to_quantize=DYNAMIC_OPS,
            per_channel=True,
            reduce_range=bits == 7,
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},
        )
    return bits


FIDELITY_TARGET = 0.997
"""Static INT8 must keep the mean per-row cosine of every output against FP32 at or above this."""
MAX_WIDE_FRACTION = 0.5
"""At most this share of the weight tensors may be kept at 16 bits to reach FIDELITY_TARGET."""
SCAN_ITEMS = 4
"""Calibration items the fidelity checks and the sensitivity scan run on (rows are patches or tokens)."""


def quantize_static_onnx(source: Path, destination: Path, batches: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """INT8 QDQ graph (per-channel weights, uint8 activations) with ranges calibrated on `batches`.

    When full INT8 falls below FIDELITY_TARGET on the calibration inputs (EfficientNet's first depthwise
    convolution needs more than 8 bits of weight), the weights whose rounding alone costs most are kept at
    16 bits: the fewest of them, worst first, that reach the target (bisection, at most MAX_WIDE_FRACTION).
    Returns the fidelity and the 16-bit weights.
    """
    with tempfile.TemporaryDirectory(prefix="mmfusion-quant-") as folder:
        work = Path(folder)
        prepared = _preprocessed(source, work)
        scan = [{name: array[:SCAN_ITEMS] for name, array in batches[0].items()}]
        reference = _outputs(prepared, scan)
        _quantize_qdq(prepared, destination, batches)
        int8_fidelity = fidelity = output_cosine(reference, _outputs(destination, scan))
        wide: list[str] = []
        if fidelity < FIDELITY_TARGET:
            ranking = _weight_sensitivity(prepared, scan, reference)
            wide = _fewest_wide_weights(prepared, scan, reference, ranking, work / "candidate.onnx")
            cap = max(1, int(len(ranking) * MAX_WIDE_FRACTION))
            while True:  # ranges calibrated on every batch differ from the scan's: widen until it holds
                _quantize_qdq(prepared, destination, batches, wide)
                fidelity = output_cosine(reference, _outputs(destination, scan))
                if fidelity >= FIDELITY_TARGET or len(wide) >= cap:
                    break
                wide = ranking[: len(wide) + 1]
    LOG.info("static INT8: output cosine %.5f (all INT8 %.5f), 16-bit weights %s", fidelity, int8_fidelity, wide)
    if fidelity < FIDELITY_TARGET:
        LOG.warning(
            "static INT8 reaches output cosine %.5f against FP32, short of %.3f with %d weights at 16 bits "
            "(the cap); check the parity figures in export.json before serving it",
            fidelity, FIDELITY_TARGET, len(wide),
        )  # fmt: skip
    return {
        "output_cosine": fidelity,
        "int8_only_output_cosine": int8_fidelity,
        "int16_weights": wide,
        "weight_bits": weight_bits(),
    }


def _fewest_wide_weights(
    source: Path, scan: list[dict[str, np.ndarray]], reference: list[list[np.ndarray]], ranking: list[str], out: Path
) -> list[str]:
    """The shortest head of `ranking` kept at 16 bits that reaches FIDELITY_TARGET (bisection; capped)."""
    low, high = 1, max(1, int(len(ranking) * MAX_WIDE_FRACTION))
    _quantize_qdq(source, out, scan, ranking[:high])
    if output_cosine(reference, _outputs(out, scan)) < FIDELITY_TARGET:
        return ranking[:high]  # the cap: as close as allowed; export.json records the cosine reached
    while low < high:
        middle = (low + high) // 2
        _quantize_qdq(source, out, scan, ranking[:middle])
        if output_cosine(reference, _outputs(out, scan)) >= FIDELITY_TARGET:
            high = middle
        else:
            low = middle + 1
    return ranking[:high]


def _quantize_qdq(
    source: Path,
    destination: Path,
    batches: list[dict[str, np.ndarray]],
    wide_weights: tuple[str, ...] | list[str] = (),
    fp32_nodes: tuple[str, ...] | list[str] = (),
) -> None:
    """One QDQ quantisation of `source`: INT8 except `wide_weights` (16-bit) and the nodes `fp32_nodes` (left FP32)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class BatchReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    overrides = {name: [{"quant_type": QuantType.QInt16, "symmetric": True}] for name in wide_weights}
    quantize_static(
        str(source),
        str(destination),
        BatchReader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=weight_bits() == 7,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=list(fp32_nodes),
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, "TensorQuantOverrides": overrides},
    )


def graph_layers(path: Path, fp32_outputs: bool = False) -> tuple[list[str], list[str], list[str]]:
    """Names of the weight layers (Conv/MatMul/Gemm with a constant weight), of the tail and of the tail's weight
    layers, in graph order.

    The tail is every node after the last convolution: pooling, fusion and heads. It stays FP32: it costs
    little, and its ranges calibrated on a few images saturate on others (pcb-inspect's cosine head scored its
    own example boards 0.5, where FP32 gives 0.73 and 0.23). Weight layers after the last convolution are listed
    in neither. `fp32_outputs`: the output layers (`output_layers`) join the tail and are the third list.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    nodes, constants = list(model.graph.node), {tensor.name for tensor in model.graph.initializer}
    convolutions = [index for index, node in enumerate(nodes) if node.op_type == "Conv"]
    end = convolutions[-1] + 1 if convolutions else len(nodes)
    outputs = output_layers(model) if fp32_outputs else set()
    head = [node for node in nodes[:end] if node.name in outputs]
    layers = [node.name for node in nodes[:end] if _weight_layer(node, constants) and node.name not in outputs]
    tail = [node.name for node in head + nodes[end:] if node.name]
    return [name for name in layers if name], tail, [node.name for node in head if _weight_layer(node, constants)]


def _weight_layer(node: Any, constants: set[str]) -> bool:
    """A Conv/MatMul/Gemm whose weight is a constant of the graph (what INT8 quantises)."""
    return node.op_type in ("Conv", "MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in constants


def output_layers(model: Any) -> set[str]:
    """The output layers: each graph output's last weight layers and the nodes between them and the output.

    Dense detection maps leave the graph straight from a convolution (heatmap logits through a sigmoid, box
    geometry); INT8 would hand them on in 256 steps of the calibrated range, so peaks near the score threshold
    move. Kept FP32 they cost one dequantisation of the last feature map (pcb-template: unseen-design F 0.9698 ->
    0.9704 on INT8, FP32 0.9705; docs/runtimes.md). Nodes before the first of these weight layers (shape
    arithmetic reaching back to the inputs) are not included.
    """
    nodes, constants = list(model.graph.node), {tensor.name for tensor in model.graph.initializer}
    producer = {name: index for index, node in enumerate(nodes) for name in node.output}
    visited: set[int] = set()
    weights: set[int] = set()
    pending = [output.name for output in model.graph.output]
    while pending:
        index = producer.get(pending.pop())
        if index is None or index in visited:
            continue
        visited.add(index)
        if _weight_layer(nodes[index], constants):
            weights.add(index)
        else:
            pending.extend(nodes[index].input)
    first = min(weights, default=len(nodes))
    return {nodes[index].name for index in visited if index >= first}


def quantize_static_prefix(
    source: Path,
    destination: Path,
    batches: list[dict[str, np.ndarray]],
    min_fp32_layers: int = 0,
    fidelity_target: float | None = FIDELITY_TARGET,
    fp32_outputs: bool = False,
) -> dict[str, Any]:
    """INT8 QDQ graph whose first weight layers and tail stay FP32: the fewest layers (at least `min_fp32_layers`)
    that reach `fidelity_target` (None: `min_fp32_layers`, for callers that judge the graph by its decisions).

    For speed (what `backend: auto` picks INT8 for). 16-bit weights (`quantize_static_onnx`) have no integer
    kernel in ONNX Runtime's CPU provider: such a convolution is dequantised and run in FP32, and every switch
    between INT8 and float costs a Quantize/Dequantize pair, so EfficientNet-Lite0 with six 16-bit weights ran
    no faster than FP32. Its sensitive weights are its first layers (stem, blocks 0 and 1); keeping a prefix
    of the graph in FP32 leaves one switch in and one out (the tail, `graph_layers`) and the rest on the int8
    kernels (about 2x FP32 with AVX-512 VNNI). The prefix length is found by bisection on `batches` (fidelity
    grows with it), capped at MAX_WIDE_FRACTION of the layers (`max_fp32_layers`). `fp32_outputs`: the output
    layers stay FP32 too (`output_layers`; for dense maps).
    """
    with tempfile.TemporaryDirectory(prefix="mmfusion-quant-") as folder:
        work = Path(folder)
        prepared = _preprocessed(source, work)
        reference = _outputs(prepared, batches)
        layers, tail, output_weights = graph_layers(prepared, fp32_outputs)
        most = max_fp32_layers(len(layers))

        def fidelity_with(count: int, path: Path) -> float:
            _quantize_qdq(prepared, path, batches, fp32_nodes=layers[:count] + tail)
            return output_cosine(reference, _outputs(path, batches))

        int8_fidelity = fidelity_with(0, destination)
        kept = min(min_fp32_layers, most)
        fidelity = fidelity_with(kept, destination) if kept else int8_fidelity
        if fidelity_target is not None and fidelity < fidelity_target and kept < most:
            low, high = kept + 1, most
            candidate = work / "candidate.onnx"
            if fidelity_with(high, candidate) >= fidelity_target:
                while low < high:
                    middle = (low + high) // 2
                    if fidelity_with(middle, candidate) >= fidelity_target:
                        high = middle
                    else:
                        low = middle + 1
            kept = high
            fidelity = fidelity_with(kept, destination)
    LOG.info("static INT8: output cosine %.5f (all INT8 %.5f), first %d of %d weight layers and %d tail nodes FP32",
             fidelity, int8_fidelity, kept, len(layers), len(tail))  # fmt: skip
    return {
        "output_cosine": fidelity,
        "int8_only_output_cosine": int8_fidelity,
        "fp32_layers": layers[:kept],
        "weight_layers": len(layers),
        "fp32_tail_nodes": len(tail),
        "fp32_output_layers": output_weights,
        "weight_bits": weight_bits(),
    }


def max_fp32_layers(weight_layers: int) -> int:
    """The most first weight layers `quantize_static_prefix` keeps FP32: MAX_WIDE_FRACTION of them, at least 1."""
    return max(1, int(weight_layers * MAX_WIDE_FRACTION)) if weight_layers else 0


def _weight_sensitivity(
    source: Path, scan: list[dict[str, np.ndarray]], reference: list[list[np.ndarray]]
) -> list[str]:
    """Weights of Conv/MatMul/Gemm nodes, worst first: output cosine with that weight alone rounded as INT8 would.

    Fake quantisation (per output channel, symmetric, weight_bits()) in an FP32 graph: no calibration
    per candidate, so the scan costs one session per weight.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    initialisers = {tensor.name: tensor for tensor in model.graph.initializer}
    constants, weights = set(initialisers), []
    for node in model.graph.node:
        if _weight_layer(node, constants):
            # per-channel axis as ORT quantises it: output channels (Conv: 0; MatMul/Gemm B: last, or 0 if transB)
            trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
            axis = 0 if node.op_type == "Conv" or trans_b else -1
            if node.input[1] not in (name for name, _ in weights):
                weights.append((node.input[1], axis))
    costs, bits = [], weight_bits()
    for name, axis in weights:
        tensor = initialisers[name]
        original = numpy_helper.to_array(tensor)
        tensor.CopyFrom(numpy_helper.from_array(_rounded_like_int8(original, axis, bits), name))
        costs.append((output_cosine(reference, _outputs_of(model.SerializeToString(), scan)), name))
        tensor.CopyFrom(numpy_helper.from_array(original, name))
    return [name for _, name in sorted(costs)]


def _rounded_like_int8(weight: np.ndarray, axis: int, bits: int = 7) -> np.ndarray:
    """`weight` quantised symmetrically per channel along `axis` to the `bits` grid (7: ORT's reduce_range) and back."""
    levels = 64 if bits == 7 else 127  # ORT: [-64, 64] with reduce_range, else [-127, 127]
    moved = np.moveaxis(weight.astype(np.float32), axis, 0)  # (C, ...)
    scale = np.abs(moved).reshape(moved.shape[0], -1).max(axis=1) / levels  # (C,)
    scale = np.where(scale > 0, scale, 1.0).reshape(-1, *([1] * (moved.ndim - 1)))
    return np.moveaxis(np.clip(np.round(moved / scale), -levels, levels) * scale, 0, axis).astype(weight.dtype)


def _outputs(path: Path, batches: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Every output of the ONNX graph at `path` for each batch (CPU execution provider)."""
    return _outputs_of(str(path), batches)


def _outputs_of(model: str | bytes, batches: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Every output of an ONNX graph (a path or serialised bytes) for each batch."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [spec.name for spec in session.get_inputs()]
    return [session.run(None, {name: batch[name] for name in names}) for batch in batches]


def output_cosine(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
    """Mean cosine over the rows (last axis) of every output, the lowest over outputs; 1.0 = identical."""
    from mmfusion.runtime.parity import row_cosines

    lowest = 1.0
    for index in range(len(reference[0])):
        expected = np.concatenate([r[index].reshape(-1, r[index].shape[-1]) for r in reference])  # (rows, D)
        got = np.concatenate([c[index].reshape(-1, c[index].shape[-1]) for c in candidate])  # (rows, D)
        lowest = min(lowest, float(row_cosines(expected, got).mean()))
    return lowest


INT8_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> set[str]:
    """This CPU's feature flags from /proc/cpuinfo (empty where there is none); tests fake CPUs by replacing it."""
    for line in CPUINFO.read_text().splitlines() if CPUINFO.is_file() else []:
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_int8_dot_product() -> list[str]:
    """This CPU's int8 dot-product instruction sets; without one, INT8 GEMM gains little over FP32 on x86."""
    return sorted(cpu_flags() & INT8_DOT_PRODUCT_FLAGS)


def weight_bits() -> int:
    """INT8 weight bits for this CPU: 8 with an int8 dot-product instruction, else 7 (ORT's reduce_range).

    Without VNNI/AMX, x86 multiplies uint8 x int8 with vpmaddubsw, whose int16 pair sums saturate; 7-bit
    weights keep them in range (tiny test model: cosine 0.968 -> 0.996). VNNI accumulates in int32.
    """
    return 8 if cpu_int8_dot_product() else 7


def convert_fp16_onnx(source: Path, destination: Path) -> None:
    """FP16 weights and compute with FP32 inputs/outputs (for CUDA execution providers)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(destination))


def load_calibration_rows(manifest: str | Path) -> list[Any]:
    """Rows of an image manifest (every bad row reported by load_manifest); at most MAX_CALIBRATION_ITEMS."""
    from mmfusion.data.manifest import load_manifest

    rows = load_manifest(manifest)
    if not rows:
        raise InputError(f"--calibration {manifest}: the manifest has no rows; expected images to calibrate on")
    return rows[:MAX_CALIBRATION_ITEMS]


def calibration_hash(manifest: str | Path, rows: list[Any]) -> str:
    """sha256 over the manifest file and every image/reference file it names (the calibration set's identity)."""
    digest = hashlib.sha256(sha256_file(manifest).encode())
    for row in rows:
        for path in (row.image, row.reference):
            if path is not None:
                digest.update(f"{Path(path).name}:{sha256_file(path)}".encode())
    return digest.hexdigest()


def calibration_batches(
    pipeline: Any, rows: list[Any], batch: int = CALIBRATION_BATCH
) -> Iterator[dict[str, np.ndarray]]:
    """The image graph's inputs for the manifest's images (and golden templates), made by the pipeline."""
    uses_reference = pipeline.encoder(Modality.IMAGE).uses_reference
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        items = [Inputs(image=r.read_image(), reference=r.read_reference() if uses_reference else None) for r in chunk]
        yield pipeline.preprocess(items)
