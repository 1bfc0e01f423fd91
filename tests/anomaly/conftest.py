"""Shared fixtures: a small synthetic suite, a small anomaly model folder, and that model fitted through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmfusion.cli.main import main
from mmfusion.data.synthetic import make_synthetic_suite

IMAGE_SIZE = 128


def small_anomaly_model(folder: Path, coreset_ratio: float = 0.05) -> Path:
    """The default anomaly pipeline (embedded EfficientNet-Lite0 features) at 128 pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "name": "small-anomaly",
        "encoders": {
            "image": {
                "name": "image.patch_features",
                "params": {"backbone_params": {"weights": "embedded"}, "image_size": IMAGE_SIZE},
            }
        },
        "fusion": {"name": "identity"},
        "heads": {"anomaly": {"name": "anomaly.patchcore", "params": {"coreset_ratio": coreset_ratio}}},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "README.md").write_text("Small anomaly model for tests.\n")
    return folder


@pytest.fixture(scope="session")
def suite(tmp_path_factory) -> dict[str, Path]:
    return make_synthetic_suite(
        tmp_path_factory.mktemp("suite"), n_train_good=20, n_val=16, n_test=16, size=IMAGE_SIZE, seed=0
    )


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return small_anomaly_model(tmp_path_factory.mktemp("models") / "small-anomaly")


@pytest.fixture(scope="session")
def fitted(tmp_path_factory, suite, model_dir) -> Path:
    """The small model fitted on the suite's good parts and calibrated (best F1) on its validation rows."""
    out = tmp_path_factory.mktemp("fitted") / "small-anomaly"
    code = main(["fit", str(model_dir), "--train", str(suite["train"]), "--val", str(suite["val"]), "--out", str(out)])
    assert code == 0
    return out
