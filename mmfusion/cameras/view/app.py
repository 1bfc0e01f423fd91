"""The live page (Starlette): one tile per camera, MJPEG pushed per tile, a detail page, JSON state, login.

    GET  /                             tiles (static/index.html)            GET /camera/NAME    detail page
    GET  /api/cameras[/NAME]           JSON: fps, latency, verdict history, gallery
    GET  /cameras/NAME/live.mjpg       the drawn frames, pushed as multipart/x-mixed-replace when they change
    GET  /cameras/NAME/frame.jpg       the newest drawn frame (X-Frame-Number header)
    GET  /cameras/NAME/defects/ID.jpg  a gallery shot
    GET|POST /login, POST /logout      a session cookie from an API key or JWT (see auth.py)

Static files come from the package (no build step, no CDN). Frames are drawn on the server with OpenCV,
once per judged frame, whoever watches.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mmfusion.cameras.live import LiveBoard, LiveCamera
from mmfusion.cameras.view.auth import (
    SESSION_COOKIE,
    AuthenticationError,
    NotAllowed,
    TooManyFailures,
    ViewAuth,
)
from mmfusion.security.auth import Caller

LOG = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
BOUNDARY = "mmfusionlive"
MAX_LOGIN_BYTES = 16_384
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class LiveView:
    """The page's routes over a LiveBoard; `app` is the ASGI application."""

    def __init__(self, board: LiveBoard, auth: ViewAuth | None = None, max_fps: float = 10.0, secure: bool = False):
        self.board = board
        self.auth = auth or ViewAuth()
        self.max_fps = max_fps
        self.secure = secure  # served over TLS: the session cookie is Secure
        self.closing = threading.Event()  # set on shutdown: open MJPEG streams end
        routes = [
            Route("/", self.page("index.html")),
            Route("/camera/{name}", self.page("camera.html")),
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/api/cameras", self.api_cameras),
            Route("/api/cameras/{name}", self.api_camera),
            Route("/cameras/{name}/frame.jpg", self.frame),
            Route("/cameras/{name}/live.mjpg", self.live),
            Route("/cameras/{name}/defects/{shot:int}.jpg", self.defect),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        ]
        self.app = Starlette(routes=routes)
        self.app.add_middleware(_SecurityHeaders)

    # -- who is asking ------------------------------------------------------------------------------

    def _caller(self, request: Request) -> Caller | Response:
        """The request's caller, or the response that refuses it (login page for pages, 401/403/429 otherwise)."""
        client = request.client.host if request.client else None
        headers = {key: value for key, value in request.headers.items()}
        try:
            return self.auth.authenticate(headers, request.cookies.get(SESSION_COOKIE), client)
        except TooManyFailures as error:
            return JSONResponse({"error": str(error)}, 429, {"Retry-After": str(max(1, error.retry_ms // 1000))})
        except NotAllowed as error:
            return JSONResponse({"error": str(error)}, 403)
        except AuthenticationError as error:
            if request.url.path in ("/",) or request.url.path.startswith("/camera/"):
                return RedirectResponse("/login", 303)
            return JSONResponse({"error": str(error)}, 401, {"WWW-Authenticate": 'ApiKey, Bearer realm="mmfusion"'})

    def _camera(self, request: Request) -> tuple[LiveCamera | None, Response | None]:
        caller = self._caller(request)
        if isinstance(caller, Response):
            return None, caller
        camera = self.board.get(request.path_params["name"])
        if camera is None or not self.auth.allows_model(caller, camera.model):
            return None, JSONResponse({"error": f"no camera {request.path_params['name']!r}"}, 404)
        return camera, None

    # -- pages ----------------------------------------------------------------------------------------

    def page(self, file_name: str):
        async def endpoint(request: Request) -> Response:
            if "name" in request.path_params:
                _camera, refused = self._camera(request)
            else:
                caller = self._caller(request)
                refused = caller if isinstance(caller, Response) else None
            return refused or FileResponse(STATIC / file_name, media_type="text/html")

        return endpoint

    async def login_page(self, request: Request) -> Response:
        if not self.auth.enabled:
            return RedirectResponse("/", 303)
        return FileResponse(STATIC / "login.html", media_type="text/html")

    async def login(self, request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_LOGIN_BYTES:
            return JSONResponse({"error": "login form too large"}, 413)
        credential = parse_qs(body.decode(errors="replace")).get("credential", [""])[0]
        client = request.client.host if request.client else None
        try:
            token, session = self.auth.login(credential, client)
        except TooManyFailures as error:
            return JSONResponse({"error": str(error)}, 429)
        except NotAllowed as error:
            return JSONResponse({"error": str(error)}, 403)
        except AuthenticationError:
            return RedirectResponse("/login?failed=1", 303)
        response = RedirectResponse("/", 303)
        max_age = max(1, int(session.expires - time.time()))
        response.set_cookie(
            SESSION_COOKIE, token, max_age=max_age, httponly=True, samesite="strict", secure=self.secure, path="/"
        )
        return response

    async def logout(self, request: Request) -> Response:
        self.auth.logout(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login" if self.auth.enabled else "/", 303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # -- data -----------------------------------------------------------------------------------------

    async def api_cameras(self, request: Request) -> Response:
        caller = self._caller(request)
        if isinstance(caller, Response):
            return caller
        cameras = [c.summary() for c in self.board.cameras.values() if self.auth.allows_model(caller, c.model)]
        return JSONResponse({"cameras": cameras, "user": caller.id, "auth": self.auth.enabled})

    async def api_camera(self, request: Request) -> Response:
        camera, refused = self._camera(request)
        return refused or JSONResponse(camera.summary(history=camera.history.maxlen or 60))

    async def frame(self, request: Request) -> Response:
        camera, refused = self._camera(request)
        if refused is not None:
            return refused
        drawn = await run_in_threadpool(camera.frame_jpeg)
        if drawn is None:
            return JSONResponse({"error": f"camera {camera.name!r}: no judged frame yet"}, 404)
        return Response(drawn[1], media_type="image/jpeg", headers={"X-Frame-Number": str(drawn[0])})

    async def defect(self, request: Request) -> Response:
        camera, refused = self._camera(request)
        if refused is not None:
            return refused
        shot = camera.shot(request.path_params["shot"])
        if shot is None:
            return JSONResponse({"error": "no such defect shot (the gallery keeps the last few)"}, 404)
        return Response(shot.jpeg, media_type="image/jpeg")

    async def live(self, request: Request) -> Response:
        camera, refused = self._camera(request)
        if refused is not None:
            return refused
        return StreamingResponse(
            self._parts(request, camera), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        )

    async def _parts(self, request: Request, camera: LiveCamera):
        """A part whenever the tile's frame changed, at most max_fps a second, until the viewer leaves or shutdown."""
        interval, sent = 1.0 / self.max_fps, -1
        while not self.closing.is_set():
            if camera.sequence != sent:
                drawn = await run_in_threadpool(camera.frame_jpeg)
                if drawn is not None and drawn[0] != sent:
                    sent = drawn[0]
                    head = (
                        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(drawn[1])}\r\n"
                        f"X-Frame-Number: {drawn[0]}\r\n\r\n"
                    )
                    yield head.encode() + drawn[1] + b"\r\n"
            await asyncio.sleep(interval)  # a viewer who leaves cancels this generator (StreamingResponse)


class _SecurityHeaders:
    """Adds HEADERS to every response (pure ASGI, so streamed responses keep streaming)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                present = {key.lower() for key, _ in message.get("headers", [])}
                extra = [
                    (k.lower().encode(), v.encode()) for k, v in HEADERS.items() if k.lower().encode() not in present
                ]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
