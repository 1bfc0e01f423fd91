"""Every camera of a camera file, running: readers -> StreamInspect calls -> recorder, metrics and live tiles."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mmfusion.cameras.capture import CameraReader, SourceOpener
from mmfusion.cameras.config import CamerasConfig
from mmfusion.cameras.live import LiveBoard, LiveCamera
from mmfusion.cameras.metrics import CameraGauges, CameraMetrics
from mmfusion.cameras.recorder import DefectRecorder
from mmfusion.cameras.sources import FrameSource
from mmfusion.cameras.stream import CameraStream, Listener
from mmfusion.client import InspectionClient


@dataclass
class Camera:
    """One running camera: its reader, its call, its tile."""

    reader: CameraReader
    stream: CameraStream
    live: LiveCamera


@dataclass
class CameraSystem:
    """Builds and runs the cameras of `config` against the server `connect()` reaches; `stop()` ends them all.

    `record`: write defects to config.record.folder; `listeners`: more result listeners (benchmarks).
    """

    config: CamerasConfig
    connect: Callable[[], InspectionClient]
    record: bool = True
    listeners: list[Listener] = field(default_factory=list)
    opener: SourceOpener = FrameSource
    cameras: dict[str, Camera] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.metrics = CameraMetrics()
        self.recorder = DefectRecorder(self.config.record) if self.record else None
        view = self.config.view
        for spec in self.config.cameras:
            reader = CameraReader(spec, self.config.reconnect, self.opener)
            live = LiveCamera(spec.name, spec.model, view.history, view.gallery)
            listeners: list[Listener] = [live, self.metrics, *self.listeners]
            if self.recorder is not None:
                listeners.append(self.recorder)
            stream = CameraStream(spec, reader, self.connect, self.config.reconnect, listeners)
            self.metrics.add_camera(spec.name, CameraGauges(reader, stream, live.rate))
            self.cameras[spec.name] = Camera(reader, stream, live)
        self.board = LiveBoard([camera.live for camera in self.cameras.values()])

    def start(self) -> CameraSystem:
        for camera in self.cameras.values():
            camera.reader.start()
            camera.stream.start()
        return self

    def stop(self) -> None:
        for camera in self.cameras.values():
            camera.stream.request_stop()
            camera.reader.request_stop()
        for camera in self.cameras.values():
            camera.stream.stop()
            camera.reader.stop()
        self.metrics.stop_http()

    def __enter__(self) -> CameraSystem:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
