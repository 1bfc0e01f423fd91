"""ONNX Runtime backend: the model's exported graphs (versions/<n>/onnx/), one session per modality group."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mmfusion.config import ConfigError, RuntimeSpec
from mmfusion.graph import PipelineGraph
from mmfusion.registry import BACKENDS
from mmfusion.runtime.export_backend import ExportBackend
from mmfusion.runtime.exported import ExportInfo, OpenedExport
from mmfusion.runtime.specs import check_inputs, group_of_inputs
from mmfusion.runtime.threads import cores_shared
from mmfusion.types import InputError

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU_PROVIDER = "CPUExecutionProvider"
LOG = logging.getLogger(__name__)


def choose_providers(runtime: RuntimeSpec, available: list[str]) -> list[str]:
    """Execution providers in order: the configured list, else CUDA/TensorRT for device cuda, then CPU."""
    if runtime.providers is not None:
        missing = [p for p in runtime.providers if p not in available]
        if missing:
            raise ConfigError(
                f"runtime.providers: {', '.join(missing)} not in this onnxruntime; available: {', '.join(available)}"
            )
        return list(runtime.providers)
    if runtime.device == "cpu":
        return [CPU_PROVIDER]
    gpu = [p for p in GPU_PROVIDERS if p in available]
    if not gpu:
        raise ConfigError(
            f"runtime.device: cuda, but this onnxruntime has only {', '.join(available)}; "
            "install onnxruntime-gpu or use device: cpu"
        )
    return [*gpu, CPU_PROVIDER]


def session_options(runtime: RuntimeSpec):
    """Graph optimisations on, thread counts from the runtime block (None: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if runtime.threads is not None:
        options.intra_op_num_threads = runtime.threads
    if cores_shared():  # idle workers spinning would take the cores the frames decode on
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if runtime.inter_op_threads is not None:
        options.inter_op_num_threads = runtime.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    options.log_severity_level = 3
    return options


def warn_if_weights_may_saturate(info: ExportInfo, folder: Path) -> bool:
    """Warn (and say True) when 8-bit INT8 weights meet a CPU whose uint8 x int8 products can saturate."""
    from mmfusion.runtime.quantize import cpu_int8_dot_product

    full = [group for group, graph in info.graphs.items() if graph.weight_bits == 8]
    if not full or cpu_int8_dot_product():
        return False
    LOG.warning(
        "%s: graphs %s have 8-bit INT8 weights (exported on a CPU with VNNI/AMX); this CPU has no int8 "
        "dot-product instructions, so its uint8 x int8 products can saturate and move scores: re-export here "
        "(`mmfusion export %s --precision int8`) for 7-bit weights",
        folder, ", ".join(full), info.model,
    )  # fmt: skip
    return True


@BACKENDS.register("onnxruntime")
class OnnxRuntimeBackend(ExportBackend):
    """ONNX Runtime on an exported model: CPU, or the CUDA / TensorRT providers when the package has them."""

    def __init__(self, runtime: RuntimeSpec | None = None) -> None:
        super().__init__(runtime)
        self.sessions: dict[str, object] = {}
        self.info: ExportInfo | None = None
        self.folder: Path | None = None
        self.providers: list[str] = []

    def load(self, graph: PipelineGraph | None, export: OpenedExport | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError(
                "backend onnxruntime needs the onnxruntime package: pip install 'mmfusion[onnx]'"
            ) from None
        if export is None:
            raise ConfigError("backend onnxruntime runs an exported model; none was given (run `mmfusion export`)")
        self.folder, self.info = export.folder, export.info
        warn_if_weights_may_saturate(self.info, self.folder)
        self.providers = choose_providers(self.runtime, ort.get_available_providers())
        options = session_options(self.runtime)
        self.sessions = {
            group: ort.InferenceSession(str(self.folder / graph_info.file), options, providers=self.providers)
            for group, graph_info in self.info.graphs.items()
        }

    def _graph_for(self, inputs: dict[str, np.ndarray]):
        if self.info is None:
            raise RuntimeError("OnnxRuntimeBackend.run called before load")
        group = group_of_inputs(set(inputs))
        if group not in self.info.graphs:
            raise InputError(
                f"{self.info.model}: the {self.info.kind} export has graphs for {', '.join(self.info.graphs)}, "
                f"not for {group}; re-export with `--groups {group}` added"
            )
        return group, self.info.graphs[group]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        group, graph_info = self._graph_for(inputs)
        feed = check_inputs(inputs, graph_info.inputs, f"{self.info.model} {group} graph")
        names = [spec.name for spec in graph_info.outputs]
        return dict(zip(names, self.sessions[group].run(names, feed)))

    def describe(self) -> str:
        precision = self.info.precision if self.info else self.runtime.precision or "?"
        return f"onnxruntime {precision} ({', '.join(self.providers)}) from {self.folder}"

    def close(self) -> None:
        self.sessions = {}
