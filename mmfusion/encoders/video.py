"""Video encoder: sample frames, embed each with a registered image encoder, pool over time."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from torch import nn

from mmfusion.config import PartParams
from mmfusion.encoders.base import Encoder
from mmfusion.encoders.open_clip_model import EXAMPLE_MODEL
from mmfusion.media import check_image, read_video_frames, video_frame_count
from mmfusion.registry import ENCODERS
from mmfusion.types import Embedding, InputError, Modality


def _image_encoder_names() -> list[str]:
    return [name for name in ENCODERS.names() if ENCODERS.get(name).modality == Modality.IMAGE]


class ImageEncoderSpec(BaseModel):
    """The image encoder run on every frame: a registered IMAGE encoder and its own params."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _image_encoder(cls, name: str) -> str:
        allowed = ", ".join(_image_encoder_names())
        if name not in ENCODERS:
            raise ValueError(f"{name!r} is not a registered encoder; image encoders: {allowed}")
        modality = ENCODERS.get(name).modality
        if modality != Modality.IMAGE:
            raise ValueError(f"{name!r} reads {modality.value}, not image; image encoders: {allowed}")
        return name

    @field_validator("params")
    @classmethod
    def _encoder_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("name")
        if name is None:
            return params
        try:
            # With the config's context, so that relative checkpoint paths resolve from the model folder.
            validated = ENCODERS.get(name).Params.model_validate(params, context=info.context)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in error.errors()
            )
            raise ValueError(f"params for {name}: {problems}") from None
        return validated.model_dump()


class VideoParams(PartParams):
    """`params:` for video.frames."""

    image_encoder: ImageEncoderSpec
    every_n: int = Field(default=1, ge=1)
    """Keep every n-th frame from the start."""
    num_frames: int | None = Field(default=None, ge=1)
    """Instead: this many frames spread evenly from the first to the last frame."""
    max_frames: int = Field(default=64, ge=1)
    pooling: Literal["mean", "attention"] = "mean"

    @model_validator(mode="after")
    def _one_sampling_rule(self) -> VideoParams:
        if self.num_frames is not None and self.every_n > 1:
            raise ValueError(
                f"every_n={self.every_n} and num_frames={self.num_frames} both choose frames; set only one"
            )
        if self.num_frames is not None and self.num_frames > self.max_frames:
            raise ValueError(f"num_frames={self.num_frames} exceeds max_frames={self.max_frames}")
        return self


