"""Pipeline config schema (models/<name>/config.yaml): loading and validation with clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mmfusion.registry import BACKENDS, ENCODERS, FUSIONS, HEADS, Registry
from mmfusion.security.integrity import read_model_file
from mmfusion.types import Modality

CONFIG_FILE = "config.yaml"
EXTERNAL_PATHS_ENV = "MMFUSION_EXTERNAL_PATHS"
"""Folders outside model folders (os.pathsep-separated) that model configs may name files in; unset: none."""


class ConfigError(ValueError):
    """A model folder or config file that cannot be used; the message names file, key and value."""


def external_roots() -> list[Path]:
    """The folders in $MMFUSION_EXTERNAL_PATHS, links resolved."""
    return [
        Path(entry).expanduser().resolve()
        for entry in os.environ.get(EXTERNAL_PATHS_ENV, "").split(os.pathsep)
        if entry
    ]


def model_file(value: str | Path, model_dir: str | Path) -> Path:
    """A path named in a model folder's config: relative to the folder, and inside it once links are resolved.

    Absolute paths and `..` or link escapes are refused (ValueError) unless they lead into a folder listed in
    $MMFUSION_EXTERNAL_PATHS: files elsewhere are not covered by the folder's sha256 manifest.
    """
    given = Path(value).expanduser()
    path = given if given.is_absolute() else Path(model_dir) / given
    resolved = path.resolve()
    if resolved.is_relative_to(Path(model_dir).resolve()) or any(resolved.is_relative_to(r) for r in external_roots()):
        return path
    where = "is an absolute path" if given.is_absolute() else "leads outside the model folder"
    raise ValueError(
        f"{str(value)!r} {where}; expected a path inside the model folder {str(model_dir)!r} (an operator may allow "
        f"folders elsewhere with ${EXTERNAL_PATHS_ENV}; their files are not covered by the folder's manifest)"
    )


def _resolve_local_path(value: str | None, info: ValidationInfo) -> str | None:
    """Resolve a path against the model folder of the validation context (and keep it inside); as given without."""
    if value is None:
        return None
    model_dir = (info.context or {}).get("model_dir")
    if model_dir is None:
        return str(Path(value).expanduser())
    return str(model_file(value, model_dir))


LocalPath = Annotated[str, AfterValidator(_resolve_local_path)]
"""A filesystem path; in a model config relative to the model folder and inside it (see `model_file`)."""


class PartParams(BaseModel):
    """Base for the `params:` block of an encoder, fusion or head; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class PartSpec(BaseModel):
    """A registered part by name plus its params (validated later against the part's own schema)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


def _check_name(registry: Registry, name: str) -> str:
    """A registered name; parts register where they are loaded (`mmfusion.parts.load_all`), not here."""
    if not len(registry):
        raise ValueError(f"'{name}': no {registry.kind} is registered yet; call mmfusion.parts.load_all() first")
    if name not in registry:
        raise ValueError(f"'{name}' is not a known {registry.kind}; allowed: {', '.join(registry.names())}")
    return name


class EncoderSpec(PartSpec):
    """An encoder for one modality."""

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return _check_name(ENCODERS, name)


class FusionSpec(PartSpec):
    """The fusion module that combines the encoders' embeddings."""

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return _check_name(FUSIONS, name)


class HeadSpec(PartSpec):
    """A task head; labels and thresholds live here, outside any exported graph."""

    labels: list[str] = Field(default_factory=list)
    thresholds: dict[str, float] = Field(default_factory=dict)
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return _check_name(HEADS, name)

    @model_validator(mode="after")
    def _thresholds_name_labels(self) -> HeadSpec:
        unknown = sorted(set(self.thresholds) - set(self.labels))
        if unknown:
            raise ValueError(f"thresholds for unknown labels {unknown}; labels are {self.labels}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels repeat: {self.labels}")
        return self


PRECISIONS = ("fp32", "fp16", "bf16", "int8")
BACKEND_PRECISIONS = {
    "torch": ("fp32", "fp16", "bf16"),
    "onnxruntime": ("fp32", "fp16", "int8"),
    "tensorrt": PRECISIONS,
    "auto": ("fp32",),
}
AUTO_BACKEND = "auto"
"""`backend: auto`: onnxruntime on the model's export (its folder's or one built into the cache), else torch."""


