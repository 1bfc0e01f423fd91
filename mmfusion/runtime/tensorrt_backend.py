"""TensorRT backend: engines built from the exported ONNX (FP32/FP16/INT8), tied to the GPU and TensorRT version.

`tensorrt` is imported lazily (only `load` and `build_engine` need it), so this module imports everywhere
and a machine without TensorRT gets one clear message. Device memory is managed with torch CUDA tensors
and work runs on a torch CUDA stream (`execute_async_v3`), so no other CUDA binding is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfusion.config import ConfigError, RuntimeSpec
from mmfusion.graph import PipelineGraph
from mmfusion.registry import BACKENDS
from mmfusion.runtime.export_backend import ExportBackend
from mmfusion.runtime.exported import ExportInfo, OpenedExport
from mmfusion.runtime.specs import check_inputs, group_of_inputs
from mmfusion.runtime.tensors import DYNAMIC, TensorSpec
from mmfusion.types import InputError

WORKSPACE_BYTES = 4 << 30
DEFAULT_DIM_LIMIT = 512
"""Largest size of a dynamic non-batch dimension (e.g. tokens) when the encoder does not say (max_length)."""
Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def require_tensorrt() -> Any:
    """The tensorrt module, or a ConfigError that says how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise ConfigError(
            "TensorRT is not installed: on a machine with an NVIDIA GPU, pip install 'mmfusion[tensorrt]' "
            "(tensorrt>=10); or use --backend onnx"
        ) from None
    return tensorrt


def gpu_identity() -> dict[str, str]:
    """Name and compute capability of the current CUDA device (what an engine is only valid for)."""
    if not torch.cuda.is_available():
        raise ConfigError("TensorRT needs a CUDA GPU, and torch sees none on this machine")
    major, minor = torch.cuda.get_device_capability()
    return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def check_engine_metadata(engine: dict[str, Any], machine: dict[str, str], where: str) -> None:
    """Refuse an engine built for another GPU or TensorRT version (TensorRT would reject or misbehave)."""
    for key, what in (("tensorrt", "TensorRT"), ("gpu", "GPU"), ("compute_capability", "compute capability")):
        if engine.get(key) != machine.get(key):
            raise ConfigError(
                f"{where}: engine built for {what} {engine.get(key)!r}, this machine has {machine.get(key)!r}; "
                "rebuild it here with `mmfusion export MODEL --backend tensorrt`"
            )


