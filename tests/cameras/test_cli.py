"""`mmfusion cameras`: a camera file run against an in-process or a given server, with its summary and errors."""

from __future__ import annotations

import json
import re

import yaml

from mmfusion.cli.main import main
from tests.cameras.conftest import MODEL, TEMPLATE


def _write(tmp_path, cameras: list[dict]):
    path = tmp_path / "cameras.yaml"
    record = {"folder": "records", "min_interval_s": 0}
    path.write_text(yaml.safe_dump({"cameras": cameras, "record": record, "view": {"port": 0}}))
    return path


def test_cameras_against_an_in_process_server(tmp_path, mjpeg_camera, tested_board, capsys):
    camera = mjpeg_camera([tested_board], fps=8)
    path = _write(
        tmp_path, [{"name": "line-1", "url": camera.url, "model": MODEL, "reference": str(TEMPLATE), "fps": 3}]
    )
    assert main(["cameras", str(path), "--duration", "8", "--metrics-port", "0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"gRPC server on 127\.0\.0\.1:\d+ with pcb-template", out)
    assert re.search(r"live page on http://127\.0\.0\.1:\d+/", out)
    assert re.search(r"camera metrics on http://127\.0\.0\.1:\d+/metrics", out)
    judged = int(re.search(r"line-1: (\d+) judged", out).group(1))
    assert judged >= 3, out
    records = (tmp_path / "records" / "defects.jsonl").read_text().splitlines()
    assert records and json.loads(records[0])["camera"] == "line-1"


def test_cameras_against_a_given_server_without_view_or_records(tmp_path, server, mjpeg_camera, template_board, capsys):
    camera = mjpeg_camera([template_board], fps=8)
    path = _write(tmp_path, [{"name": "good", "url": camera.url, "model": MODEL, "reference": str(TEMPLATE), "fps": 3}])
    arguments = ["cameras", str(path), "--server", server.target, "--duration", "5", "--no-view", "--no-record"]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "gRPC server on" not in out and "live page" not in out and f"StreamInspect on {server.target}" in out
    assert int(re.search(r"good: (\d+) judged", out).group(1)) >= 2
    assert not (tmp_path / "records").exists()


def test_mistakes_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras:\n  - {name: a, url: 'rtsp://h/c', model: m, fps: -1}\n")
    assert main(["cameras", str(bad)]) == 2
    assert "bad.yaml: cameras.0.fps: Input should be greater than 0 (got -1)" in capsys.readouterr().err
    good = _write(tmp_path, [{"name": "a", "url": "rtsp://h/c", "model": MODEL}])
    assert main(["cameras", str(good), "--view-host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "view host 0.0.0.0 is not loopback: it needs TLS" in err and "--insecure" in err
    assert main(["cameras", str(good), "--policy", str(bad)]) == 2
    assert "--policy" in capsys.readouterr().err
