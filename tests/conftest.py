"""Shared fixtures: sample inputs, the shared datasets folder, offline HF."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mmfusion.parts import load_all

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
LIBRIVOX = REPO / "tests" / "data" / "librivox"  # five LibriVox clips with transcripts (README beside them)


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"shared datasets folder {SHARED_DATASETS} is absent (only on development machines)")
    return SHARED_DATASETS


def random_image(seed: int = 0, height: int = 48, width: int = 64) -> np.ndarray:
    """A deterministic random RGB uint8 image."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def random_waveform(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """A deterministic 16 kHz float32 waveform: a tone plus a little noise."""
    time = np.arange(int(16000 * seconds)) / 16000
    noise = np.random.default_rng(seed).normal(0, 0.01, time.size)
    return (0.3 * np.sin(2 * np.pi * 440 * time) + noise).astype(np.float32)


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory) -> Path:
    """One export cache for the session: each `backend: auto` model is exported once, never into ~/.cache."""
    folder = tmp_path_factory.mktemp("export-cache")
    os.environ["MMFUSION_EXPORT_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def registered_parts() -> None:
    """Config validation checks part names against the registries; the pipeline and CLI fill them, tests too."""
    load_all()
