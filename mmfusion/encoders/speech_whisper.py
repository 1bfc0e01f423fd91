"""openai-whisper audio encoder: log-mel front end + whisper's AudioEncoder (random or local checkpoint)."""

from __future__ import annotations

import io
from dataclasses import fields
from typing import Any

import numpy as np
import torch
import whisper
from pydantic import Field, field_validator, model_validator
from whisper.audio import HOP_LENGTH
from whisper.model import AudioEncoder, ModelDimensions

from mmfusion.config import LocalPath, PartParams
from mmfusion.encoders.base import Encoder
from mmfusion.media import SAMPLE_RATE, check_audio
from mmfusion.params import check_heads_divide_width
from mmfusion.registry import ENCODERS
from mmfusion.security.integrity import read_model_file
from mmfusion.types import Embedding, Modality

# conv2 has stride 2, so one encoder frame covers two mel frames: 2 * 160 samples = 20 ms.
SAMPLES_PER_FRAME = 2 * HOP_LENGTH
AUDIO_DIMS = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer")


class WhisperParams(PartParams):
    """`params:` for speech.whisper; dims default to whisper tiny and are read from `checkpoint` if given."""

    checkpoint: LocalPath | None = None
    n_mels: int = 80
    n_audio_ctx: int = Field(default=1500, ge=1)
    n_audio_state: int = Field(default=384, ge=1)
    n_audio_head: int = Field(default=6, ge=1)
    n_audio_layer: int = Field(default=4, ge=0)
    max_seconds: float = Field(default=30.0, gt=0.0, le=30.0)

    @field_validator("n_mels")
    @classmethod
    def _known_mel_bank(cls, n_mels: int) -> int:
        if n_mels not in (80, 128):
            raise ValueError(f"n_mels {n_mels}: whisper ships mel filters for 80 or 128 bands only")
        return n_mels

    @model_validator(mode="after")
    def _checkpoint_or_dims(self) -> WhisperParams:
        given_dims = sorted(set(AUDIO_DIMS) & self.model_fields_set)
        if self.checkpoint is not None and given_dims:
            raise ValueError(f"{', '.join(given_dims)}: a checkpoint carries its own dims; give one or the other")
        check_heads_divide_width(self.n_audio_head, self.n_audio_state, "n_audio_head", "n_audio_state")
        return self


def load_whisper_checkpoint(path: str) -> tuple[ModelDimensions, dict[str, torch.Tensor]]:
    """Read a whisper `.pt` file: its dims and the `encoder.*` weights (prefix removed)."""
    try:
        data = read_model_file(path)  # checked against the manifest of a model folder being loaded
    except FileNotFoundError:
        raise ValueError(f"checkpoint {path!r} does not exist; expected a whisper .pt file") from None
    except OSError as error:
        raise ValueError(f"checkpoint {path!r} is not a readable torch file: {error}") from None
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"checkpoint {path!r} is not a readable torch file: {reason}") from None
    if not isinstance(checkpoint, dict) or not {"dims", "model_state_dict"} <= checkpoint.keys():
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"checkpoint {path!r} has {keys}; expected a whisper checkpoint with 'dims' and 'model_state_dict'"
        )
    try:
        dims = ModelDimensions(**checkpoint["dims"])
    except TypeError as error:
        raise ValueError(f"checkpoint {path!r}: 'dims' are not whisper ModelDimensions ({error})") from None
    prefix = "encoder."
    state = {k[len(prefix) :]: v for k, v in checkpoint["model_state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"checkpoint {path!r} has no 'encoder.*' weights; expected a whisper model state_dict")
    return dims, state


def frame_mask(valid_frames: torch.Tensor, length: int) -> torch.Tensor:
    """(B, length) bool mask, True for the first valid_frames[b] frames of each row."""
    positions = torch.arange(length, device=valid_frames.device)  # (L,)
    return positions.unsqueeze(0) < valid_frames.unsqueeze(1)  # (B, L)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of tokens (B, L, D) over the True positions of mask (B, L)."""
    weights = mask.unsqueeze(-1).to(tokens.dtype)  # (B, L, 1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, D)


@ENCODERS.register("speech.whisper")
class WhisperEncoder(Encoder):
    """Whisper's audio encoder on a fixed 30 s window; the mask marks frames covering real audio."""

    modality = Modality.AUDIO
    Params = WhisperParams
    input_names = ("mel", "valid_frames")
    example_params = {"n_audio_state": 64, "n_audio_head": 2, "n_audio_layer": 2}

    def __init__(self, params: WhisperParams) -> None:
        super().__init__(params)
        if params.checkpoint is not None:
            dims, state = load_whisper_checkpoint(params.checkpoint)
            self.dims = {f.name: getattr(dims, f.name) for f in fields(dims) if f.name in AUDIO_DIMS}
        else:
            state = None
            self.dims = {name: getattr(params, name) for name in AUDIO_DIMS}
        # Random weights are seeded so two encoders built from the same params agree.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.encoder = AudioEncoder(
                self.dims["n_mels"],
                self.dims["n_audio_ctx"],
                self.dims["n_audio_state"],
                self.dims["n_audio_head"],
                self.dims["n_audio_layer"],
            )
        if state is not None:
            try:
                self.encoder.load_state_dict(state)
            except RuntimeError as error:
                raise ValueError(f"checkpoint {params.checkpoint!r} does not fit its own dims: {error}") from None
        self.encoder.eval()
        self.output_dim = self.dims["n_audio_state"]
        self.window_samples = self.dims["n_audio_ctx"] * SAMPLES_PER_FRAME  # 480000 = 30 s for whisper
        self.max_samples = min(self.window_samples, round(params.max_seconds * SAMPLE_RATE))

    def preprocess(self, items: list[Any]) -> dict[str, np.ndarray]:
        mels, valid_frames = [], []
        for i, item in enumerate(items):
            waveform = check_audio(item, f"audio[{i}]")[: self.max_samples]
            window = whisper.pad_or_trim(waveform, self.window_samples)
            mel = whisper.log_mel_spectrogram(window, self.dims["n_mels"])  # (n_mels, 2 * n_audio_ctx)
            mels.append(mel.numpy())
            valid_frames.append(-(-waveform.size // SAMPLES_PER_FRAME))
        return {
            "mel": np.stack(mels).astype(np.float32),  # (B, n_mels, 3000)
            "valid_frames": np.asarray(valid_frames, dtype=np.int64),  # (B,)
        }

    def forward(self, mel: torch.Tensor, valid_frames: torch.Tensor) -> Embedding:
        tokens = self.encoder(mel)  # (B, 1500, D)
        mask = frame_mask(valid_frames.to(tokens.device), tokens.shape[1])  # (B, L)
        return Embedding(tokens=tokens, pooled=masked_mean(tokens, mask), mask=mask)
