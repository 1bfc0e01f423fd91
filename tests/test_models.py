"""Every model folder in models/ loads, and the embedded-default pipeline gives sensible verdicts."""

from __future__ import annotations

import pytest

from mmfusion.config import load_config
from mmfusion.pipeline import Pipeline
from mmfusion.repository.folder import models_root

MODEL_DIRS = sorted(path.parent for path in models_root().glob("*/config.yaml"))


def test_model_repository_is_not_empty():
    assert any(path.name == "pcb-inspect" for path in MODEL_DIRS)


@pytest.mark.parametrize("model_dir", MODEL_DIRS, ids=lambda path: path.name)
def test_model_config_is_valid(model_dir):
    config = load_config(model_dir)
    assert config.name == model_dir.name
    assert (model_dir / "README.md").is_file(), "every model folder documents its sources"


@pytest.fixture(scope="module")
def pcb_inspect() -> Pipeline:
    return Pipeline("pcb-inspect")


@pytest.mark.slow
def test_pcb_inspect_verdicts_on_unseen_boards(pcb_inspect, samples):
    clean = pcb_inspect.predict(image=samples / "pcb_template.jpg", text="checked, all pads and traces look clean")
    broken = pcb_inspect.predict(image=samples / "pcb_tested.jpg", text="spur on a trace and a pin-hole near the via")
    assert clean.outputs["verdict"]["label"] == "pass"
    assert broken.outputs["verdict"]["label"] == "defect"
    assert broken.outputs["verdict"]["scores"]["defect"] > clean.outputs["verdict"]["scores"]["defect"]
    assert len(clean.outputs["embedding"]["embedding"]) == 1280
