"""The live page on a uvicorn server in a thread of its own: start() returns once it listens, stop() ends it."""

from __future__ import annotations

import threading
import time

import uvicorn

from mmfusion.cameras.view.app import LiveView

START_TIMEOUT_S = 15.0


class ViewServer:
    """Serves a LiveView on host:port (0 = any free port); with cert and key files, over TLS."""

    def __init__(
        self,
        view: LiveView,
        host: str = "127.0.0.1",
        port: int = 0,
        certfile: str | None = None,
        keyfile: str | None = None,
    ) -> None:
        self.view = view
        config = uvicorn.Config(
            view.app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
            timeout_graceful_shutdown=2,
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.host = host
        self.port = port
        self._thread = threading.Thread(target=self.server.run, name="camera-view", daemon=True)

    @property
    def url(self) -> str:
        scheme = "https" if self.server.config.ssl_certfile else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> ViewServer:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"live view: cannot listen on {self.host}:{self.server.config.port}")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.view.closing.set()
        self.server.should_exit = True
        self._thread.join(10)
