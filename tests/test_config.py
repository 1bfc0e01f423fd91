"""Config validation: every mistake names the file, the key, the bad value and what is allowed."""

from pathlib import Path

import pytest
import yaml

from mmfusion.config import ConfigError, load_config

GOOD = {
    "name": "tiny",
    "encoders": {"text": {"name": "text.hf", "params": {"weights": "random"}}},
    "fusion": {"name": "late", "params": {"width": 32}},
    "heads": {"verdict": {"name": "classification", "labels": ["ok", "bad"]}},
}


def write(tmp_path: Path, config: dict) -> Path:
    """config.yaml in tmp_path, named after the folder (a model's name must match its folder)."""
    named = {**config, "name": tmp_path.name} if "name" in config else config
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(named))
    return tmp_path


def with_change(path: list, value) -> dict:
    config = yaml.safe_load(yaml.safe_dump(GOOD))
    target = config
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return config


def test_good_config_loads(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.name == tmp_path.name and config.heads["verdict"].labels == ["ok", "bad"]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            ["fusion", "name"],
            "erly",
            r"fusion\.name: 'erly' is not a known fusion; allowed: cross_attention, early, identity, late",
        ),
        (
            ["encoders", "text", "name"],
            "text.bert",
            r"encoders\.text\.name: 'text.bert' is not a known encoder; allowed: ",
        ),
        (["encoders", "text", "parms"], {}, r"encoders\.text\.parms: unknown key; allowed: name, params"),
        (["fusoin"], {}, r"fusoin: unknown key; allowed: name, description, version, encoders, fusion, heads, seed"),
        (
            ["encoders", "smell"],
            {"name": "text.hf"},
            r"encoders\.smell: 'smell' is not allowed; allowed: 'image', 'video'",
        ),
        (
            ["encoders", "text", "name"],
            "image.efficientnet_lite0",
            r"encoder 'image.efficientnet_lite0' reads image, not text",
        ),
        (["fusion", "params"], {"width": -3}, r"fusion\.params\.width: .*greater than 0"),
        (["fusion", "params"], {"widht": 3}, r"fusion\.params\.widht: unknown key; allowed: .*width"),
        (["heads", "verdict", "thresholds"], {"oops": 0.3}, r"thresholds for unknown labels \['oops'\]"),
        (["heads", "verdict", "threshold"], 1.5, r"heads\.verdict\.threshold: .*less than or equal to 1"),
        (
            ["encoders", "text", "params"],
            {"weights": "pretrianed"},
            r"encoders\.text\.params\.weights: .*pattern.*'pretrianed'",
        ),
    ],
)
def test_config_mistakes_are_named(tmp_path, path, value, expected):
    with pytest.raises(ConfigError, match=expected) as error:
        load_config(write(tmp_path, with_change(path, value)))
    assert str(tmp_path / "config.yaml") in str(error.value)


def test_missing_key_named(tmp_path):
    config = dict(GOOD)
    del config["fusion"]
    with pytest.raises(ConfigError, match=r"config\.yaml: fusion: required key is missing"):
        load_config(write(tmp_path, config))


def test_unknown_model_folder(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope")


def test_folder_without_config(tmp_path):
    with pytest.raises(ConfigError, match="no such file; a model folder needs a config.yaml"):
        load_config(tmp_path)


def test_invalid_yaml_names_line(tmp_path):
    (tmp_path / "config.yaml").write_text("name: x\nencoders: [\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(tmp_path)


def test_relative_paths_resolve_against_model_folder(tmp_path):
    config = with_change(["encoders", "text", "params"], {"path": "weights/text", "weights": "random"})
    from mmfusion.config import validate_params
    from mmfusion.encoders.text_hf import HFTextParams

    load_config(write(tmp_path, config))
    params = validate_params(HFTextParams, config["encoders"]["text"]["params"], "x", (), tmp_path)
    assert params.path == str(tmp_path / "weights" / "text")
