"""The live page's routes and its authentication: the service's API keys and JWTs, sessions, read-only roles."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import cv2
import numpy as np
import pytest
import yaml

from mmfusion.cameras.live import LiveBoard, LiveCamera
from mmfusion.cameras.view.app import LiveView
from mmfusion.cameras.view.auth import SESSION_COOKIE, ViewAuth
from mmfusion.cameras.view.server import ViewServer
from mmfusion.security.auth import AuthConfig, JwtConfig
from mmfusion.security.rbac import PolicyStore
from tests.cameras.conftest import judged
from tests.security.conftest import AUDIENCE, JWT_SECRET, ROOMY_FAILURES, token, write_keys

KEYS = {"viewer": "key-viewer-0123456789", "operator": "key-operator-0123456789"}
POLICY = {
    "roles": {
        "viewer": {"rpcs": ["ListModels"], "models": ["pcb-*"]},  # read-only: may call no inspection at all
        "operator": {"rpcs": ["Inspect", "StreamInspect"], "models": ["*"]},
    }
}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _get(url: str, headers: dict | None = None, data: bytes | None = None):
    """(status, headers, body) without following redirects."""
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


@pytest.fixture
def board() -> LiveBoard:
    cameras = [LiveCamera("line-1", "pcb-template", 60, 12), LiveCamera("audio-desk", "call-centre", 60, 12)]
    for camera in cameras:
        for sequence in (1, 2, 3):
            camera(judged(camera.name, sequence, defect=sequence >= 2))
    return LiveBoard(cameras)


@pytest.fixture
def secured(tmp_path, board):
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    jwt = JwtConfig(secret=JWT_SECRET, audience=AUDIENCE)
    auth = AuthConfig(write_keys(tmp_path / "keys.yaml", KEYS), jwt, failure_limit=ROOMY_FAILURES)
    server = ViewServer(LiveView(board, ViewAuth(auth, PolicyStore(policy)))).start()
    yield server.url
    server.stop()


def test_an_open_view_serves_pages_state_frames_and_the_gallery(board):
    server = ViewServer(LiveView(board)).start()
    try:
        status, headers, body = _get(server.url + "/")
        assert status == 200 and b"/static/view.js" in body and "script-src" not in headers["Content-Security-Policy"]
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        state = json.loads(_get(server.url + "/api/cameras")[2])
        line = state["cameras"][0]
        assert [c["name"] for c in state["cameras"]] == ["line-1", "audio-desk"]
        assert line["frame"] == 3 and line["defect"] and [v["defect"] for v in line["history"]] == [False, True, True]
        assert line["gallery"] == [
            {"id": 1, "time": line["gallery"][0]["time"], "frame": 2, "verdict": "defect", "labels": ["short"]}
        ]  # the frame where the verdict turned
        status, headers, body = _get(server.url + "/cameras/line-1/frame.jpg")
        assert status == 200 and headers["X-Frame-Number"] == "3" and body[:2] == b"\xff\xd8"
        assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)
        assert _get(server.url + "/cameras/line-1/defects/1.jpg")[0] == 200
        assert _get(server.url + "/cameras/line-1/defects/9.jpg")[0] == 404
        assert _get(server.url + "/cameras/nope/frame.jpg")[0] == 404
        assert _get(server.url + "/camera/line-1")[0] == 200
        assert _get(server.url + "/static/view.css")[0] == 200
        assert _get(server.url + "/login")[0] == 303  # nothing to log in to
    finally:
        server.stop()


def test_the_mjpeg_stream_pushes_a_part_per_new_frame(board):
    server = ViewServer(LiveView(board, max_fps=20)).start()
    camera = board.get("line-1")
    try:
        with urllib.request.urlopen(server.url + "/cameras/line-1/live.mjpg", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("multipart/x-mixed-replace; boundary=")
            numbers = []
            while len(numbers) < 3:
                line = response.readline()
                if line.startswith(b"X-Frame-Number:"):
                    numbers.append(int(line.split(b":")[1]))
                    camera(judged("line-1", numbers[-1] + 1))
        assert numbers == [3, 4, 5]
    finally:
        server.stop()


def test_no_credentials_no_view(secured):
    assert _get(secured + "/api/cameras")[0] == 401
    assert _get(secured + "/cameras/line-1/frame.jpg")[0] == 401
    assert _get(secured + "/cameras/line-1/live.mjpg")[0] == 401
    status, headers, _ = _get(secured + "/")
    assert status == 303 and headers["Location"] == "/login"
    assert _get(secured + "/login")[0] == 200
    assert _get(secured + "/api/cameras", {"authorization": "ApiKey wrong-key"})[0] == 401
    assert _get(secured + "/api/cameras", {"authorization": f"Bearer {token('viewer', key='x' * 40)}"})[0] == 401


def test_a_read_only_role_watches_the_cameras_its_models_allow(secured):
    for headers in ({"authorization": f"ApiKey {KEYS['viewer']}"}, {"authorization": f"Bearer {token('viewer')}"}):
        status, _, body = _get(secured + "/api/cameras", headers)
        assert status == 200
        assert [c["name"] for c in json.loads(body)["cameras"]] == ["line-1"]  # call-centre is not pcb-*
        assert _get(secured + "/cameras/line-1/frame.jpg", headers)[0] == 200
        assert _get(secured + "/cameras/audio-desk/frame.jpg", headers)[0] == 404
    operator = {"x-api-key": KEYS["operator"]}
    assert len(json.loads(_get(secured + "/api/cameras", operator)[2])["cameras"]) == 2
    stranger = {"authorization": f"Bearer {token('admin')}"}  # a valid token whose role the policy lacks
    assert _get(secured + "/api/cameras", stranger)[0] == 403


def test_login_gives_a_strict_http_only_session_cookie_and_logout_ends_it(secured):
    form = urllib.parse.urlencode({"credential": KEYS["viewer"]}).encode()
    status, headers, _ = _get(secured + "/login", data=form)
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    session = {"cookie": cookie.split(";")[0]}
    assert _get(secured + "/", session)[0] == 200
    assert _get(secured + "/api/cameras", session)[0] == 200
    bad = urllib.parse.urlencode({"credential": "mmk_nobody_secret"}).encode()
    status, headers, _ = _get(secured + "/login", data=bad)
    assert status == 303 and headers["Location"] == "/login?failed=1" and "Set-Cookie" not in headers
    assert _get(secured + "/logout", session, data=b"")[0] == 303
    assert _get(secured + "/api/cameras", session)[0] == 401
