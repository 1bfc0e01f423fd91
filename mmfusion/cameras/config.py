"""The camera list: a YAML file of cameras (source, model, reference, rate, crop) plus recording and view settings.

```yaml
cameras:
  - name: line-1                      # letters, digits, '-', '_', '.'; names streams, files, metrics, URLs
    url: rtsp://10.0.0.5:8554/cam     # rtsp(s)://, http(s):// (MJPEG), /dev/videoN or usb:N, or a video file
    model: pcb-template
    reference: refs/line-1.jpg        # golden-template models: the defect-free part (relative to this file)
    fps: 15                           # frames sent per second; the newest frame wins, older ones are dropped
    roi: {x: 0, y: 0, width: 640, height: 640}
record: {folder: out/cameras, max_files: 2000, max_bytes: 500000000}
```

Errors name the file, the key path, the value and what was expected (as model configs do).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from mmfusion.config import ConfigError, format_validation_error

CAMERA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")
VIDEO_DEVICE = re.compile(r"^(/dev/video\d+|usb:\d+)$")
MAX_FPS = 120.0
MAX_CAMERAS = 64


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Roi(Strict):
    """The part of each frame that is sent: x, y of its top-left corner, width and height, in pixels."""

    x: Annotated[int, Field(ge=0)] = 0
    y: Annotated[int, Field(ge=0)] = 0
    width: Annotated[int, Field(gt=0)]
    height: Annotated[int, Field(gt=0)]


class Smoothing(Strict):
    """StreamInspect's k-of-n smoothing: the reported verdict changes only to one seen in `min_count` of `window`."""

    window: Annotated[int, Field(ge=0, le=64)] = 5
    min_count: Annotated[int, Field(ge=0, le=64)] = 3

    @model_validator(mode="after")
    def _k_within_n(self) -> Smoothing:
        if self.min_count > self.window:
            raise ValueError(f"min_count {self.min_count} > window {self.window}; expected k <= n")
        return self


class CameraSpec(Strict):
    """One camera: where its frames come from and which model inspects them."""

    name: str
    url: str
    model: Annotated[str, Field(min_length=1)]
    reference: Path | None = None
    fps: Annotated[float, Field(gt=0, le=MAX_FPS)] = 15.0
    roi: Roi | None = None
    smoothing: Smoothing = Smoothing()
    max_pending_frames: Annotated[int, Field(ge=1, le=8)] = 2
    heatmap: bool = True  # ask the server for the heatmap of models that make one (drawn on the live view)
    heatmap_max_side: int = Field(default=160, ge=0, le=8192)  # its longer side in pixels (0: the frame's size)
    loop: bool = False  # video files: start again at the end instead of reconnecting
    jpeg_quality: Annotated[int, Field(ge=30, le=100)] = 90  # frames travel to the server as JPEG

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not CAMERA_NAME.match(value):
            raise ValueError("expected 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        scheme = value.partition("://")[0].lower() if "://" in value else ""
        if scheme:
            if scheme not in NETWORK_SCHEMES:
                raise ValueError(f"scheme {scheme!r}; expected one of {', '.join(NETWORK_SCHEMES)}, a device or a file")
            return value
        if VIDEO_DEVICE.match(value):
            return value
        path = _resolve(value, info)
        if not path.is_file():
            raise ValueError(
                "no such video file; expected rtsp://..., http://... (MJPEG), /dev/videoN, usb:N or a video file"
            )
        return str(path)

    @field_validator("reference")
    @classmethod
    def _reference(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        path = _resolve(str(value), info)
        if not path.is_file():
            raise ValueError("no such image file (a relative path is read from the camera file's folder)")
        return path

    @property
    def kind(self) -> str:
        """rtsp, http (MJPEG), device or file."""
        scheme = self.url.partition("://")[0].lower() if "://" in self.url else ""
        if scheme in ("rtsp", "rtsps"):
            return "rtsp"
        if scheme in ("http", "https"):
            return "http"
        return "device" if VIDEO_DEVICE.match(self.url) else "file"


class RecordSpec(Strict):
    """Where defects are recorded and how much is kept: the oldest go first past either limit."""

    folder: Path = Path("out/cameras")
    max_files: Annotated[int, Field(ge=10)] = 2000
    max_bytes: Annotated[int, Field(ge=1_000_000)] = 500_000_000
    min_interval_s: Annotated[float, Field(ge=0)] = 1.0  # at most one record per camera per interval

    @field_validator("folder")
    @classmethod
    def _folder(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve(str(value), info)


class ReconnectSpec(Strict):
    """Backoff between attempts to reopen a source that stopped: doubles from `initial_s` up to `max_s`."""

    initial_s: Annotated[float, Field(gt=0, le=60)] = 0.25
    max_s: Annotated[float, Field(gt=0, le=300)] = 2.0
    open_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0  # opening, and waiting for a frame, gives up after

    @model_validator(mode="after")
    def _order(self) -> ReconnectSpec:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s {self.max_s} < initial_s {self.initial_s}; expected max_s >= initial_s")
        return self


class ViewSpec(Strict):
    """The live page: where it listens and how often a tile may change."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    max_fps: Annotated[float, Field(gt=0, le=30)] = 10.0  # frames per second pushed to each open tile
    history: Annotated[int, Field(ge=1, le=1000)] = 60  # verdicts kept per camera
    gallery: Annotated[int, Field(ge=1, le=100)] = 12  # last defects kept per camera


class CamerasConfig(Strict):
    """The whole file."""

    cameras: Annotated[list[CameraSpec], Field(min_length=1, max_length=MAX_CAMERAS)]
    record: RecordSpec = RecordSpec()
    reconnect: ReconnectSpec = ReconnectSpec()
    view: ViewSpec = ViewSpec()

    @model_validator(mode="after")
    def _unique_names(self) -> CamerasConfig:
        seen: set[str] = set()
        for camera in self.cameras:
            if camera.name in seen:
                raise ValueError(f"camera name {camera.name!r} appears twice; expected unique names")
            seen.add(camera.name)
        return self

    def camera(self, name: str) -> CameraSpec:
        return next(camera for camera in self.cameras if camera.name == name)


def _resolve(value: str, info: ValidationInfo) -> Path:
    """A path as written, relative ones against the camera file's folder."""
    path = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    return path if path.is_absolute() or base is None else Path(base) / path


def parse_cameras(raw: object, source: str, base_dir: Path | None = None) -> CamerasConfig:
    """Validate a parsed YAML document; ConfigError lines read `<source>: <key path>: <problem> (got <value>)`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'cameras:' list, got {type(raw).__name__}")
    try:
        return CamerasConfig.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as error:
        raise ConfigError(format_validation_error(source, error, CamerasConfig)) from None


def load_cameras(path: str | Path) -> CamerasConfig:
    """Read and validate a camera file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the camera file ({error.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    return parse_cameras(raw, str(path), path.resolve().parent)
