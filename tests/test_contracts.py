"""Contract tests over every registered encoder, fusion and head (timm-style)."""

from __future__ import annotations

import functools

import pytest
import torch

from mmfusion.config import HeadSpec
from mmfusion.encoders.base import Encoder
from mmfusion.parts import load_all
from mmfusion.registry import ENCODERS, FUSIONS, HEADS
from mmfusion.types import Embedding, Modality
from tests.conftest import random_image, random_waveform

load_all()


def example_items(modality: Modality) -> list:
    """Two raw inputs of a modality, of different sizes/lengths where that matters."""
    if modality is Modality.IMAGE:
        return [random_image(0, 48, 64), random_image(1, 80, 40)]
    if modality is Modality.VIDEO:
        return [[random_image(i) for i in range(3)], [random_image(i + 5) for i in range(2)]]
    if modality is Modality.AUDIO:
        return [random_waveform(1.0, 0), random_waveform(2.5, 1)]
    return ["a scratch on the housing", "the solder joint on pin three is cold and cracked"]


@functools.cache
def build_encoder(name: str) -> Encoder:
    encoder_class = ENCODERS.get(name)
    torch.manual_seed(0)
    return encoder_class(encoder_class.Params(**encoder_class.example_params)).eval()


@pytest.mark.parametrize("name", ENCODERS.names())
def test_encoder_contract(name):
    encoder = build_encoder(name)
    items = example_items(encoder.modality)
    if encoder.uses_reference:  # (tested image, golden template) pairs of equal size
        items = [(image, image[::-1].copy()) for image in items]
    arrays = encoder.preprocess(items)
    assert set(arrays) == set(encoder.input_names)
    embedding = encoder.encode(items)
    assert isinstance(embedding, Embedding)
    batch, length, dim = embedding.tokens.shape
    assert batch == 2 and length >= 1
    assert dim == encoder.output_dim == embedding.pooled.shape[1]
    assert embedding.tokens.dtype == embedding.pooled.dtype == torch.float32
    assert embedding.mask.dtype == torch.bool and embedding.mask.any(dim=1).all()
    assert torch.isfinite(embedding.pooled).all()
    again = encoder.encode(items)
    torch.testing.assert_close(again.pooled, embedding.pooled)
    single = encoder.encode(items[:1])
    torch.testing.assert_close(single.pooled[0], embedding.pooled[0], atol=1e-4, rtol=1e-4)


def random_embeddings(dims: dict[Modality, int], batch: int = 2, seed: int = 0) -> dict[Modality, Embedding]:
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for index, (modality, dim) in enumerate(dims.items()):
        length = 3 + index
        tokens = torch.randn(batch, length, dim, generator=generator)
        mask = torch.ones(batch, length, dtype=torch.bool)
        mask[1, -1] = False
        out[modality] = Embedding(tokens=tokens, pooled=tokens.mean(1), mask=mask)
    return out


FUSION_DIMS = {Modality.IMAGE: 24, Modality.TEXT: 16}


def fusion_dims(name: str) -> dict[Modality, int]:
    """The widths the contract builds a fusion with: one modality for single-modality fusions."""
    return dict(list(FUSION_DIMS.items())[:1]) if FUSIONS.get(name).single_modality else FUSION_DIMS


def build_fusion(name: str):
    fusion_class = FUSIONS.get(name)
    torch.manual_seed(0)
    return fusion_class(fusion_class.Params(**fusion_class.example_params), fusion_dims(name)).eval()


@pytest.mark.parametrize("name", FUSIONS.names())
def test_fusion_contract(name):
    fusion = build_fusion(name)
    dims = fusion_dims(name)
    embeddings = random_embeddings(dims)
    with torch.no_grad():
        fused = fusion(embeddings)
        assert fused.pooled.shape == (2, fusion.output_dim)
        assert fused.tokens.shape[0] == 2 and fused.tokens.shape[2] == fusion.output_dim
        assert fused.mask.dtype == torch.bool
        torch.testing.assert_close(fusion(embeddings).pooled, fused.pooled)
        for missing in dims if len(dims) > 1 else ():
            partial = {m: e for m, e in embeddings.items() if m is not missing}
            assert fusion(partial).pooled.shape == (2, fusion.output_dim)
        with pytest.raises(ValueError):
            fusion({})


def test_single_modality_fusion_refuses_several():
    for name in FUSIONS.names():
        if FUSIONS.get(name).single_modality:
            fusion_class = FUSIONS.get(name)
            with pytest.raises(ValueError, match="exactly one modality"):
                fusion_class(fusion_class.Params(**fusion_class.example_params), FUSION_DIMS)


HEAD_SPEC_LABELS = ["scratch", "dent", "stain"]


@pytest.mark.parametrize("name", HEADS.names())
def test_head_contract(name):
    head_class = HEADS.get(name)
    spec = HeadSpec(name=name, labels=HEAD_SPEC_LABELS, thresholds={"dent": 0.9})
    torch.manual_seed(0)
    head = head_class(head_class.Params(**head_class.example_params), 32, spec).eval()
    if head_class.example_grid is None:
        fused = Embedding.from_pooled(torch.randn(4, 32))
    else:
        height, width = head_class.example_grid
        tokens = torch.randn(4, height * width, 32)  # (B, h*w, D)
        mask = torch.ones(4, height * width, dtype=torch.bool)
        fused = Embedding(tokens=tokens, pooled=tokens.mean(1), mask=mask, grid=(height, width))
    with torch.no_grad():
        outputs = head(fused)
    assert outputs and all(value.shape[0] == 4 for value in outputs.values())
    results = head.postprocess({key: value.numpy() for key, value in outputs.items()})
    assert len(results) == 4 and all(isinstance(result, dict) and result for result in results)
