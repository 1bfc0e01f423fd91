"""Build a pipeline from a model folder and run predictions on any mix of modalities."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfusion import tracing
from mmfusion.config import ConfigError, PipelineConfig, RuntimeSpec, load_config, validate_params
from mmfusion.encoders.base import Encoder
from mmfusion.graph import PipelineGraph, input_name
from mmfusion.media import check_audio, check_image, decode_audio, decode_image
from mmfusion.parts import load_all
from mmfusion.registry import BACKENDS, ENCODERS, FUSIONS, HEADS
from mmfusion.repository.auto_backend import AUTO, choose_backend
from mmfusion.repository.folder import fitted_dir, resolve_model_dir, verified_model_folder
from mmfusion.repository.versions import load_version_config, load_version_weights, version_folder
from mmfusion.runtime.recheck import Fp32Recheck
from mmfusion.security.integrity import read_model_file
from mmfusion.types import InputError, Inputs, Modality, Prediction

EARLY_MODALITIES = frozenset({Modality.IMAGE})
"""Modalities preprocessed per item by `Pipeline.ready` (numpy/OpenCV: thread safe, releases the GIL)."""

Arrays = dict[str, np.ndarray]


@dataclass
class Ready(Inputs):
    """Inputs from `Pipeline.ready`: decoded and checked, with its early modalities' arrays (batch of one)."""

    arrays: dict[Modality, Arrays] = field(default_factory=dict)


def _joined(parts: list[Arrays | None]) -> Arrays | None:
    """Per-item arrays concatenated along the batch axis; None unless every item has them in one layout."""
    if not parts or any(part is None for part in parts):
        return None
    if len(parts) == 1:
        return parts[0]
    layouts = {tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in part.items())) for part in parts}
    if len(layouts) != 1:
        return None
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def build_graph(model_dir: str | Path, config: PipelineConfig | None = None) -> PipelineGraph:
    """Build encoders, fusion and heads of a model folder (random parts seeded from the config)."""
    load_all()
    model_dir = Path(model_dir)
    config = config or load_config(model_dir)
    source = str(model_dir / "config.yaml")
    torch.manual_seed(config.seed)
    encoders: dict[Modality, Encoder] = {}
    for modality, spec in config.encoders.items():
        encoder_class = ENCODERS.get(spec.name)
        params = validate_params(
            encoder_class.Params, spec.params, source, ("encoders", modality.value, "params"), model_dir
        )
        encoders[modality] = encoder_class(params)
    fusion_class = FUSIONS.get(config.fusion.name)
    fusion_params = validate_params(fusion_class.Params, config.fusion.params, source, ("fusion", "params"), model_dir)
    fusion = fusion_class(fusion_params, {m: e.output_dim for m, e in encoders.items()})
    heads = {}
    for head_name, spec in config.heads.items():
        head_class = HEADS.get(spec.name)
        params = validate_params(head_class.Params, spec.params, source, ("heads", head_name, "params"), model_dir)
        heads[head_name] = head_class(params, fusion.output_dim, spec)
    return PipelineGraph(encoders, fusion, heads).eval()


def runtime_for(config: PipelineConfig, backend: str | RuntimeSpec | None) -> RuntimeSpec:
    """The config's `runtime:` block, or a named backend's defaults (keeping the thread counts) when overridden."""
    if isinstance(backend, RuntimeSpec):
        return backend
    if backend is None or backend == config.runtime.backend:
        return config.runtime
    threads = {"threads": config.runtime.threads, "inter_op_threads": config.runtime.inter_op_threads}
    device = "cuda" if backend == "tensorrt" else config.runtime.device
    return RuntimeSpec(backend=backend, device=device, **threads)


def _coerce(modality: Modality, value: Any) -> Any:
    """Decode files/bytes into arrays; check arrays; leave video paths and text as they are."""
    if modality is Modality.IMAGE:
        return check_image(value) if isinstance(value, np.ndarray) else decode_image(value)
    if modality is Modality.AUDIO:
        return check_audio(value) if isinstance(value, np.ndarray) else decode_audio(value)
    if modality is Modality.VIDEO:
        return str(value) if isinstance(value, Path) else value
    if not isinstance(value, str):
        raise InputError(f"text: expected a string, got {type(value).__name__}")
    return value


def _example_bytes(fields: dict[str, Any]) -> dict[str, Any]:
    """An example's image and audio files as bytes read with `read_model_file` (checked against the manifest)."""
    read = dict(fields)
    for modality in (Modality.IMAGE, Modality.AUDIO):
        path = fields.get(modality.value)
        if isinstance(path, str | Path):
            try:
                read[modality.value] = read_model_file(path)
            except (FileNotFoundError, IsADirectoryError):
                raise InputError(f"{modality.value} file {str(path)!r} does not exist") from None
    return read


