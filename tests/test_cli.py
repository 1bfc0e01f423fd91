"""CLI: list, describe, predict; user errors exit 2 with one line and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from mmfusion.cli.main import main
from mmfusion.repository.folder import REPO_MODELS
from tests.test_pipeline import tiny_model

SAMPLES = REPO_MODELS.parent / "samples"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("cli") / "tiny")


def test_list_shows_every_part_and_model(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "image.open_clip",
        "image.efficientnet_lite0",
        "video.frames",
        "speech.whisper",
        "speech.faster_whisper",
        "text.hf",
        "text.open_clip",
        "early",
        "late",
        "cross_attention",
        "classification",
        "multilabel",
        "embedding",
        "torch",
        "pcb-inspect",
    ):
        assert name in out, name


def test_describe(capsys, model_dir):
    assert main(["describe", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "image.efficientnet_lite0" in out and "labels=['red', 'blue']" in out
    assert main(["describe", str(model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fusion"]["name"] == "late"


def test_predict_json(capsys, model_dir):
    assert main(["predict", str(model_dir), "--image", str(model_dir / "red.png"), "--text", "hi", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["modalities"] == ["image", "text"]
    assert result["outputs"]["colour"]["label"] in {"red", "blue"}
    assert len(result["outputs"]["embedding"]["embedding"]) == 1280


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["describe", "no-such-model"], "model 'no-such-model' is neither a folder nor a model"),
        (["predict", "MODEL"], "predict needs at least one of --image"),
        (["predict", "MODEL", "--image", "MODEL/config.yaml"], "not a decodable image"),
        (["predict", "MODEL", "--audio", "MODEL/red.png"], "tiny has no encoder for audio"),
    ],
)
def test_user_errors_exit_2_with_one_line(capsys, model_dir, args, message):
    args = [a.replace("MODEL", str(model_dir)) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("mmfusion: error:")


def test_config_typo_exits_2_without_traceback(tmp_path, model_dir):
    config = yaml.safe_load((model_dir / "config.yaml").read_text())
    config["fusion"]["name"] = "lat"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text(yaml.safe_dump(config))
    process = subprocess.run(
        [sys.executable, "-m", "mmfusion", "describe", str(broken)], capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 2
    assert "Traceback" not in process.stderr
    assert "fusion.name: 'lat' is not a known fusion; allowed: cross_attention, early, identity, late" in process.stderr
    assert process.stderr.count("\n") == 1


def test_predict_compares_with_a_golden_template(capsys):
    samples = [
        "predict",
        "pcb-template",
        "--image",
        str(SAMPLES / "pcb_tested.jpg"),
        "--reference",
        str(SAMPLES / "pcb_template.jpg"),
        "--json",
    ]
    assert main(samples) == 0
    result = json.loads(capsys.readouterr().out)
    boxes = result["outputs"]["defects"]["boxes"]
    assert result["outputs"]["defects"]["label"] == "defect" and boxes
    assert all(box["x1"] < box["x2"] and box["y1"] < box["y2"] and box["label"] for box in boxes)
    assert main(samples[:4]) == 2
    assert "reference_image: missing" in capsys.readouterr().err