class RuntimeSpec(BaseModel):
    """The `runtime:` block: which backend runs the graph, at what precision, on which device and threads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str = "torch"
    precision: Literal["fp32", "fp16", "bf16", "int8"] | None = None
    """None: fp32 on torch, whatever was exported on onnxruntime/tensorrt; else checked against the export."""
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int | None = Field(default=None, ge=1, le=1024)
    inter_op_threads: int | None = Field(default=None, ge=1, le=1024)
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    providers: list[str] | None = None
    """onnxruntime execution providers in order of preference; default: the best the installed package has."""
    recheck_margin: float | None = Field(default=None, ge=0.0, le=1.0)
    """Exported reduced-precision graphs: items whose decision score lies within this fraction of a head's
    threshold are scored again by the FP32 torch graph. None: 0.03 for int8, off otherwise; 0: off."""

    @field_validator("backend")
    @classmethod
    def _known(cls, name: str) -> str:
        return name if name == AUTO_BACKEND else _check_name(BACKENDS, name)

    @model_validator(mode="after")
    def _consistent(self) -> RuntimeSpec:
        allowed = BACKEND_PRECISIONS.get(self.backend, PRECISIONS)
        if self.precision is not None and self.precision not in allowed:
            raise ValueError(
                f"precision {self.precision} is not available on {self.backend}; allowed: {', '.join(allowed)}"
            )
        if self.backend == "torch" and self.precision in ("fp16", "bf16") and self.device != "cuda":
            raise ValueError(f"precision {self.precision} on torch needs device: cuda (CPU runs fp32)")
        if self.backend == "tensorrt" and self.device != "cuda":
            raise ValueError("backend tensorrt runs on NVIDIA GPUs only; set device: cuda")
        if self.compile and self.backend != "torch":
            raise ValueError(f"compile: true applies to the torch backend only, not {self.backend}")
        if self.providers is not None and self.backend != "onnxruntime":
            raise ValueError(f"providers apply to the onnxruntime backend only, not {self.backend}")
        if self.recheck_margin and self.backend == "torch":
            raise ValueError("recheck_margin applies to exported back ends (onnxruntime, tensorrt), not torch")
        return self


class QueuePolicySpec(BaseModel):
    """`serving.queue_policy`: how many requests may wait and how long a request may wait in the queue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_queue_size: int | None = Field(default=None, ge=1)
    """Requests waiting before RESOURCE_EXHAUSTED; None: --max-queue-size, else 256."""
    default_timeout_us: int | None = Field(default=None, ge=1)
    """A request still queued this long is dropped DEADLINE_EXCEEDED uncomputed; None: only the client's deadline."""
    allow_timeout_override: bool = True
    """True: a client deadline replaces default_timeout_us; False: the shorter of the two applies."""


class ServingSpec(BaseModel):
    """The `serving:` block: the model's dynamic batching, instances and queue policy; unset fields use defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int | None = Field(default=None, ge=1, le=65536)
    """Requests per backend call; None: --max-batch-size, else 8."""
    max_queue_delay_us: int | None = Field(default=None, ge=0, le=60_000_000)
    """Longest wait for a batch to fill, in microseconds; None: --max-queue-delay-us, else 2000."""
    preferred_batch_sizes: list[int] | None = None
    """Dispatch at once when this many wait; each in 1..max_batch_size; None: --preferred-batch-size, else none."""
    instances: int = Field(default=1, ge=1, le=64)
    """Copies of the model (each a Pipeline of its own, in memory N times) that run batches side by side."""
    queue_policy: QueuePolicySpec = Field(default_factory=QueuePolicySpec)

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _fit_batch(cls, sizes: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if sizes is None:
            return None
        largest = info.data.get("max_batch_size")
        bad = [size for size in sizes if size < 1 or (largest is not None and size > largest)]
        if bad:
            bound = f"1..max_batch_size ({largest})" if largest is not None else ">= 1"
            raise ValueError(f"sizes {bad} are out of range; expected sizes in {bound}")
        return sorted(set(sizes), reverse=True)


class PipelineConfig(BaseModel):
    """One pipeline: encoders per modality -> fusion -> named heads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    version: int = Field(default=1, ge=1)
    encoders: dict[Modality, EncoderSpec]
    fusion: FusionSpec
    heads: dict[str, HeadSpec]
    seed: int = 0
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)

    @field_validator("encoders")
    @classmethod
    def _modality_matches(cls, encoders: dict[Modality, EncoderSpec]) -> dict[Modality, EncoderSpec]:
        if not encoders:
            raise ValueError("at least one encoder is required")
        for modality, spec in encoders.items():
            encoder_modality = ENCODERS.get(spec.name).modality
            if encoder_modality != modality:
                raise ValueError(f"encoder '{spec.name}' reads {encoder_modality.value}, not {modality.value}")
        return encoders

    @field_validator("heads")
    @classmethod
    def _some_heads(cls, heads: dict[str, HeadSpec]) -> dict[str, HeadSpec]:
        if not heads:
            raise ValueError("at least one head is required")
        return heads


