"""EfficientNet-Lite0: real embedded weights, multi-scale features, checkpoint loading."""

from __future__ import annotations

import hashlib
import re

import pytest
import torch

from mmfusion.encoders.embedded import efficientnet_lite0_checkpoint
from mmfusion.encoders.image_efficientnet import EfficientNetLite0Encoder, EfficientNetParams
from mmfusion.media import decode_image


@pytest.fixture(scope="module")
def encoder() -> EfficientNetLite0Encoder:
    return EfficientNetLite0Encoder(EfficientNetParams()).eval()


def test_embedded_weights_match_published_sha256_prefix():
    path = efficientnet_lite0_checkpoint()
    prefix = re.search(r"-([0-9a-f]{8})\.pth$", path.name).group(1)
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith(prefix)


def test_real_weights_recognise_sample_photos(encoder, samples):
    # ImageNet ids: 281-285 are domestic cats; 967 espresso, 968 cup.
    for name, classes in (("chelsea.jpg", range(281, 286)), ("coffee.jpg", (967, 968))):
        pixels = torch.from_numpy(encoder.preprocess([decode_image(samples / name)])["pixels"])
        with torch.no_grad():
            top = encoder.classify(pixels).softmax(-1)[0].topk(1)
        assert int(top.indices[0]) in classes, name
        assert float(top.values[0]) > 0.5


def test_multiscale_feature_maps(encoder):
    pixels = torch.zeros(2, 3, 224, 224)
    with torch.no_grad():
        maps = encoder.feature_maps(pixels)
        embedding = encoder(pixels)
    assert maps[8].shape == (2, encoder.feature_dims[8], 28, 28)
    assert maps[16].shape == (2, encoder.feature_dims[16], 14, 14)
    assert embedding.tokens.shape == (2, 14 * 14, 1280) and embedding.pooled.shape == (2, 1280)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    random = EfficientNetLite0Encoder(EfficientNetParams(weights="random", image_size=64)).eval()
    path = tmp_path / "lite0.pth"
    torch.save(random.net.state_dict(), path)
    loaded = EfficientNetLite0Encoder(EfficientNetParams(checkpoint=str(path), image_size=64)).eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).pooled, random(pixels).pooled)


def test_bad_checkpoint_is_named(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="broken.pth' is not a readable torch file"):
        EfficientNetLite0Encoder(EfficientNetParams(checkpoint=str(path)))
    with pytest.raises(ValueError, match="does not exist"):
        EfficientNetLite0Encoder(EfficientNetParams(checkpoint=str(tmp_path / "missing.pth")))
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="does not fit EfficientNet-Lite0"):
        EfficientNetLite0Encoder(EfficientNetParams(checkpoint=str(path)))
