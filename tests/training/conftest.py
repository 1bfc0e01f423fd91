"""Fixtures for the training tests: one tiny BERT per session, fresh model folders per test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.training.helpers import text_model, text_table, tiny_bert

# Two threads on a busy 2-core machine spin against each other; these models are tiny anyway.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def bert(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture
def text_task(tmp_path, bert) -> dict[str, Path]:
    """A text model folder with train/val tables of a two-class task."""
    return {
        "model": text_model(tmp_path / "notes", bert),
        "train": text_table(tmp_path / "train.csv", 32, seed=0),
        "val": text_table(tmp_path / "val.csv", 16, seed=1),
        "root": tmp_path,
    }
