"""Heatmaps line up: a bright blob at a known place in non-square images peaks the anomaly map inside its mask."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from mmfusion.cli.main import main
from mmfusion.data.manifest import ManifestRow, write_manifest
from mmfusion.data.synthetic import make_surface
from mmfusion.evaluation.anomaly import Scored, pixel_auroc
from mmfusion.pipeline import Pipeline

SIZES = [(200, 320), (480, 200), (360, 640)]  # (height, width): wide, tall, wide and larger than the canvas
CANVAS = 256


def surface(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A good part of the synthetic brushed-metal texture, (height, width, 3) uint8 RGB."""
    part = make_surface(rng, max(height, width))[:height, :width]
    return np.clip(part + rng.normal(0.0, 1.5, part.shape), 0, 255).astype(np.uint8)


def blob(image: np.ndarray, centre: tuple[float, float], radius: int) -> tuple[np.ndarray, np.ndarray]:
    """The image with a bright disc at (x, y) = centre (fractions of the width and height) and the disc's mask."""
    height, width = image.shape[:2]
    mask = np.zeros((height, width), np.uint8)
    cv2.circle(mask, (round(centre[0] * width), round(centre[1] * height)), radius, 1, -1)
    defective = image.copy()
    defective[mask > 0] = 250
    return defective, mask > 0


@pytest.fixture(scope="module")
def fitted_on_every_size(tmp_path_factory) -> Path:
    """A PatchCore model (embedded EfficientNet-Lite0, 256 px canvas) fitted on good parts of the three sizes."""
    root = tmp_path_factory.mktemp("alignment")
    model = root / "aligned"
    model.mkdir()
    config = {
        "name": "aligned",
        "encoders": {
            "image": {
                "name": "image.patch_features",
                "params": {"backbone_params": {"weights": "embedded"}, "image_size": CANVAS},
            }
        },
        "fusion": {"name": "identity"},
        "heads": {"anomaly": {"name": "anomaly.patchcore", "params": {"coreset_ratio": 0.1}}},
    }
    (model / "config.yaml").write_text(yaml.safe_dump(config))
    (model / "README.md").write_text("Alignment test model.\n")
    rng = np.random.default_rng(0)
    rows = []
    for index in range(12):
        height, width = SIZES[index % len(SIZES)]
        path = root / "good" / f"good_{index}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(surface(rng, height, width), cv2.COLOR_RGB2BGR))
        rows.append({"image": path, "label": "good"})
    train = write_manifest(root / "train.csv", rows)
    out = root / "fitted"
    assert main(["fit", str(model), "--train", str(train), "--out", str(out)]) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("centre", [(0.75, 0.3), (0.25, 0.7)])
def test_the_map_peaks_inside_the_defect_in_images_of_any_aspect(fitted_on_every_size, tmp_path, centre):
    pipeline = Pipeline(fitted_on_every_size)
    rng = np.random.default_rng(1)
    scored = []
    for height, width in SIZES:
        radius = round(0.06 * max(height, width))
        image, mask = blob(surface(rng, height, width), centre, radius)
        result = pipeline.predict(image=image).outputs["anomaly"]
        anomaly_map = result["anomaly_map"]
        assert anomaly_map.shape == (height, width)
        row, column = np.unravel_index(np.argmax(anomaly_map), anomaly_map.shape)
        assert mask[row, column], f"{width}x{height}: peak at x={column}, y={row}, blob at {centre} r={radius}"
        assert roc_auc_score(mask.ravel(), anomaly_map.ravel()) > 0.97, f"{width}x{height}"
        image_path, mask_path = tmp_path / f"part_{width}x{height}.png", tmp_path / f"mask_{width}x{height}.png"
        cv2.imwrite(str(image_path), image)
        cv2.imwrite(str(mask_path), mask.astype(np.uint8) * 255)
        scored.append(Scored(ManifestRow(2, image_path, "spot", mask_path), "defect", 1.0, anomaly_map, [], mask.shape))
    pipeline.close()
    assert pixel_auroc(scored) > 0.97


def test_pixel_auroc_is_judged_at_the_mask_resolution(tmp_path):
    """A coarse map is upsampled to the mask (not the mask shrunk to the map): the figure is the full-size one."""
    mask = np.zeros((120, 200), bool)
    mask[30:33, 50:53] = True  # a defect smaller than one cell of the coarse map
    coarse = np.zeros((12, 20), np.float32)
    coarse[3, 5] = 1.0
    mask_path = tmp_path / "mask.png"
    cv2.imwrite(str(mask_path), mask.astype(np.uint8) * 255)
    image_path = tmp_path / "part.png"
    cv2.imwrite(str(image_path), np.zeros((120, 200, 3), np.uint8))
    good_path = tmp_path / "good.png"
    cv2.imwrite(str(good_path), np.zeros((120, 200, 3), np.uint8))
    good_map = np.random.default_rng(0).uniform(0.0, 0.2, (12, 20)).astype(np.float32)
    scored = [
        Scored(ManifestRow(2, image_path, "spot", mask_path), "defect", 1.0, coarse, [], (120, 200)),
        Scored(ManifestRow(3, good_path, "good"), "good", 0.1, good_map, [], (120, 200)),
    ]
    full = cv2.resize(coarse, (200, 120), interpolation=cv2.INTER_LINEAR)
    good_full = cv2.resize(good_map, (200, 120), interpolation=cv2.INTER_LINEAR)
    truth = np.concatenate([mask.ravel(), np.zeros(good_full.size, bool)])
    expected = roc_auc_score(truth, np.concatenate([full.ravel(), good_full.ravel()]))
    assert pixel_auroc(scored) == pytest.approx(expected, abs=1e-4)
