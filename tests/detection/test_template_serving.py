"""One gRPC Inspect with a reference_image through a real server on a loopback port: typed boxes come back."""

from __future__ import annotations

import shutil

import pytest

from mmfusion.client import InspectionClient, image_message
from mmfusion.heads.detection.head import WEIGHTS_FILE
from mmfusion.proto import inspection_pb2 as pb
from mmfusion.repository.folder import FITTED_DIR, models_root
from mmfusion.serving import build_server
from tests.detection.boards import SHORT_CENTRE, SPUR_CENTRE, clean_board, defective_board, near

MODEL = models_root() / "pcb-template"


def test_inspect_with_reference_image_returns_typed_boxes(tmp_path):
    if not (MODEL / FITTED_DIR / "defects" / WEIGHTS_FILE).is_file():
        pytest.skip(f"{MODEL} has no fitted detector (run python -m mmfusion.fitting.deeppcb)")
    shutil.copytree(MODEL, tmp_path / "pcb-template")
    with build_server(["pcb-template"], port=0, model_root=tmp_path) as server:
        with InspectionClient(f"127.0.0.1:{server.port}", timeout=60) as client:
            client.wait_ready(10)
            request = pb.InspectRequest(
                model="pcb-template",
                image=image_message(defective_board()),
                reference_image=image_message(clean_board()),
                include_heatmap=True,
            )
            result = client.stub.Inspect(request, timeout=60)
            missing = pb.InspectRequest(model="pcb-template", image=image_message(defective_board()))
            with pytest.raises(Exception, match="reference_image: missing"):
                client.stub.Inspect(missing, timeout=60)
    assert result.verdict == "defect"
    boxes = [{"x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2, "label": b.label, "score": b.score} for b in result.boxes]
    assert any(b["label"] == "short" and near(b, SHORT_CENTRE) for b in boxes), boxes
    assert any(b["label"] == "spur" and near(b, SPUR_CENTRE) for b in boxes), boxes
    assert result.heatmap_png.startswith(b"\x89PNG")
