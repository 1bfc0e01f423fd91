"""Shared runtime fixtures: a tiny image + text model and its ONNX exports, made once per test session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from mmfusion.cli.main import main
from mmfusion.encoders.embedded import minilm_dir

RED = np.full((48, 64, 3), (220, 30, 30), np.uint8)
BLUE = np.full((48, 64, 3), (30, 30, 220), np.uint8)
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def tiny_text_model(folder: Path) -> Path:
    """A one-layer, 32-wide BERT with the embedded MiniLM tokenizer (weights random): text graphs stay small."""
    folder.mkdir(parents=True, exist_ok=True)
    source = minilm_dir()
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, folder / name)
    config = json.loads((source / "config.json").read_text())
    config.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def tiny_config(name: str = "tiny", runtime: dict | None = None) -> dict:
    """Config of a small image + text pipeline: random EfficientNet-Lite0 at 64 px, tiny BERT, three heads."""
    config = {
        "name": name,
        "seed": 3,
        "encoders": {
            "image": {"name": "image.efficientnet_lite0", "params": {"weights": "random", "image_size": 64}},
            "text": {"name": "text.hf", "params": {"path": "text_model", "weights": "random", "max_length": 16}},
        },
        "fusion": {"name": "late", "params": {"width": 64, "projection": "orthogonal"}},
        "heads": {
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
    if runtime is not None:
        config["runtime"] = runtime
    return config


def write_tiny_model(folder: Path, name: str = "tiny", runtime: dict | None = None) -> Path:
    """A model folder named `name` (the folder name must match) holding the tiny pipeline."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny_text_model(folder / "text_model")
    cv2.imwrite(str(folder / "red.png"), cv2.cvtColor(RED, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "blue.png"), cv2.cvtColor(BLUE, cv2.COLOR_RGB2BGR))
    (folder / "config.yaml").write_text(yaml.safe_dump(tiny_config(name, runtime)))
    return folder


def copy_model(source: Path, destination: Path, runtime: dict | None = None) -> Path:
    """A copy of a model folder (exports included), optionally with a different runtime: block."""
    shutil.copytree(source, destination)
    if runtime is not None:
        config = yaml.safe_load((destination / "config.yaml").read_text())
        config["runtime"] = runtime
        (destination / "config.yaml").write_text(yaml.safe_dump(config))
    return destination


@pytest.fixture(scope="session")
def tiny_fp32(tmp_path_factory) -> Path:
    """The tiny model exported to ONNX FP32 (every modality group) through `mmfusion export`."""
    model = write_tiny_model(tmp_path_factory.mktemp("fp32") / "tiny")
    assert main(["export", str(model), "--backend", "onnx", "--batch-sizes", "1,8"]) == 0
    return model


@pytest.fixture(scope="session")
def calibration_manifest(tmp_path_factory) -> Path:
    """An image manifest of 16 generated images (reds, blues and noise) to calibrate static INT8 on."""
    from mmfusion.data.manifest import write_manifest

    folder = tmp_path_factory.mktemp("calibration")
    rng = np.random.default_rng(0)
    rows = []
    for index in range(16):
        base = (RED, BLUE)[index % 2].astype(np.int16)
        image = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"image_{index}.png"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        rows.append({"image": path.name, "label": "good"})
    return write_manifest(folder / "calibration.csv", rows)


@pytest.fixture(scope="session")
def tiny_int8(tmp_path_factory, calibration_manifest) -> Path:
    """The tiny model's image graph as static QDQ INT8, calibrated on the generated manifest."""
    model = write_tiny_model(tmp_path_factory.mktemp("int8") / "tiny")
    arguments = ["export", str(model), "--precision", "int8", "--calibration", str(calibration_manifest)]
    assert main([*arguments, "--groups", "image"]) == 0
    return model
