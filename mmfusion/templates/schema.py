"""The versioned prompt template library: `library/<name>.v<version>.yaml`, validated on load."""

from __future__ import annotations

import re
import string
from functools import cache
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmfusion.config import ConfigError, format_validation_error
from mmfusion.security.integrity import read_model_file

TEMPLATES_DIR = Path(__file__).resolve().parent / "library"
FILE_PATTERN = re.compile(r"^(?P<name>[a-z0-9_]+)\.v(?P<version>\d+)\.yaml$")
ITEM_SLOTS = frozenset({"type", "location", "severity", "score", "suggested_change"})
TEXT_SLOTS = frozenset({"items", "verdict", "summary", "impression", "recommendation"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputField(_Strict):
    """One user- or sensor-supplied field of a template; always escaped and fenced when rendered."""

    description: str = ""
    required: bool = True
    max_chars: int = Field(default=4000, gt=0)


class ExampleSpec(_Strict):
    """Few-shot examples: `k` rows of the pool manifest, the first k (`fixed`) or the nearest (`similar`)."""

    select: Literal["fixed", "similar"] = "fixed"
    k: int = Field(default=3, ge=0, le=10)
    pool: str | None = None


def placeholders(pattern: str) -> list[str]:
    """The `{name}` placeholders of a format string, in order."""
    return [name for _, name, _, _ in string.Formatter().parse(pattern) if name]


class OutputSpec(_Strict):
    """The output contract: requirements text, JSON schema, and the text rendering formats."""

    requirements: str
    output_schema: dict[str, Any] = Field(alias="schema")
    item: str
    none: str
    join: str = "\n"
    text: str = "{items}"
    impression: str = "{severity} {type}"
    impression_none: str = "none"
    recommendations: dict[str, str] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("output_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as error:
            raise ValueError(f"not a valid JSON schema: {error.message}") from None
        return schema

    @field_validator("item", "impression")
    @classmethod
    def _item_slots(cls, pattern: str) -> str:
        unknown = sorted(set(placeholders(pattern)) - ITEM_SLOTS)
        if unknown:
            raise ValueError(f"unknown placeholders {unknown}; allowed: {', '.join(sorted(ITEM_SLOTS))}")
        return pattern

    @field_validator("text")
    @classmethod
    def _text_slots(cls, pattern: str) -> str:
        if "items" not in placeholders(pattern):
            raise ValueError("the text rendering must contain {items}")
        return pattern

    @model_validator(mode="after")
    def _recommendations_complete(self) -> OutputSpec:
        missing = [key for key in ("default", "none") if key not in self.recommendations]
        if missing:
            raise ValueError(f"recommendations: missing {missing}; every template needs 'default' and 'none'")
        return self


class PromptTemplate(_Strict):
    """One versioned template: role + task + examples + output requirements, optional chain of thought."""

    name: str
    version: int = Field(ge=1)
    description: str = ""
    role: str
    task: str
    chain_of_thought: str | None = None
    inputs: dict[str, InputField]
    examples: ExampleSpec = Field(default_factory=ExampleSpec)
    output: OutputSpec
    source: str = ""
    """The file the template came from (set on load)."""

    @field_validator("inputs")
    @classmethod
    def _input_names(cls, inputs: dict[str, InputField]) -> dict[str, InputField]:
        bad = [name for name in inputs if not re.fullmatch(r"[a-z][a-z0-9_]*", name)]
        if bad:
            raise ValueError(f"input names {bad}: expected lower-case identifiers")
        return inputs

    @property
    def key(self) -> str:
        """name@version, how reports and A/B tables name a template."""
        return f"{self.name}@{self.version}"

    @property
    def pool_path(self) -> Path | None:
        """The few-shot pool manifest, relative to the template's folder."""
        if self.examples.pool is None:
            return None
        folder = Path(self.source).parent if self.source else TEMPLATES_DIR
        return folder / self.examples.pool


def parse_template(raw: Any, source: str) -> PromptTemplate:
    """Validate a parsed YAML document as a template; errors name the file and key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return PromptTemplate.model_validate({**raw, "source": source})
    except ValidationError as error:
        raise ConfigError(format_validation_error(source, error, PromptTemplate)) from None


def read_template(path: str | Path) -> PromptTemplate:
    """Read one template file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"template {str(path)!r}: no such file")
    try:
        raw = yaml.safe_load(read_model_file(path).decode("utf-8"))  # checked against a model folder's manifest
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_template(raw, str(path))


def library(folder: Path = TEMPLATES_DIR) -> dict[str, dict[int, Path]]:
    """The shipped templates: name -> version -> file."""
    found: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.glob("*.yaml")):
        match = FILE_PATTERN.match(path.name)
        if match:
            found.setdefault(match["name"], {})[int(match["version"])] = path
    return found


@cache
def _cached(path: str, mtime: float) -> PromptTemplate:
    return read_template(path)


def load_template(spec: str | Path, base: Path | None = None) -> PromptTemplate:
    """A template by `name` (newest version), `name@version`, or a `.yaml` path (relative to `base`)."""
    text = str(spec)
    if text.endswith((".yaml", ".yml")):
        path = Path(text).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.is_file():
            raise ConfigError(f"template {text!r}: no such file")
        return _cached(str(path.resolve()), path.stat().st_mtime)
    name, _, version = text.partition("@")
    shipped = library()
    if name not in shipped:
        raise ConfigError(f"template {name!r} is not in the library; available: {', '.join(sorted(shipped))}")
    versions = shipped[name]
    if version and (not version.isdigit() or int(version) not in versions):
        raise ConfigError(f"template {name!r} has no version {version!r}; available: {sorted(versions)}")
    path = versions[int(version)] if version else versions[max(versions)]
    return _cached(str(path), path.stat().st_mtime)
