"""`backend: auto`: ONNX Runtime on the model's export (its folder's, else one built once into the cache), else torch.

The cached export lives in <export cache>/<model>/<fingerprint>/onnx/ (`export_cache`), outside the signed model
folder; the fingerprint covers the folder's files, the version, the graph's weights, inputs and code, and the exporter
versions, so a changed model (or a changed encoder or head) gets a new export. It is verified against its own
sha256 manifest on every load and rebuilt when it fails.
On CPUs with int8 dot products, an INT8 export beside it (onnx-int8/) runs instead where its check passes
(`auto_int8`: verdicts as FP32 torch on the model's calibration images, and faster here).
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from mmfusion.config import AUTO_BACKEND, ConfigError, RuntimeSpec
from mmfusion.encoders.embedded import cache_root
from mmfusion.graph import PipelineGraph
from mmfusion.registry import BACKENDS
from mmfusion.repository.auto_int8 import forced_fp32, int8_decision
from mmfusion.repository.export_build import build_export
from mmfusion.repository.exports import export_dir, load_backend
from mmfusion.repository.versions import VERSIONS_DIR
from mmfusion.runtime.base import Backend
from mmfusion.runtime.exported import EXPORT_FILE, ExportInfo, OpenedExport, exporter_versions, read_export
from mmfusion.runtime.specs import default_groups
from mmfusion.security.integrity import MANIFEST_NAME, sha256_file
from mmfusion.types import Modality

AUTO = AUTO_BACKEND
EXPORT_CACHE_ENV = "MMFUSION_EXPORT_CACHE"
LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendChoice:
    """The backend `auto` settled on and why (what `mmfusion describe` prints)."""

    backend: Backend
    reason: str


def model_fingerprint(model_dir: Path, version: int, graph: PipelineGraph) -> str:
    """sha256 of the folder's files (as its manifest lists them), the version, the graph's tensors, input names and
    source code (the modules of its encoders, fusion and heads), and the exporters."""
    digest = hashlib.sha256(f"version {version}\n".encode())
    manifest = model_dir / MANIFEST_NAME
    if manifest.is_file():  # its file hashes only: re-signing the same files keeps the export
        digest.update(json.dumps(json.loads(manifest.read_text())["files"], sort_keys=True).encode())
    else:
        for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
            relative = path.relative_to(model_dir).as_posix()
            if not relative.startswith(f"{VERSIONS_DIR}/"):
                digest.update(f"{relative} {sha256_file(path)}\n".encode())
    for key, tensor in graph.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(graph.input_names()).encode())
    for source in _graph_sources(graph):
        digest.update(source.read_bytes())
    digest.update(json.dumps(exporter_versions(), sort_keys=True).encode())
    return digest.hexdigest()


def _graph_sources(graph: PipelineGraph) -> list[Path]:
    """The mmfusion source files that define the graph's modules (what its export is traced from)."""
    files = set()
    for module in graph.modules():
        for cls in type(module).__mro__:
            if cls.__module__.startswith("mmfusion."):
                source = inspect.getsourcefile(cls)
                if source:
                    files.add(Path(source))
    return sorted(files)


def export_cache() -> Path:
    """$MMFUSION_EXPORT_CACHE, else $MMFUSION_CACHE/exports (~/.cache/mmfusion/exports)."""
    given = os.environ.get(EXPORT_CACHE_ENV)
    return Path(given).expanduser() if given else cache_root() / "exports"


def cached_export_dir(name: str, fingerprint: str) -> Path:
    """<export cache>/<model>/<fingerprint>/onnx/."""
    return export_cache() / name / fingerprint[:32] / "onnx"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (a lock file), so two processes do not build the same export at once.

    No lock where the lock file cannot be written (a read-only export cache, as a container image carries):
    nothing can be built there either, so its exports are only read.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")
    except OSError as error:
        LOG.debug("export cache not writable, reading it unlocked: %s", error)
        handle = None
    if handle is None:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _onnx_runtime(runtime: RuntimeSpec) -> RuntimeSpec:
    """The auto block as an onnxruntime block (fp32 unless the block names a precision)."""
    return RuntimeSpec(
        backend="onnxruntime",
        precision=runtime.precision,
        device=runtime.device,
        threads=runtime.threads,
        inter_op_threads=runtime.inter_op_threads,
        recheck_margin=runtime.recheck_margin,
    )


def _torch_runtime(runtime: RuntimeSpec) -> RuntimeSpec:
    """The auto block as a torch block (the reference and fallback)."""
    return RuntimeSpec(
        backend="torch", device=runtime.device, threads=runtime.threads, inter_op_threads=runtime.inter_op_threads
    )