def _describe_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys a schema allows at the mapping that holds `loc[-1]`."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
            if get_origin(current) is UnionType:  # `Spec | None`: the spec
                current = next((arg for arg in get_args(current) if arg is not type(None)), current)
        elif get_origin(current) in (dict, list):
            current = get_args(current)[-1]  # a mapping's values, a list's items
        else:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def format_validation_error(source: str, error: ValidationError, model: type[BaseModel], prefix: tuple = ()) -> str:
    """Turn a pydantic error into 'file: key: problem (got value); allowed: ...' lines."""
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in (*prefix, *item["loc"]) if p != "[key]") or "<top level>"
        kind = item["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, item["loc"])
            lines.append(f"{source}: {key}: unknown key; allowed: {', '.join(allowed)}")
        elif kind == "missing":
            lines.append(f"{source}: {key}: required key is missing")
        elif kind == "enum":
            expected = item.get("ctx", {}).get("expected", "")
            lines.append(f"{source}: {key}: {_describe_value(item['input'])} is not allowed; allowed: {expected}")
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {key}: {message} (got {_describe_value(item['input'])})")
    return "\n".join(lines)


def validate_params(
    params_model: type[BaseModel], raw: dict[str, Any], source: str, where: tuple, model_dir: Path | None
) -> BaseModel:
    """Validate a part's `params:` block against its schema, naming the file and key on error."""
    try:
        return params_model.model_validate(raw, context={"model_dir": model_dir})
    except ValidationError as error:
        raise ConfigError(format_validation_error(source, error, params_model, where)) from None


def parse_config(raw: Any, source: str, model_dir: Path | None = None) -> PipelineConfig:
    """Validate a parsed YAML document as a pipeline config and every part's params."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        config = PipelineConfig.model_validate(raw, context={"model_dir": model_dir})
    except ValidationError as error:
        raise ConfigError(format_validation_error(source, error, PipelineConfig)) from None
    for modality, spec in config.encoders.items():
        validate_params(
            ENCODERS.get(spec.name).Params, spec.params, source, ("encoders", modality.value, "params"), model_dir
        )
    validate_params(
        FUSIONS.get(config.fusion.name).Params, config.fusion.params, source, ("fusion", "params"), model_dir
    )
    for head_name, spec in config.heads.items():
        validate_params(HEADS.get(spec.name).Params, spec.params, source, ("heads", head_name, "params"), model_dir)
    return config


def load_config(model_dir: str | Path) -> PipelineConfig:
    """Read and validate `<model_dir>/config.yaml`."""
    model_dir = Path(model_dir)
    path = model_dir / CONFIG_FILE
    if not model_dir.is_dir():
        raise ConfigError(f"model folder {str(model_dir)!r} does not exist")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; a model folder needs a {CONFIG_FILE}")
    try:
        raw = yaml.safe_load(read_model_file(path).decode("utf-8"))  # checked against the manifest while loading
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    config = parse_config(raw, str(path), model_dir)
    check_folder_name(config, model_dir, path)
    return config


def check_folder_name(config: PipelineConfig, model_dir: str | Path, source: str | Path) -> None:
    """A model is served, listed and access-checked by its folder name: its config's `name` must be the same."""
    folder_name = Path(os.path.abspath(model_dir)).name
    if config.name != folder_name:
        raise ConfigError(
            f"{source}: name: {config.name!r} differs from its folder name {folder_name!r}; expected name: "
            f"{folder_name} (or rename the folder)"
        )