def uniform_indices(total: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over `total` frames, first and last included (all if fewer)."""
    if total <= count:
        return list(range(total))
    return [int(round(position)) for position in np.linspace(0, total - 1, count)]


def _read_frames_at(path: str, indices: list[int]) -> list[np.ndarray]:
    """Decode only the frames at `indices` (sorted) of a video file, as RGB."""
    wanted = set(indices)
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise InputError(f"video {path!r}: OpenCV cannot open it as a video")
    frames: list[np.ndarray] = []
    try:
        for index in range(indices[-1] + 1):
            if not capture.grab():
                break  # the container over-reported its frame count
            if index in wanted:
                ok, frame = capture.retrieve()
                if ok:
                    frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    if not frames:
        raise InputError(f"video {path!r}: no frames could be decoded")
    return frames


def sample_frames(item: Any, params: VideoParams, name: str = "video") -> list[np.ndarray]:
    """The frames of one video (a file path or a list of RGB frames) chosen by the sampling params."""
    if isinstance(item, (str, Path)):
        path = str(item)
        if params.num_frames is None:
            return read_video_frames(path, every_n=params.every_n, max_frames=params.max_frames)
        total = video_frame_count(path) if Path(path).is_file() else 0
        if total <= 0:  # unknown count (or a bad file: reading reports why)
            frames = read_video_frames(path)
            return [frames[index] for index in uniform_indices(len(frames), params.num_frames)]
        return _read_frames_at(path, uniform_indices(total, params.num_frames))
    if isinstance(item, np.ndarray) and item.ndim == 4:
        item = list(item)
    if not isinstance(item, (list, tuple)):
        raise InputError(f"{name}: expected a video file path or a list of RGB frames, got {type(item).__name__}")
    if not item:
        raise InputError(f"{name}: empty list of frames; expected at least one (H, W, 3) uint8 RGB frame")
    frames = [check_image(frame, f"{name} frame {index}") for index, frame in enumerate(item)]
    if params.num_frames is not None:
        return [frames[index] for index in uniform_indices(len(frames), params.num_frames)]
    return frames[:: params.every_n][: params.max_frames]


class AttentionPooling(nn.Module):
    """A learned query attends over the valid frames; the query starts at zero, i.e. at a masked mean."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim))
        self.key = nn.Linear(dim, dim)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """frames (B, T, D), mask (B, T) -> (B, D)."""
        scores = self.key(frames) @ self.query / math.sqrt(frames.shape[-1])  # (B, T)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1) * mask  # (B, T); zero on padding even if a row has no valid frame
        return (weights.unsqueeze(-1) * frames).sum(dim=1)  # (B, D)


def masked_mean(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the valid frames: frames (B, T, D), mask (B, T) -> (B, D)."""
    weights = mask.to(frames.dtype).unsqueeze(-1)  # (B, T, 1)
    return (frames * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, D)


@ENCODERS.register("video.frames")
class VideoFramesEncoder(Encoder):
    """Frames sampled from a video file (OpenCV) or a list of RGB frames, embedded by an image encoder.

    tokens are the per-frame pooled image embeddings (B, T, D), mask marks real frames (shorter
    videos are padded), pooled is the masked mean or attention pooling over time. Padded frames go
    through the image encoder too, which keeps shapes static for export at the cost of some compute.
    """

    modality = Modality.VIDEO
    Params = VideoParams
    input_names = ("frames", "frame_mask")
    example_params = {
        "image_encoder": {"name": "image.open_clip", "params": {"model_name": EXAMPLE_MODEL}},
        "num_frames": 3,
    }

    def __init__(self, params: VideoParams) -> None:
        super().__init__(params)
        encoder_class = ENCODERS.get(params.image_encoder.name)
        if len(encoder_class.input_names) != 1:
            raise ValueError(
                f"image_encoder {params.image_encoder.name!r} takes {list(encoder_class.input_names)}; "
                f"video.frames needs an image encoder with one input array"
            )
        self.image_encoder: Encoder = encoder_class(encoder_class.Params.model_validate(params.image_encoder.params))
        self.image_input = encoder_class.input_names[0]
        self.output_dim = self.image_encoder.output_dim
        self.attention = AttentionPooling(self.output_dim) if params.pooling == "attention" else None
        self.eval()

    def preprocess(self, items: list[Any]) -> dict[str, np.ndarray]:
        """Videos -> frames (B, T, ...image input shape) float32 and frame_mask (B, T) bool, zero-padded."""
        if not items:
            raise InputError("videos: empty batch; expected at least one video file path or list of frames")
        videos = [sample_frames(item, self.params, f"video {index}") for index, item in enumerate(items)]
        length = self.params.num_frames or max(len(frames) for frames in videos)
        per_frame = [self.image_encoder.preprocess(frames)[self.image_input] for frames in videos]
        frames = np.zeros((len(videos), length, *per_frame[0].shape[1:]), dtype=np.float32)  # (B, T, 3, H, W)
        frame_mask = np.zeros((len(videos), length), dtype=bool)  # (B, T)
        for index, arrays in enumerate(per_frame):
            frames[index, : len(arrays)] = arrays
            frame_mask[index, : len(arrays)] = True
        return {"frames": frames, "frame_mask": frame_mask}

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> Embedding:
        """frames (B, T, ...) and frame_mask (B, T) -> per-frame tokens (B, T, D), pooled (B, D)."""
        batch, length = frame_mask.shape
        flat = frames.flatten(0, 1)  # (B*T, 3, H, W)
        per_frame = self.image_encoder(**{self.image_input: flat}).pooled  # (B*T, D)
        tokens = per_frame.reshape(batch, length, -1) * frame_mask.unsqueeze(-1)  # (B, T, D), zero on padding
        pooled = masked_mean(tokens, frame_mask) if self.attention is None else self.attention(tokens, frame_mask)
        return Embedding(tokens=tokens, pooled=pooled, mask=frame_mask)