def _open_onnx(runtime: RuntimeSpec, graph: PipelineGraph, folder: Path, info: ExportInfo | None = None) -> Backend:
    """An onnxruntime backend on the export in `folder`, verified here unless `info` says it just was."""
    backend = BACKENDS.get("onnxruntime")(_onnx_runtime(runtime))
    backend.load(graph, OpenedExport(folder, info or read_export(folder)))
    return backend


def _fp32_export(name: str, version: int, graph: PipelineGraph, folder: Path) -> tuple[str, ExportInfo]:
    """The cached FP32 export in `folder`, verified (built when absent or refused); how it was had, its info."""
    if (folder / EXPORT_FILE).is_file():
        try:
            return "cached export", read_export(folder)
        except ConfigError as error:
            LOG.warning("%s: cached export refused, rebuilding it: %s", name, error)
            how = "rebuilt cached export (the old one failed verification)"
    else:
        how = "built and cached export"
    modalities = [Modality(key) for key in graph.encoders]
    build_export(name, version, graph, default_groups(modalities), folder)
    return how, read_export(folder)


def _cached(name: str, version: int, graph: PipelineGraph, model_dir: Path, runtime: RuntimeSpec) -> BackendChoice:
    """The cached export (built under a lock when absent or refused) on onnxruntime: INT8 where its check passed."""
    folder = cached_export_dir(name, model_fingerprint(model_dir, version, graph))
    fp32: list[tuple[str, ExportInfo]] = []

    def fp32_info() -> ExportInfo:  # verified (or built) only when needed: a chosen INT8 export does without it
        if not fp32:
            fp32.append(_fp32_export(name, version, graph, folder))
        return fp32[0][1]

    with _locked(folder.parent / ".lock"):
        int8 = int8_decision(model_dir, runtime, graph, name, folder, fp32_info)
        note = int8.note
        if int8.folder is not None:
            try:
                backend = _open_onnx(runtime, graph, int8.folder, int8.info)
                return BackendChoice(backend, f"{note}; cached export {int8.folder}")
            except Exception as error:  # noqa: BLE001 - the FP32 export is right there
                LOG.warning("%s: the INT8 export did not load, staying on FP32: %s", name, error)
                note = f"int8 not used: its export did not load ({type(error).__name__}: {error})"
        info = fp32_info()
        return BackendChoice(_open_onnx(runtime, graph, folder, info), f"{fp32[0][0]} {folder}; {note}")


def _onnx_choice(model_dir: Path, runtime: RuntimeSpec, version: int, graph: PipelineGraph, name: str) -> BackendChoice:
    """The model folder's own ONNX export when it has one, else the cached one."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError("onnxruntime is not installed (pip install 'mmfusion[onnx]')") from None
    own = export_dir(model_dir, version, "onnx")
    if (own / EXPORT_FILE).is_file():
        backend = _open_onnx(runtime, graph, own)
        if runtime.precision is None or backend.precision == runtime.precision:
            return BackendChoice(backend, f"model folder export {own}")
        backend.close()
    return _cached(name, version, graph, model_dir, runtime)


def load_auto_backend(
    model_dir: Path, runtime: RuntimeSpec, version: int, graph: PipelineGraph, name: str
) -> BackendChoice:
    """ONNX Runtime on the model's export when it can be had and passes its checks, else torch with the reason."""
    forced_fp32(runtime)  # a mistyped $MMFUSION_AUTO_PRECISION is the user's to fix, not a reason to fall back
    try:
        choice = _onnx_choice(model_dir, runtime, version, graph, name)
        return BackendChoice(choice.backend, f"onnxruntime {choice.backend.precision} (auto): {choice.reason}")
    except Exception as error:  # noqa: BLE001 - any failure of the fast path falls back to the reference
        LOG.warning("%s: backend auto falls back to torch: %s", name, error)
        backend = BACKENDS.get("torch")(_torch_runtime(runtime))
        backend.load(graph, None)
        return BackendChoice(backend, f"torch fp32 (auto fallback): {type(error).__name__}: {error}")


def choose_backend(
    model_dir: Path, runtime: RuntimeSpec, version: int, graph: PipelineGraph, name: str
) -> BackendChoice:
    """The runtime's backend: `auto` resolved as above, any other name loaded as it is named."""
    if runtime.backend == AUTO:
        return load_auto_backend(model_dir, runtime, version, graph, name)
    backend = load_backend(model_dir, runtime, version, graph)
    return BackendChoice(backend, f"{backend.describe()} (named by the runtime block or --backend)")