class Pipeline:
    """A model folder made runnable: preprocess (numpy) -> backend.run -> postprocess.

    A folder with a sha256 manifest is verified, and what is loaded from it is checked as it is read
    (`repository.folder.verified_model_folder`); `require_manifest` refuses a folder without one.
    """

    def __init__(
        self,
        model_dir: str | Path,
        backend: str | RuntimeSpec | None = None,
        version: int | None = None,
        require_manifest: bool = False,
        threads: int | None = None,
    ) -> None:
        """`threads` (None: the runtime block's) sets the backend's intra-op threads, e.g. 1 per pinned replica."""
        load_all()
        if isinstance(backend, str) and backend != AUTO and backend not in BACKENDS:
            raise ConfigError(f"backend {backend!r} is not known; allowed: {', '.join([AUTO, *BACKENDS.names()])}")
        self.model_dir = resolve_model_dir(model_dir)
        with verified_model_folder(self.model_dir, require_manifest) as verified:
            self.verified = verified  # the manifest it was loaded under: files read later are checked against it
            # A trained version (versions/<n>/: config.yaml + weights) when asked for or promoted to `current`.
            self.version_dir = version_folder(self.model_dir, version)
            if self.version_dir is None:
                self.config = load_config(self.model_dir)
            else:
                self.config = load_version_config(self.model_dir, self.version_dir)
            self.graph = build_graph(self.model_dir, self.config)
            self._imprint_examples()
            self._load_fitted()
            if self.version_dir is not None:
                load_version_weights(self.graph, self.version_dir)
            runtime = runtime_for(self.config, backend)
            if threads is not None:
                runtime = RuntimeSpec.model_validate({**runtime.model_dump(), "threads": threads})
            choice = choose_backend(self.model_dir, runtime, self.version, self.graph, self.name)
            self.backend, self.backend_choice = choice.backend, choice.reason  # which backend and why
        self.recheck = Fp32Recheck(self.graph, self.backend.runtime, self.backend.precision)

    @property
    def version(self) -> int:
        """The served version: the trained version's number, else the config's `version`."""
        return int(self.version_dir.name) if self.version_dir is not None else self.config.version

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def modalities(self) -> list[Modality]:
        return list(self.config.encoders)

    def encoder(self, modality: Modality) -> Encoder:
        return self.graph.encoders[modality.value]

    def _encode_inputs(self, modality: Modality, batch: list[Inputs]) -> Arrays:
        """One modality's encoder preprocessing of a batch."""
        encoder = self.encoder(modality)
        items = [getattr(item, modality.value) for item in batch]
        if encoder.uses_reference:
            items = [(item.image, item.reference) for item in batch]
        return encoder.preprocess(items)

    def _preprocess(self, batch: list[Inputs], early: list[dict[Modality, Arrays]] | None = None) -> Arrays:
        """The backend's named arrays; modalities every item brings `early` arrays for are only concatenated."""
        arrays: Arrays = {}
        for modality in batch[0].present():
            joined = _joined([item.get(modality) for item in early]) if early else None
            for name, array in (joined if joined is not None else self._encode_inputs(modality, batch)).items():
                arrays[input_name(modality, name)] = array
        return arrays

    def ready(self, inputs: Inputs) -> Ready:
        """Prepare an item and preprocess its EARLY_MODALITIES now, on the caller's thread (off the model's)."""
        item = self.prepare(inputs)
        arrays: dict[Modality, Arrays] = {}
        for modality in EARLY_MODALITIES.intersection(item.present()):
            try:
                arrays[modality] = self._encode_inputs(modality, [item])
            except Exception:  # noqa: BLE001 - left to predict_batch, which reports it per item as before
                continue
        return Ready(**{f.name: getattr(item, f.name) for f in fields(Inputs)}, arrays=arrays)

    def _postprocess(self, outputs: dict[str, np.ndarray], group: list[Inputs]) -> list[dict[str, Any]]:
        sizes = [None if item.image is None else item.image.shape[:2] for item in group]
        return self.graph.postprocess(outputs, sizes, group)

    def prepare(self, inputs: Inputs) -> Inputs:
        """Decode and check every present input; reject modalities this pipeline has no encoder for."""
        present = inputs.present()
        if not present:
            raise InputError(f"no input given; {self.name} reads {', '.join(m.value for m in self.modalities)}")
        unsupported = [m.value for m in present if m not in self.config.encoders]
        if unsupported:
            raise InputError(
                f"{self.name} has no encoder for {', '.join(unsupported)}; "
                f"it reads {', '.join(m.value for m in self.modalities)}"
            )
        coerced = {m.value: _coerce(m, getattr(inputs, m.value)) for m in present}
        image_encoder = self.graph.encoders[Modality.IMAGE.value] if Modality.IMAGE in self.config.encoders else None
        needs_reference = image_encoder is not None and image_encoder.uses_reference and inputs.image is not None
        if inputs.reference is not None and not needs_reference:
            raise InputError(f"reference_image: {self.name} does not compare against a reference image")
        if needs_reference:
            if inputs.reference is None:
                raise InputError(f"reference_image: missing; {self.name} compares each image with its golden template")
            source = inputs.reference
            reference = (
                check_image(source, "reference_image")
                if isinstance(source, np.ndarray)
                else decode_image(source, "reference_image")
            )
            if reference.shape != coerced["image"].shape:
                raise InputError(
                    f"reference_image: size {reference.shape[1]}x{reference.shape[0]} differs from the image's "
                    f"{coerced['image'].shape[1]}x{coerced['image'].shape[0]}; expected an aligned pair"
                )
            coerced["reference"] = reference
        return replace(inputs, **coerced)

    def predict_batch(self, batch: list[Inputs]) -> list[Prediction]:
        """Predict many items (Ready ones as `ready` left them), grouped by the modalities they carry."""
        prepared = [item if isinstance(item, Ready) else self.prepare(item) for item in batch]
        groups: dict[tuple[Modality, ...], list[int]] = defaultdict(list)
        for index, item in enumerate(prepared):
            groups[tuple(item.present())].append(index)
        results: list[Prediction | None] = [None] * len(prepared)
        for modalities, indices in groups.items():
            group = [prepared[i] for i in indices]
            arrays = self._preprocess(group, [getattr(item, "arrays", {}) for item in group])
            with tracing.span("backend.run", self._span_attributes(len(group))):
                outputs = self.backend.run(arrays)
            per_item = self._postprocess(outputs, group)
            per_item = self.recheck(per_item, arrays, group, self._postprocess)
            for index, heads in zip(indices, per_item):
                results[index] = Prediction(
                    model=self.name,
                    modalities=tuple(m.value for m in modalities),
                    outputs=heads,
                    transcript=self._transcribe(prepared[index]),
                )
        return results  # type: ignore[return-value]

    def _span_attributes(self, items: int) -> dict[str, Any] | None:
        """The backend.run span's attributes (None, nothing built, while tracing is off)."""
        if not tracing.enabled():
            return None
        return {
            tracing.MODEL_ATTRIBUTE: self.name,
            "mmfusion.backend": self.backend.registry_name,
            "mmfusion.items": items,
        }

    def raw_outputs(self, batch: list[Inputs]) -> dict[str, np.ndarray]:
        """The backend's graph outputs ('<head>.<key>' arrays) for items carrying the same modalities."""
        prepared = [self.prepare(item) for item in batch]
        kinds = {tuple(item.present()) for item in prepared}
        if len(kinds) != 1:
            raise InputError(f"raw_outputs: items carry different modalities {sorted(kinds)}; batch them apart")
        return self.backend.run(self._preprocess(prepared))

    def preprocess(self, batch: list[Inputs]) -> dict[str, np.ndarray]:
        """The named arrays the backend runs on, for items carrying the same modalities."""
        return self._preprocess([self.prepare(item) for item in batch])

    def predict(self, inputs: Inputs | None = None, **fields: Any) -> Prediction:
        """Predict one item: `predict(Inputs(...))` or `predict(image=..., text=...)`."""
        return self.predict_batch([inputs if inputs is not None else Inputs(**fields)])[0]

    def _transcribe(self, item: Inputs):
        encoder = self.graph.encoders[Modality.AUDIO.value] if Modality.AUDIO.value in self.graph.encoders else None
        if item.audio is None or encoder is None or not hasattr(encoder, "transcribe"):
            return None
        return encoder.transcribe(item.audio)

    @torch.no_grad()
    def _imprint_examples(self) -> None:
        """Imprint heads that list labelled examples with the fused embeddings of those examples."""
        for head in self.graph.heads.values():
            examples = getattr(head.params, "examples", None)
            if not examples or not hasattr(head, "imprint"):
                continue
            by_label: dict[str, list[torch.Tensor]] = defaultdict(list)
            for example in examples:
                fields = {m.value: getattr(example, m.value) for m in Modality if getattr(example, m.value) is not None}
                try:
                    item = self.prepare(Inputs(**_example_bytes(fields)))
                except InputError as error:
                    raise ConfigError(
                        f"{self.model_dir / 'config.yaml'}: example for '{example.label}': {error}"
                    ) from None
                arrays = self._preprocess([item])
                fused = self.graph.fuse({k: torch.from_numpy(v) for k, v in arrays.items()})
                by_label[example.label].append(fused.pooled[0])
            head.imprint({label: torch.stack(vectors) for label, vectors in by_label.items()})

    def _load_fitted(self) -> None:
        """Give heads that learn from data (`load_fitted`) their artifacts from `fitted/<head>/`."""
        for head_name, head in self.graph.heads.items():
            folder = fitted_dir(self.model_dir, head_name)
            if hasattr(head, "load_fitted") and folder.is_dir():
                head.load_fitted(folder)

    def close(self) -> None:
        self.backend.close()
