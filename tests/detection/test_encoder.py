"""image.golden_template: early fusion planes, stride cells, padding masks and pair checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmfusion.encoders.image_golden_template import (
    GoldenTemplateEncoder,
    GoldenTemplateParams,
    fuse_pair,
    space_to_depth,
)
from mmfusion.types import InputError


def grey(value: int, height: int = 16, width: int = 24) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


@pytest.mark.parametrize(
    ("fuse", "color", "planes"), [("stack", "gray", 2), ("difference", "gray", 1), ("both", "rgb", 9)]
)
def test_fusion_modes_give_their_planes(fuse, color, planes):
    assert fuse_pair(grey(200), grey(100), fuse, color).shape == (planes, 16, 24)


def test_signed_difference_tells_extra_from_missing_material():
    tested, template = grey(255), grey(255)
    tested[4:8, 4:8] = 0  # extra copper (black) on the tested board
    template[10:12, 10:12] = 0  # copper missing from the tested board
    difference = fuse_pair(tested, template, "difference", "gray")[0]
    assert difference[5, 5] == pytest.approx(-1.0) and difference[11, 11] == pytest.approx(1.0)
    assert difference[0, 0] == 0.0


def test_cells_pad_and_mask_a_mixed_size_batch():
    encoder = GoldenTemplateEncoder(GoldenTemplateParams(fuse="both", color="gray", stride=4))
    small, large = grey(50, 10, 13), grey(80, 16, 24)
    arrays = encoder.preprocess([(small, small), (large, large)])
    assert arrays["cells"].shape == (2, 3 * 16, 4, 6) and arrays["sizes"].tolist() == [[10, 13], [16, 24]]
    padded = np.zeros((3, 16, 24), np.float32)
    padded[:, :10, :13] = fuse_pair(small, small, "both", "gray")
    expected = torch.nn.functional.pixel_unshuffle(torch.from_numpy(padded), 4).numpy()  # zeros beyond 10x13
    assert np.array_equal(arrays["cells"][0], expected) and arrays["cells"][0].any()
    embedding = encoder.encode([(small, small), (large, large)])
    assert embedding.grid == (4, 6) and embedding.tokens.shape == (2, 24, 3 * 16)
    assert embedding.mask[0].reshape(4, 6).sum().item() == 3 * 4  # ceil(10/4) x ceil(13/4) cells hold pixels
    assert embedding.mask[1].all()


@pytest.mark.parametrize(("height", "width", "stride"), [(16, 24, 4), (640, 640, 8), (24, 8, 8), (6, 9, 3)])
def test_space_to_depth_is_torchs_pixel_unshuffle(height, width, stride):
    planes = np.random.default_rng(0).random((3, height, width), dtype=np.float32)
    expected = torch.nn.functional.pixel_unshuffle(torch.from_numpy(planes), stride).numpy()
    assert np.array_equal(space_to_depth(planes, stride), expected)


def test_items_that_are_not_pairs_are_refused():
    encoder = GoldenTemplateEncoder(GoldenTemplateParams())
    with pytest.raises(InputError, match="reference_image: missing for item 0"):
        encoder.preprocess([grey(0)])
    with pytest.raises(InputError, match="differs from the image's 24x16"):
        encoder.preprocess([(grey(0), grey(0, 8, 8))])


@pytest.mark.parametrize(
    ("fuse", "color"), [("both", "gray"), ("stack", "rgb"), ("difference", "gray"), ("both", "rgb")]
)
@pytest.mark.parametrize(("height", "width"), [(16, 24), (13, 21)])
def test_batch_cells_are_the_fused_planes_cut_by_stride(fuse, color, height, width):
    rng = np.random.default_rng(1)
    tested, template = (rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(2))
    encoder = GoldenTemplateEncoder(GoldenTemplateParams(fuse=fuse, color=color, stride=4))
    cells = encoder.preprocess([(tested, template), (grey(9, 20, 28), grey(7, 20, 28))])["cells"]
    planes = np.zeros((encoder.planes, 20, 28), np.float32)  # the pair zero-padded to the batch's 20x28
    planes[:, :height, :width] = fuse_pair(tested, template, fuse, color)
    assert cells.shape == (2, encoder.output_dim, 5, 7)
    np.testing.assert_allclose(cells[0], space_to_depth(planes, 4), rtol=0, atol=1e-6)
    assert np.abs(cells[0]).max() > 0.1  # the pair's pixels, not padding alone