def profile_shapes(inputs: list[TensorSpec], batch_sizes: tuple[int, ...], dim_limits: dict[str, int]) -> list[Shapes]:
    """One optimisation profile per batch size: batches (previous + 1 .. size), tuned for `size`.

    Other dynamic dimensions (token counts) range from 1 to the input's limit, tuned for half of it.
    """
    profiles = []
    previous = 0
    for size in batch_sizes:
        shapes: Shapes = {}
        for spec in inputs:
            limit = dim_limits.get(spec.name, DEFAULT_DIM_LIMIT)
            low = [previous + 1] + [1 if d == DYNAMIC else d for d in spec.shape[1:]]
            best = [size] + [max(1, limit // 2) if d == DYNAMIC else d for d in spec.shape[1:]]
            high = [size] + [limit if d == DYNAMIC else d for d in spec.shape[1:]]
            shapes[spec.name] = (tuple(low), tuple(best), tuple(high))
        profiles.append(shapes)
        previous = size
    return profiles


def choose_profile(profiles: list[Shapes], batch: int) -> int:
    """Index of the profile whose batch range holds `batch`; an InputError past the largest."""
    for index, shapes in enumerate(profiles):
        low, _, high = next(iter(shapes.values()))
        if low[0] <= batch <= high[0]:
            return index
    largest = max(next(iter(s.values()))[2][0] for s in profiles)
    raise InputError(f"batch of {batch}: the TensorRT engine takes at most {largest}; re-export with --batch-sizes")


def _full_batches(batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Calibration batches of one size (the calibrator has a fixed batch size): a short last batch is dropped."""
    size = len(next(iter(batches[0].values())))
    full = [b for b in batches if len(next(iter(b.values()))) == size]
    return full or batches[:1]


def _calibrator(trt: Any, batches: list[dict[str, np.ndarray]], cache: Path) -> Any:
    """An entropy INT8 calibrator feeding `batches` from GPU memory and keeping its cache in `cache`."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = iter(batches)
            self.size = len(next(iter(batches[0].values())))
            self.alive: list[torch.Tensor] = []

        def get_batch_size(self) -> int:
            return self.size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            self.alive = [torch.from_numpy(np.ascontiguousarray(batch[name])).cuda() for name in names]
            return [int(tensor.data_ptr()) for tensor in self.alive]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            cache.write_bytes(bytes(data))

    return Calibrator()


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    precision: str,
    batch_sizes: tuple[int, ...],
    inputs: list[TensorSpec],
    calibration: list[dict[str, np.ndarray]] | None = None,
    dim_limits: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Build and serialise an engine from an ONNX file; returns its metadata (GPU, TensorRT, profiles)."""
    trt = require_tensorrt()
    machine = gpu_identity()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        problems = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConfigError(f"{onnx_path}: TensorRT cannot parse the ONNX graph: {problems}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    names = {spec.name for spec in inputs}
    int8 = precision == "int8" and calibration is not None and names <= set(calibration[0])
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # INT8 layers without an INT8 kernel fall back to FP16
    profiles = profile_shapes(inputs, batch_sizes, dim_limits or {})
    built = []
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (low, best, high) in shapes.items():
            profile.set_shape(name, low, best, high)
        config.add_optimization_profile(profile)
        built.append(profile)
    cache = engine_path.with_suffix(".calib")
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _calibrator(trt, _full_batches(calibration), cache)
        config.set_calibration_profile(built[0])
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConfigError(f"{onnx_path}: TensorRT could not build an engine (see the TensorRT log above)")
    engine_path.write_bytes(bytes(memoryview(serialized)))
    return {
        "file": engine_path.name,
        "precision": "int8" if int8 else ("fp16" if precision != "fp32" else "fp32"),
        "calibration_cache": cache.name if int8 and cache.is_file() else None,
        "tensorrt": trt.__version__,
        **machine,
        "profiles": [{name: [list(s) for s in shape] for name, shape in p.items()} for p in profiles],
    }


def _profiles_from_metadata(engine: dict[str, Any]) -> list[Shapes]:
    return [
        {name: tuple(tuple(s) for s in shape) for name, shape in profile.items()}  # type: ignore[misc]
        for profile in engine["profiles"]
    ]


@BACKENDS.register("tensorrt")
class TensorRTBackend(ExportBackend):
    """TensorRT engines from `mmfusion export --backend tensorrt`, one execution context per optimisation profile."""

    def __init__(self, runtime: RuntimeSpec | None = None) -> None:
        super().__init__(runtime or RuntimeSpec(backend="tensorrt", device="cuda"))
        self.info: ExportInfo | None = None
        self.engines: dict[str, Any] = {}
        self.contexts: dict[str, list[Any]] = {}
        self.profiles: dict[str, list[Shapes]] = {}
        self.stream: torch.cuda.Stream | None = None

    def load(self, graph: PipelineGraph | None, export: OpenedExport | None = None) -> None:
        trt = require_tensorrt()
        machine = {**gpu_identity(), "tensorrt": trt.__version__}
        if export is None:
            raise ConfigError("backend tensorrt runs an exported model; none was given (run `mmfusion export`)")
        folder, self.info = export.folder, export.info
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.stream = torch.cuda.Stream()
        for group, graph_info in self.info.graphs.items():
            check_engine_metadata(graph_info.engine, machine, str(folder / graph_info.engine["file"]))
            engine = runtime.deserialize_cuda_engine((folder / graph_info.engine["file"]).read_bytes())
            if engine is None:
                raise ConfigError(f"{folder / graph_info.engine['file']}: TensorRT could not load the engine")
            self.engines[group] = engine
            self.profiles[group] = _profiles_from_metadata(graph_info.engine)
            contexts = []
            for index in range(len(self.profiles[group])):
                context = engine.create_execution_context()
                context.set_optimization_profile_async(index, self.stream.cuda_stream)
                contexts.append(context)
            self.contexts[group] = contexts
        self.stream.synchronize()

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorrt as trt

        if self.info is None or self.stream is None:
            raise RuntimeError("TensorRTBackend.run called before load")
        group = group_of_inputs(set(inputs))
        if group not in self.info.graphs:
            raise InputError(f"{self.info.model}: the tensorrt export has no graph for {group}")
        graph_info = self.info.graphs[group]
        feed = check_inputs(inputs, graph_info.inputs, f"{self.info.model} {group} engine")
        batch = len(next(iter(feed.values())))
        context = self.contexts[group][choose_profile(self.profiles[group], batch)]
        engine = self.engines[group]
        outputs: dict[str, torch.Tensor] = {}
        with torch.cuda.stream(self.stream):
            alive = []
            for name, array in feed.items():
                tensor = torch.from_numpy(array).to("cuda", non_blocking=True)
                alive.append(tensor)
                context.set_input_shape(name, tuple(tensor.shape))
                context.set_tensor_address(name, tensor.data_ptr())
            for spec in graph_info.outputs:
                shape = tuple(context.get_tensor_shape(spec.name))
                dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(spec.name)))).dtype
                outputs[spec.name] = torch.empty(shape, dtype=dtype, device="cuda")
                context.set_tensor_address(spec.name, outputs[spec.name].data_ptr())
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{self.info.model}: TensorRT execution failed for a batch of {batch}")
        self.stream.synchronize()
        return {name: (t.float() if t.is_floating_point() else t).cpu().numpy() for name, t in outputs.items()}

    def close(self) -> None:
        self.contexts = {}
        self.engines = {}
        self.stream = None
