"""Build and run the gRPC server: Inspection service, health per model, reflection, graceful stop."""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.proto import inspection_pb2_grpc as pb_grpc
from mmfusion.serving.models import ModelManager
from mmfusion.serving.servicer import DEFAULT_MAX_AUDIO_BYTES, InspectionServicer

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Inspection"].full_name
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_GRACE_SECONDS = 10.0


class InspectionServer:
    """A started-or-not gRPC server with its model manager and health servicer."""

    def __init__(self, grpc_server: grpc.Server, port: int, models: ModelManager, health_servicer) -> None:
        self.grpc_server = grpc_server
        self.port = port
        self.models = models
        self.health = health_servicer
        self._stopped = threading.Event()

    def start(self) -> InspectionServer:
        self.grpc_server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        return self

    def stop(self, grace: float | None = DEFAULT_GRACE_SECONDS) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight calls finish within grace, unload models."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait()
        self.models.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops; True if it did within timeout."""
        return self.grpc_server.wait_for_termination(timeout)

    def __enter__(self) -> InspectionServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop(grace=1.0)


def _set_model_health(health_servicer) -> callable:
    def on_change(name: str, loaded: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if loaded else health_pb2.HealthCheckResponse.NOT_SERVING
        health_servicer.set(name, status)

    return on_change


def build_server(
    models: Sequence[str | Path] = (),
    port: int = 0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    host: str = "127.0.0.1",
    model_root: str | Path | None = None,
    backend: str = "torch",
    max_workers: int = 16,
    max_audio_bytes: int = DEFAULT_MAX_AUDIO_BYTES,
) -> InspectionServer:
    """Load the models (names in the repository or folders), bind host:port (0 = any free port); not started."""
    manager = ModelManager(model_root)
    health_servicer = health.HealthServicer()
    manager.add_listener(_set_model_health(health_servicer))
    for model in models:
        manager.load(model, backend=backend, allow_path=True)
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options)
    pb_grpc.add_InspectionServicer_to_server(InspectionServicer(manager, max_audio_bytes), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as error:
        raise OSError(f"cannot listen on {host}:{port}: {error}") from None
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}: the address is in use or not available")
    return InspectionServer(server, bound, manager, health_servicer)


def serve(
    models: Sequence[str | Path],
    port: int,
    host: str = "127.0.0.1",
    grace: float = DEFAULT_GRACE_SECONDS,
    **options,
) -> int:
    """Run until SIGTERM or SIGINT, then stop gracefully; returns the exit status (0)."""
    server = build_server(models, port=port, host=host, **options).start()
    stop_requested = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop_requested.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    loaded = ", ".join(server.models.loaded_names()) or "no models"
    print(f"mmfusion: serving {loaded} on {host}:{server.port}", flush=True)
    try:
        while not stop_requested.wait(0.5):
            pass
    finally:
        server.stop(grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("mmfusion: server stopped", flush=True)
    return 0
