"""The camera file: what it accepts, and errors that name the field, the value and what was expected."""

from __future__ import annotations

import pytest

from mmfusion.cameras.config import load_cameras
from mmfusion.config import ConfigError


def _write(tmp_path, text: str):
    path = tmp_path / "cameras.yaml"
    path.write_text(text)
    return path


def test_a_full_file_resolves_paths_against_its_folder(tmp_path, samples):
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "board.jpg").write_bytes((samples / "pcb_template.jpg").read_bytes())
    path = _write(
        tmp_path,
        """
cameras:
  - name: line-1
    url: rtsp://10.0.0.5:8554/cam
    model: pcb-template
    reference: refs/board.jpg
    fps: 12.5
    roi: {x: 10, y: 20, width: 300, height: 200}
    smoothing: {window: 7, min_count: 4}
  - {name: dock.2, url: "http://cam.local/video.mjpg", model: defect-anomaly}
  - {name: usb, url: "usb:0", model: defect-anomaly}
record: {folder: records, max_files: 100, max_bytes: 2000000}
""",
    )
    config = load_cameras(path)
    first, second, third = config.cameras
    assert first.reference == tmp_path / "refs" / "board.jpg"
    assert (first.fps, first.roi.width, first.smoothing.min_count) == (12.5, 300, 4)
    assert [c.kind for c in config.cameras] == ["rtsp", "http", "device"]
    assert second.smoothing.window == 5 and second.max_pending_frames == 2  # defaults
    assert config.record.folder == tmp_path / "records"
    assert third.url == "usb:0"


@pytest.mark.parametrize(
    ("camera", "expected"),
    [
        ("{name: 'has space', url: 'rtsp://h/c', model: m}", "cameras.0.name: expected 1-64 letters"),
        ("{name: a, url: 'ftp://h/c', model: m}", "cameras.0.url: scheme 'ftp'; expected one of rtsp, rtsps, http"),
        ("{name: a, url: 'missing.mp4', model: m}", "cameras.0.url: no such video file"),
        ("{name: a, url: 'rtsp://h/c', model: m, fps: 0}", "cameras.0.fps: Input should be greater than 0 (got 0)"),
        (
            "{name: a, url: 'rtsp://h/c', model: m, fps: 500}",
            "cameras.0.fps: Input should be less than or equal to 120",
        ),
        ("{name: a, url: 'rtsp://h/c', model: m, reference: nope.jpg}", "cameras.0.reference: no such image file"),
        ("{name: a, url: 'rtsp://h/c', model: m, roi: {x: -1, width: 5, height: 5}}", "cameras.0.roi.x: Input should"),
        ("{name: a, url: 'rtsp://h/c', model: m, smoothing: {window: 2, min_count: 3}}", "min_count 3 > window 2"),
        ("{name: a, url: 'rtsp://h/c', model: m, colour: red}", "cameras.0.colour: unknown key; allowed: name, url"),
        ("{name: a, url: 'rtsp://h/c'}", "cameras.0.model: required key is missing"),
    ],
)
def test_errors_name_the_field_the_value_and_what_was_expected(tmp_path, camera, expected):
    path = _write(tmp_path, f"cameras:\n  - {camera}\n")
    with pytest.raises(ConfigError) as error:
        load_cameras(path)
    assert str(error.value).startswith(f"{path}: ")
    assert expected in str(error.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the camera file"):
        load_cameras(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_cameras(_write(tmp_path, "cameras: [\n"))
    with pytest.raises(ConfigError, match="expected a mapping with a 'cameras:' list, got list"):
        load_cameras(_write(tmp_path, "- a\n"))
    with pytest.raises(ConfigError, match="cameras: List should have at least 1 item"):
        load_cameras(_write(tmp_path, "cameras: []\n"))
    twice = "cameras:\n  - {name: a, url: 'rtsp://h/1', model: m}\n  - {name: a, url: 'rtsp://h/2', model: m}\n"
    with pytest.raises(ConfigError, match="camera name 'a' appears twice; expected unique names"):
        load_cameras(_write(tmp_path, twice))
