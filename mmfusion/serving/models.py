"""The loaded-model manager: load, unload and look up Pipelines and their schedulers by name, thread-safe."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mmfusion.config import PipelineConfig
from mmfusion.pipeline import Pipeline
from mmfusion.repository.folder import (
    check_manifest_present,
    has_manifest,
    model_folders,
    models_root,
    read_config,
    resolve_model_dir,
)
from mmfusion.serving.batching import ModelRunner, Work, is_inference
from mmfusion.serving.memory import RELEASER
from mmfusion.serving.metrics import ServiceMetrics
from mmfusion.serving.policy import ServingOverrides, effective_batching
from mmfusion.serving.scheduler import BatchingConfig, BatchScheduler
from mmfusion.types import InputError

LOG = logging.getLogger(__name__)
StateListener = Callable[[str, bool], None]
DEFAULT_UNLOAD_GRACE_SECONDS = 10.0
MIN_GRACE_SECONDS = 0.05  # even a spent grace period lets a model's scheduler stop cleanly


class ListsModels(Exception):
    """An error whose message ends with model names; `text(visible)` cuts them to those a caller may see."""

    def __init__(self, lead: str, names: Iterable[str] = ()) -> None:
        self.lead, self.names = lead, tuple(names)
        super().__init__(self.text())

    def __reduce__(self):
        return type(self), (self.lead, self.names)

    def text(self, visible: Callable[[str], bool] | None = None) -> str:
        """The message, listing only the names `visible` allows (all without it), or 'none'."""
        shown = [name for name in self.names if visible is None or visible(name)]
        return f"{self.lead}{', '.join(shown) or 'none'}"


class ModelNotFound(LookupError):
    """A model name (or version) that is neither loaded nor in the model repository."""


class UnknownModel(ListsModels, ModelNotFound):
    """ModelNotFound that lists the models there are (the loaded or the available ones)."""


class MissingModelName(ListsModels, InputError):
    """An empty model name, with the models the request could have named."""


@dataclass(frozen=True)
class ModelEntry:
    """A model the server knows: its folder, its config and, when loaded, its Pipeline and scheduler.

    Everything that runs the pipeline goes through the scheduler, whose worker thread is the only
    thread that touches the pipeline (HF fast tokenizers are not safe across threads, and the
    backend already uses every core). With `serving.instances: N` the model is loaded N times and
    the scheduler has one worker per copy; `pipeline` is the first copy, `pipelines` all of them.
    """

    name: str
    model_dir: Path
    config: PipelineConfig
    pipeline: Pipeline | None = None
    backend: str = ""
    scheduler: BatchScheduler[Work, object] | None = None
    batching: BatchingConfig | None = None
    """The effective scheduler settings (flags, else the config's `serving:` block, else defaults)."""
    batching_sources: dict[str, str] | None = None
    pipelines: tuple[Pipeline, ...] = ()

    @property
    def version(self) -> str:
        return str(self.config.version)


class ModelManager:
    """Loaded Pipelines by config name, each with its BatchScheduler; loads run outside the lock."""

    def __init__(
        self,
        model_root: str | Path | None = None,
        batching: ServingOverrides | None = None,
        metrics: ServiceMetrics | None = None,
        require_manifest: bool = False,
        threads: int | None = None,
    ) -> None:
        """batching: `serve` flags that override the same field of every model's `serving:` block;
        threads: every backend's intra-op threads (None: each model's `runtime:` block decides)."""
        self._model_root = Path(model_root) if model_root is not None else None
        self.require_manifest = require_manifest  # refuse model folders without a sha256 manifest.json
        self.threads = threads
        self.batching = batching or ServingOverrides()
        self.metrics = metrics
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._loaded: dict[str, ModelEntry] = {}
        self._known_dirs: dict[str, Path] = {}
        self._listeners: list[StateListener] = []

    @property
    def model_root(self) -> Path:
        return self._model_root or models_root()

    def add_listener(self, listener: StateListener) -> None:
        """Call listener(name, loaded) after every load and unload."""
        self._listeners.append(listener)

    def _notify(self, name: str, loaded: bool) -> None:
        for listener in self._listeners:
            listener(name, loaded)

    def repository(self) -> dict[str, Path]:
        """Model folders that can be loaded by name: the repository plus folders loaded by path."""
        found = model_folders(self.model_root)
        with self._lock:
            found.update(self._known_dirs)
        return found

    def available_names(self) -> list[str]:
        with self._lock:
            loaded = set(self._loaded)
        return sorted(loaded | set(self.repository()))

    def _model_dir(self, name_or_path: str | Path, allow_path: bool) -> Path:
        repository = self.repository()
        if str(name_or_path) in repository:
            return repository[str(name_or_path)]
        if allow_path and Path(name_or_path).is_dir():
            return resolve_model_dir(name_or_path)
        raise UnknownModel(
            f"model {str(name_or_path)!r} is not in the model repository {self.model_root}; available: ",
            self.available_names(),
        )

    def load(self, name_or_path: str | Path, backend: str | None = None, allow_path: bool = False) -> ModelEntry:
        """Load (or return the already loaded) model; a path is accepted only with allow_path.

        backend None: the model's `runtime:` block chooses.
        """
        model_dir = self._model_dir(name_or_path, allow_path)
        if self.require_manifest:
            check_manifest_present(model_dir)  # before its config is even read; Pipeline verifies the files
        elif not has_manifest(model_dir):
            LOG.warning("model folder %s has no manifest.json: its files load unverified", model_dir)
        config = read_config(model_dir)
        with self._lock:
            gate = self._loading.setdefault(config.name, threading.Lock())
        with gate:
            with self._lock:
                if config.name in self._loaded:
                    return self._loaded[config.name]
            batching, sources = effective_batching(config.name, config.serving, self.batching)
            pipelines = self._load_instances(model_dir, backend, batching.instances)
            pipeline = pipelines[0]
            version = str(pipeline.config.version)
            scheduler = BatchScheduler(
                [ModelRunner(copy) for copy in pipelines],
                name=config.name,
                on_batch=(
                    self.metrics.batch_hook(
                        config.name, version, rechecked=lambda: sum(copy.recheck.items for copy in pipelines)
                    )
                    if self.metrics is not None
                    else None
                ),
                counted=is_inference,
                **batching.as_kwargs(),
            )
            backend_name = pipeline.backend.registry_name
            entry = ModelEntry(
                config.name, model_dir, pipeline.config, pipeline, backend_name, scheduler, batching, sources, pipelines
            )
            with self._lock:
                self._loaded[config.name] = entry
                self._known_dirs[config.name] = model_dir
        self._notify(config.name, True)
        return entry

    def _load_instances(self, model_dir: Path, backend: str | None, instances: int) -> tuple[Pipeline, ...]:
        """`instances` Pipelines of one model folder; those loaded are closed if a later one fails."""
        pipelines: list[Pipeline] = []
        try:
            for _ in range(instances):
                copy = Pipeline(model_dir, backend, require_manifest=self.require_manifest, threads=self.threads)
                pipelines.append(copy)
        except BaseException:
            for pipeline in pipelines:
                pipeline.close()
            raise
        return tuple(pipelines)

    def unload(self, name: str, grace: float = DEFAULT_UNLOAD_GRACE_SECONDS) -> ModelEntry:
        """Forget a loaded model: its queued work is served within grace (the rest fails), then its backend closes."""
        with self._lock:
            entry = self._loaded.pop(name, None)
        if entry is None:
            raise UnknownModel(f"model {name!r} is not loaded; loaded: ", self.loaded_names())
        self._notify(name, False)
        entry.scheduler.close(grace)
        if entry.scheduler.stopped:
            _close_all(entry.pipelines)  # in a function of its own: no loop name keeps a copy alive here
        else:  # a batch is stuck in the backend: closing it under that batch could crash the process
            LOG.warning("model %r: a batch still runs %.1f s after unload; its backend is left to the GC", name, grace)
        unloaded = ModelEntry(entry.name, entry.model_dir, entry.config, None, entry.backend)
        del entry  # this frame's reference to the pipeline: the collector may free it now
        RELEASER.after_unload()  # collect its reference cycles and give the freed heap back to the OS
        return unloaded

    def get(self, name: str, version: str = "") -> ModelEntry:
        """A loaded model (its entry holds the Pipeline); errors name what is loaded."""
        if not name:
            raise MissingModelName("model: empty; expected one of the loaded models: ", self.loaded_names())
        with self._lock:
            entry = self._loaded.get(name)
        if entry is None:
            raise UnknownModel(f"model {name!r} is not loaded; loaded: ", self.loaded_names())
        if version and version != entry.version:
            raise ModelNotFound(f"model {name!r} version {version!r} is not loaded; loaded version: {entry.version}")
        return entry

    def entry(self, name: str) -> ModelEntry:
        """A loaded model's entry, else the repository's description of it."""
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
        model_dir = self._model_dir(name, allow_path=False)
        return ModelEntry(name, model_dir, read_config(model_dir))

    def loaded(self) -> list[ModelEntry]:
        with self._lock:
            return [self._loaded[name] for name in sorted(self._loaded)]

    def loaded_names(self) -> list[str]:
        with self._lock:
            return sorted(self._loaded)

    def close(self, grace: float = DEFAULT_UNLOAD_GRACE_SECONDS) -> None:
        """Unload every model; their schedulers drain side by side, all within one grace period."""
        deadline = time.monotonic() + grace
        for name in self.loaded_names():
            self.unload(name, max(deadline - time.monotonic(), MIN_GRACE_SECONDS))


def _close_all(pipelines: list) -> None:
    """Close every instance of an unloaded model."""
    for pipeline in pipelines:
        pipeline.close()
