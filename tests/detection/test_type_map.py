"""`mmfusion eval` on boxes files with DeepPCB's type ids: scored by type through a type map, refused without one."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from mmfusion.cli.main import main
from mmfusion.data.manifest import write_manifest
from mmfusion.heads.detection.head import WEIGHTS_FILE
from mmfusion.repository.folder import FITTED_DIR, models_root
from tests.detection.boards import clean_board, defective_board

MODEL = models_root() / "pcb-template"


@pytest.fixture()
def ids_manifest(tmp_path) -> Path:
    """The synthetic board pair with its short (DeepPCB id 2) and spur (4), ids comma- and space-separated."""
    if not (MODEL / FITTED_DIR / "defects" / WEIGHTS_FILE).is_file():
        pytest.skip(f"{MODEL} has no fitted detector (run python -m mmfusion.fitting.deeppcb)")
    cv2.imwrite(str(tmp_path / "template.png"), clean_board())
    cv2.imwrite(str(tmp_path / "tested.png"), defective_board())
    (tmp_path / "boxes.txt").write_text("235,125,265,178,2\n322 410 352 440 4\n")
    row = {"image": tmp_path / "tested.png", "label": "defect", "reference": tmp_path / "template.png"}
    return write_manifest(tmp_path / "test.csv", [{**row, "boxes": tmp_path / "boxes.txt"}])


@pytest.mark.slow
def test_deeppcb_ids_are_scored_by_type_with_a_type_map(ids_manifest, capsys):
    assert main(["eval", "pcb-template", "--test", str(ids_manifest), "--type-map", "deeppcb", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["boxes"]["typed"] is True and "boxes_any_type" not in summary
    assert summary["fscore"] == 1.0 and set(summary["boxes"]["per_class"]) == {"short", "spur"}
    ids_manifest.with_name("test.types.yaml").write_text("2: short\n4: spur\n")  # the manifest's own map
    assert main(["eval", "pcb-template", "--test", str(ids_manifest), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fscore"] == 1.0


@pytest.mark.slow
def test_ids_without_a_type_map_are_refused_naming_file_line_and_types(ids_manifest, capsys):
    assert main(["eval", "pcb-template", "--test", str(ids_manifest)]) == 2
    error = capsys.readouterr().err
    assert "boxes.txt:1: box type '2' is not one of the box types of head defects" in error
    assert "(open, short, mousebite, spur, copper, pin-hole)" in error and "--type-map deeppcb" in error


def test_an_unknown_id_in_the_map_is_refused_before_any_work(ids_manifest, capsys):
    ids_manifest.with_name("boxes.txt").write_text("235 125 265 178 2\n322 410 352 440 8\n")
    assert main(["eval", "pcb-template", "--test", str(ids_manifest), "--type-map", "deeppcb"]) == 2
    error = capsys.readouterr().err
    assert "line 2: boxes: " in error
    assert "boxes.txt:2: type '8' is not in the type map 'deeppcb'; expected one of 1, 2, 3, 4, 5, 6" in error
