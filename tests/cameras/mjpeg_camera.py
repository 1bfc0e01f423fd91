"""A tiny HTTP MJPEG camera for tests: JPEG frames in a loop at a fixed rate; stop() kills it, start() revives it."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

BOUNDARY = b"mmfusionframe"


def jpeg(image_rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return data.tobytes()


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True  # restarted on the same port at once
    daemon_threads = True


class MjpegCamera:
    """Serves `frames` (RGB arrays) as multipart/x-mixed-replace at `fps` on 127.0.0.1:port (0 = any free port)."""

    def __init__(self, frames: list[np.ndarray], fps: float = 10.0, port: int = 0) -> None:
        self.jpegs = [jpeg(frame) for frame in frames]
        self.fps = fps
        self.port = port
        self.served = 0  # frames written, all clients together
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._running = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mjpg"

    def start(self) -> MjpegCamera:
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
                self.end_headers()
                index, started = 0, time.monotonic()
                while camera._running.is_set():
                    data = camera.jpegs[index % len(camera.jpegs)]
                    head = b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % (BOUNDARY, len(data))
                    try:
                        self.wfile.write(head + data + b"\r\n")
                    except OSError:
                        return
                    camera.served += 1
                    index += 1
                    time.sleep(max(0.0, started + index / camera.fps - time.monotonic()))
                with contextlib.suppress(OSError):  # killed: the client sees the connection drop
                    self.connection.shutdown(socket.SHUT_RDWR)

            def log_message(self, *args) -> None:
                pass

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._running.set()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Kill the camera: stop listening and drop every open connection."""
        self._running.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
