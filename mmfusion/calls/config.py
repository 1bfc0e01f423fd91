"""The call-analysis settings of a model folder (`call.yaml`), label sets and compliance phrase lists (YAML)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from whisper.tokenizer import LANGUAGES

from mmfusion.config import ConfigError, LocalPath, validate_params
from mmfusion.media import MAX_AUDIO_SECONDS
from mmfusion.repository.folder import CALL_FILE
from mmfusion.security.integrity import IntegrityError, read_model_file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VadParams(_Strict):
    """Silero VAD segmentation: hysteresis thresholds and the durations that open and close a segment."""

    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    min_speech_ms: int = Field(default=250, ge=0)
    min_silence_ms: int = Field(default=500, ge=32)
    speech_pad_ms: int = Field(default=200, ge=0)
    max_speech_s: float = Field(default=28.0, gt=1.0, le=29.0)

    @model_validator(mode="after")
    def _pad_within_silence(self) -> VadParams:
        # A segment closes min_silence_ms after its speech ends; its end padding must already be there.
        if self.speech_pad_ms > self.min_silence_ms:
            raise ValueError(f"speech_pad_ms {self.speech_pad_ms} must be <= min_silence_ms {self.min_silence_ms}")
        return self


class AsrParams(_Strict):
    """Segment transcription: beam size, the languages a segment may be detected as, or one fixed language."""

    beam_size: int = Field(default=1, ge=1, le=16)
    language: str | None = None
    languages: list[str] = Field(default_factory=list)
    no_speech_threshold: float = Field(default=0.6, gt=0.0, le=1.0)
    window_margin_s: float = Field(default=1.0, ge=0.0, le=5.0)
    min_window_s: float = Field(default=8.0, ge=1.0, le=30.0)
    temperatures: list[float] = Field(default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], min_length=1)
    compression_ratio_threshold: float = Field(default=2.4, gt=1.0)
    log_prob_threshold: float = Field(default=-1.0, lt=0.0)
    tokens_per_second: float = Field(default=8.0, gt=0.0, le=50.0)
    condition_on_previous_text: bool = False  # off, as faster-whisper's batched pipeline: segments batch freely

    @field_validator("temperatures")
    @classmethod
    def _temperature_range(cls, temperatures: list[float]) -> list[float]:
        if any(not 0.0 <= t <= 1.0 for t in temperatures) or temperatures != sorted(temperatures):
            raise ValueError(f"temperatures {temperatures}: expected increasing values in [0, 1], e.g. [0.0, 0.2, 0.4]")
        return temperatures

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, languages: list[str]) -> list[str]:
        unknown = [code for code in languages if code not in LANGUAGES]
        if unknown:
            raise ValueError(f"{unknown} are not whisper language codes; expected e.g. en, zh, de")
        return languages

    @field_validator("language")
    @classmethod
    def _known_language(cls, language: str | None) -> str | None:
        if language is not None and language not in LANGUAGES:
            raise ValueError(f"language {language!r} is not a whisper language code; expected e.g. en, zh")
        return language


class LabelTask(_Strict):
    """One label task (intent, emotion): its label set file, and the config head that replaces zero-shot once fitted."""

    label_set: LocalPath
    head: str | None = None
    temperature: float = Field(default=0.05, gt=0.0, le=1.0)


class CallConfig(_Strict):
    """`call.yaml`: channels -> speakers, segmentation, transcription, label tasks, compliance files."""

    channels: list[str] = Field(default_factory=lambda: ["agent", "customer"], min_length=2, max_length=2)
    mono_speaker: str = "speaker"
    agent: str = "agent"
    customer: str = "customer"
    vad: VadParams = VadParams()
    asr: AsrParams = AsrParams()
    labels: dict[str, LabelTask] = Field(default_factory=dict)
    escalation: str | None = None
    compliance: list[LocalPath] = Field(default_factory=list)
    max_seconds: float = Field(default=MAX_AUDIO_SECONDS, gt=0.0, le=MAX_AUDIO_SECONDS)

    @model_validator(mode="after")
    def _names_agree(self) -> CallConfig:
        if len(set(self.channels)) != 2:
            raise ValueError(f"channels {self.channels}: expected two different speaker names")
        for role in ("agent", "customer"):
            if getattr(self, role) not in self.channels:
                raise ValueError(f"{role} {getattr(self, role)!r} is not one of channels {self.channels}")
        if self.escalation is not None and self.escalation not in self.labels:
            raise ValueError(f"escalation {self.escalation!r} is not a label task; tasks: {sorted(self.labels)}")
        return self


class LabelSet(_Strict):
    """A label set file: each label with one or more descriptions; `negative` labels mark escalation."""

    name: str
    applies_to: str | None = None
    labels: dict[str, list[str]]
    negative: list[str] = Field(default_factory=list)

    @field_validator("labels", mode="before")
    @classmethod
    def _descriptions_as_lists(cls, labels: Any) -> Any:
        if isinstance(labels, dict):
            return {label: [text] if isinstance(text, str) else text for label, text in labels.items()}
        return labels

    @model_validator(mode="after")
    def _usable(self) -> LabelSet:
        if len(self.labels) < 2:
            raise ValueError(f"labels: {sorted(self.labels)}; expected at least 2 labels")
        empty = [label for label, texts in self.labels.items() if not any(t.strip() for t in texts)]
        if empty:
            raise ValueError(f"labels {empty} have no description; give each label at least one sentence")
        unknown = sorted(set(self.negative) - set(self.labels))
        if unknown:
            raise ValueError(f"negative {unknown} are not labels; labels: {sorted(self.labels)}")
        return self


class PhraseRule(_Strict):
    """Phrases that count as one rule; `speaker` limits who must (or must not) say them, `within_seconds` when."""

    id: str
    phrases: list[str] = Field(min_length=1)
    speaker: str | None = None
    within_seconds: float | None = Field(default=None, gt=0.0)
    min_score: float | None = Field(default=None, ge=50.0, le=100.0)


class PhraseList(_Strict):
    """A compliance file: required and forbidden phrases and glossary terms of one language (`any`: every call)."""

    language: str = "any"
    min_score: float = Field(default=80.0, ge=50.0, le=100.0)
    required: list[PhraseRule] = Field(default_factory=list)
    forbidden: list[PhraseRule] = Field(default_factory=list)
    glossary: list[PhraseRule] = Field(default_factory=list)


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        return yaml.safe_load(read_model_file(path).decode("utf-8"))  # checked against the manifest when loading
    except IntegrityError as error:
        raise ConfigError(f"{path}: refused: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {getattr(error, 'problem', error)}") from None


def load_yaml_model(model: type[BaseModel], path: str | Path, model_dir: Path | None = None) -> Any:
    """Read and validate one YAML file against `model`; errors name the file and the key."""
    path = Path(path)
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return validate_params(model, raw, str(path), (), model_dir or path.parent)


def load_call_config(model_dir: str | Path) -> CallConfig | None:
    """The folder's `call.yaml`, or None when the model is not a call-analysis model."""
    path = Path(model_dir) / CALL_FILE
    return load_yaml_model(CallConfig, path, Path(model_dir)) if path.is_file() else None
