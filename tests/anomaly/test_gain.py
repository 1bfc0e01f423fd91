"""image.patch_features `gain: median`: a dimmer exposure of the same part reads as the same image."""

from __future__ import annotations

import numpy as np
import pytest

from mmfusion.encoders.image_patches import PatchFeatureEncoder, PatchFeatureParams, median_gain


def cell(brightness: float) -> np.ndarray:
    """(96, 96, 3) uint8: a textured grey cell with a dark crack, at a given exposure."""
    rng = np.random.default_rng(0)
    grey = 0.55 + 0.1 * rng.standard_normal((96, 96))
    grey[40:43, 10:80] = 0.15
    return np.clip(grey * brightness * 255, 0, 255).astype(np.uint8)[:, :, None].repeat(3, axis=2)


def test_median_gain_puts_the_median_at_mid_grey_and_keeps_the_order_of_pixels():
    out = median_gain(cell(0.6))
    assert out.dtype == np.uint8 and out.shape == (96, 96, 3)
    assert abs(float(np.median(out[:, :, 0])) - 128) <= 1
    assert out[41, 40, 0] < 70 < out[60, 60, 0]  # the crack stays dark
    assert median_gain(np.zeros((4, 4, 3), np.uint8)).max() == 0  # a black image stays black (no division by 0)


@pytest.mark.parametrize("gain", ["none", "median"])
def test_only_median_gain_reads_a_dim_and_a_bright_exposure_alike(gain):
    params = PatchFeatureParams(**PatchFeatureEncoder.example_params, gain=gain)
    encoder = PatchFeatureEncoder(params)
    dim, bright = (encoder.preprocess([cell(b)])["pixels"] for b in (0.5, 1.0))  # (1, 3, S, S)
    difference = float(np.abs(dim - bright).mean())
    if gain == "median":
        assert difference < 0.02
    else:
        assert difference > 0.2
