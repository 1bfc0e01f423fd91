"""`make run` (mmfusion demo) in-process sections: every section prints its real result."""

from __future__ import annotations

import re

from mmfusion.demo.run import run_demo


def test_demo_local_sections(capsys, tmp_path):
    run_demo(out_dir=tmp_path, service=False)
    out = capsys.readouterr().out
    for section in ("1. image check", "2. transcription", "3. text similarity", "4. fused prediction", "5. golden"):
        assert section in out
    assert "Egyptian cat" in out  # chelsea.jpg through the embedded ImageNet weights
    found = re.search(r"pcb_tested.jpg vs pcb_template.jpg -> defect, (\d+) defects", out)
    assert found and int(found.group(1)) >= 5  # the sample pair has 10 annotated defects


def test_demo_camera_section_streams_the_boards_with_a_live_page(capsys, tmp_path):
    """Section 6: pcb-template boxes on the tested board only, anomaly scores, heatmaps, a live page meanwhile."""
    import json
    import urllib.request

    from mmfusion.client import InspectionClient
    from mmfusion.demo.cameras import CAMERA_MODELS, camera_section
    from mmfusion.resources import samples_root
    from mmfusion.serving import build_server

    pages = []

    def while_live(url: str) -> None:
        with urllib.request.urlopen(f"{url}/api/cameras", timeout=10) as response:
            pages.append((url, response.status, json.loads(response.read())))

    server = build_server(CAMERA_MODELS, port=0).start()
    target = f"127.0.0.1:{server.port}"
    try:
        judged = camera_section(lambda: InspectionClient(target, timeout=None), samples_root(), tmp_path, while_live)
    finally:
        server.stop(grace=1.0)
    out = capsys.readouterr().out

    boards = judged["boards"]
    assert boards["pcb_tested.jpg"].verdict == "defect" and len(boards["pcb_tested.jpg"].answer.result.boxes) >= 5
    assert boards["pcb_template.jpg"].verdict == "pass" and not boards["pcb_template.jpg"].answer.result.boxes
    frames = judged["frames"]
    assert len(frames) == 12 and all(r.answer.result.heatmap_png.startswith(b"\x89PNG") for r in frames.values())
    assert re.search(r"pcb_tested\.jpg\s+-> defect [\d.]+, \d+ boxes", out)
    assert re.search(r"pcb_template\.jpg\s+-> pass [\d.]+, 0 boxes", out)
    assert "anomaly score" in out and "heatmap" in out

    url, status, state = pages[0]  # answered while the section ran
    assert status == 200 and {camera["name"] for camera in state["cameras"]} == {"boards", "frames"}
    assert f"live page on {url}/ (it stops with the demo)" in out
    assert "live page stopped" in out
    try:
        urllib.request.urlopen(f"{url}/api/cameras", timeout=2)
        raise AssertionError("the live page still answers after the section")
    except OSError:
        pass
    assert len(list(tmp_path.glob("boards_*.jpg"))) == 2 and len(list(tmp_path.glob("frames_*.jpg"))) == 12
