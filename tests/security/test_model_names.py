"""A model's `name` is its folder's name: configs that differ are refused; copies made by `fit` are renamed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmfusion.config import ConfigError, load_config
from mmfusion.fitting.model import copy_model_folder
from mmfusion.repository.folder import REPO_MODELS, model_folders, read_config
from mmfusion.repository.versions import load_version_config
from mmfusion.serving.models import ModelManager
from tests.test_pipeline import tiny_model


def _rename(folder: Path, name: str) -> Path:
    config = yaml.safe_load((folder / "config.yaml").read_text())
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "name": name}))
    return folder


def test_a_config_named_unlike_its_folder_is_refused_naming_both(tmp_path):
    folder = _rename(tiny_model(tmp_path / "pcb-open"), "secret-model")
    expected = r"config\.yaml: name: 'secret-model' differs from its folder name 'pcb-open'; expected name: pcb-open"
    with pytest.raises(ConfigError, match=expected):
        load_config(folder)


def test_the_server_refuses_to_load_a_model_under_another_name(tmp_path):
    _rename(tiny_model(tmp_path / "pcb-open"), "secret-model")
    manager = ModelManager(tmp_path)
    try:
        with pytest.raises(ConfigError, match="'secret-model' differs from its folder name 'pcb-open'"):
            manager.load("pcb-open")
        assert manager.loaded_names() == []
    finally:
        manager.close(0)


def test_a_version_config_named_unlike_its_folder_is_refused(tmp_path):
    folder = tiny_model(tmp_path / "tiny")
    version = _rename(tiny_model(folder / "versions" / "2"), "other")
    with pytest.raises(ConfigError, match=r"versions/2/config\.yaml: name: 'other' differs from its folder name"):
        load_version_config(folder, version)


def test_every_shipped_model_is_named_after_its_folder():
    for name, folder in model_folders(REPO_MODELS).items():
        assert read_config(folder).name == name


def test_a_fitted_copy_is_named_after_its_out_folder_keeping_the_rest(tmp_path):
    source = tiny_model(tmp_path / "tiny")
    text = "# a comment that stays\n" + (source / "config.yaml").read_text()
    (source / "config.yaml").write_text(text)
    for left in ("calibration/part.png", "fitted/anomaly/memory_bank.npy"):  # images and fits of the source's parts
        (source / left).parent.mkdir(parents=True, exist_ok=True)
        (source / left).write_bytes(b"x")
    out = tmp_path / "fitted" / "line3"
    copy_model_folder(source, out)
    copied = (out / "config.yaml").read_text()
    assert load_config(out).name == "line3"
    assert copied == text.replace("name: tiny\n", "name: line3\n")
    assert not (out / "calibration").exists() and not (out / "fitted").exists()
