"""Pipeline: build from a model folder, predict any mix of modalities, imprint, batch, bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from mmfusion.config import ConfigError
from mmfusion.pipeline import Pipeline
from mmfusion.repository.folder import resolve_model_dir
from mmfusion.types import InputError, Inputs
from tests.conftest import random_image

RED = np.zeros((64, 64, 3), np.uint8)
RED[..., 0] = 230
BLUE = np.zeros((64, 64, 3), np.uint8)
BLUE[..., 2] = 230


def tiny_model(folder: Path, heads: dict | None = None) -> Path:
    """A small image + text pipeline with random-weight encoders and an imprinted head."""
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "red.png"), cv2.cvtColor(RED, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "blue.png"), cv2.cvtColor(BLUE, cv2.COLOR_RGB2BGR))
    config = {
        "name": folder.name,  # a model's name must match its folder
        "seed": 3,
        "encoders": {
            "image": {"name": "image.efficientnet_lite0", "params": {"weights": "random", "image_size": 64}},
            "text": {"name": "text.hf", "params": {"weights": "random", "max_length": 16}},
        },
        "fusion": {"name": "late", "params": {"width": 1280, "projection": "orthogonal"}},
        "heads": heads
        or {
            "colour": {
                "name": "classification",
                "labels": ["red", "blue"],
                "params": {
                    "scale": 30.0,
                    "examples": [{"label": "red", "image": "red.png"}, {"label": "blue", "image": "blue.png"}],
                },
            },
            "flags": {"name": "multilabel", "labels": ["glare", "blur"], "thresholds": {"glare": 0.0}},
            "embedding": {"name": "embedding"},
        },
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    return Pipeline(tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


def test_imprinted_head_recognises_its_examples(pipeline):
    red = pipeline.predict(image=RED + 5)
    blue = pipeline.predict(image=BLUE + 5)
    assert red.outputs["colour"]["label"] == "red"
    assert blue.outputs["colour"]["label"] == "blue"
    assert red.outputs["colour"]["scores"]["red"] > blue.outputs["colour"]["scores"]["red"] + 0.2


def test_thresholds_apply_outside_the_graph(pipeline):
    flags = pipeline.predict(text="anything at all").outputs["flags"]
    assert "glare" in flags["flags"]  # threshold 0.0: always raised
    assert set(flags["scores"]) == {"glare", "blur"}
    assert ("blur" in flags["flags"]) == (flags["scores"]["blur"] >= 0.5)


def test_any_mix_of_modalities(pipeline):
    both = pipeline.predict(image=random_image(1), text="a note")
    image_only = pipeline.predict(image=random_image(1))
    text_only = pipeline.predict(text="a note")
    assert both.modalities == ("image", "text")
    assert image_only.modalities == ("image",) and text_only.modalities == ("text",)
    embeddings = [np.asarray(p.outputs["embedding"]["embedding"]) for p in (both, image_only, text_only)]
    assert all(e.shape == (1280,) for e in embeddings)
    assert not np.allclose(embeddings[0], embeddings[1])


def test_batch_equals_single_and_keeps_order(pipeline):
    items = [Inputs(image=random_image(2)), Inputs(text="second"), Inputs(image=random_image(3), text="third")]
    batched = pipeline.predict_batch(items)
    singles = [pipeline.predict(item) for item in items]
    assert [p.modalities for p in batched] == [("image",), ("text",), ("image", "text")]
    for one, many in zip(singles, batched):
        np.testing.assert_allclose(
            one.outputs["embedding"]["embedding"], many.outputs["embedding"]["embedding"], atol=1e-5
        )


def test_image_from_file_and_bytes(pipeline, tmp_path):
    path = tmp_path / "red.png"
    cv2.imwrite(str(path), cv2.cvtColor(RED, cv2.COLOR_RGB2BGR))
    from_file = pipeline.predict(image=path)
    from_bytes = pipeline.predict(image=path.read_bytes())
    assert from_file.outputs["colour"] == from_bytes.outputs["colour"]


def test_deterministic_across_builds(tmp_path, pipeline):
    other = Pipeline(tiny_model(tmp_path / "again"))
    image = random_image(7)
    np.testing.assert_allclose(
        other.predict(image=image).outputs["embedding"]["embedding"],
        pipeline.predict(image=image).outputs["embedding"]["embedding"],
        atol=1e-6,
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "no input given"),
        ({"audio": np.zeros(10, np.float32)}, "tiny has no encoder for audio; it reads image, text"),
        ({"image": b"garbage"}, "not a decodable image"),
        ({"image": np.zeros((4, 4, 4), np.uint8)}, "expected 1 or 3 channels"),
        ({"text": "   "}, "empty text"),
    ],
)
def test_bad_input_is_named(pipeline, fields, message):
    with pytest.raises(InputError, match=message):
        pipeline.predict(**fields)
    assert pipeline.predict(text="still serving").outputs["colour"]["label"] in {"red", "blue"}


def test_unknown_model_lists_available(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFUSION_MODELS", str(tmp_path))
    tiny_model(tmp_path / "tiny")
    with pytest.raises(ConfigError, match="model 'nope' is neither a folder nor a model in .*; available: tiny"):
        resolve_model_dir("nope")
    assert resolve_model_dir("tiny") == tmp_path / "tiny"


def test_example_with_missing_file_is_a_config_error(tmp_path):
    heads = {
        "colour": {
            "name": "classification",
            "labels": ["red", "blue"],
            "params": {"examples": [{"label": "red", "image": "missing.png"}]},
        }
    }
    with pytest.raises(ConfigError, match="example for 'red': .*missing.png.* does not exist"):
        Pipeline(tiny_model(tmp_path / "m", heads))


def test_example_label_must_be_declared(tmp_path):
    heads = {
        "colour": {
            "name": "classification",
            "labels": ["red", "blue"],
            "params": {"examples": [{"label": "green", "text": "x"}]},
        }
    }
    with pytest.raises(ValueError, match=r"examples use labels \['green'\]"):
        Pipeline(tiny_model(tmp_path / "m", heads))


def test_model_folder_with_manifest_is_verified_before_load(tmp_path):
    from mmfusion.security.integrity import write_manifest

    folder = tiny_model(tmp_path / "signed")
    write_manifest(folder)
    assert Pipeline(folder).predict(image=RED).outputs["colour"]["label"] == "red"
    (folder / "red.png").write_bytes((folder / "blue.png").read_bytes())  # tampered example image
    with pytest.raises(ConfigError, match=r"refused to load: .*'red.png'"):
        Pipeline(folder)
