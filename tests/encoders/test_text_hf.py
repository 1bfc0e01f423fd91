"""HF text encoder: the embedded all-MiniLM-L6-v2 gives meaningful similarities."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmfusion.encoders.text_hf import HFTextEncoder, HFTextParams
from mmfusion.types import InputError


@pytest.fixture(scope="module")
def minilm() -> HFTextEncoder:
    return HFTextEncoder(HFTextParams()).eval()


def test_minilm_ranks_related_defect_text_first(minilm):
    pooled = minilm.encode(
        ["scratch on the metal housing", "surface scratch defect", "tomorrow's weather forecast"]
    ).pooled  # (3, 384)
    related = F.cosine_similarity(pooled[0], pooled[1], dim=0)
    unrelated = F.cosine_similarity(pooled[0], pooled[2], dim=0)
    assert pooled.shape == (3, 384)
    assert related > unrelated + 0.2


def test_matches_sentence_transformers_reference(minilm):
    from sentence_transformers import SentenceTransformer

    from mmfusion.encoders.embedded import minilm_dir

    reference = SentenceTransformer(str(minilm_dir()), device="cpu", local_files_only=True)
    sentences = ["a cold solder joint", "the camera lens is dirty"]
    expected = torch.from_numpy(reference.encode(sentences, normalize_embeddings=True))
    torch.testing.assert_close(minilm.encode(sentences).pooled, expected, atol=1e-4, rtol=1e-4)


def test_mask_marks_padding(minilm):
    embedding = minilm.encode(["short", "a considerably longer sentence with many more tokens in it"])
    assert embedding.mask[0].sum() < embedding.mask[1].sum()
    assert embedding.mask[1].all()


def test_local_folder_and_random_weights(tmp_path, minilm):
    from mmfusion.encoders.embedded import minilm_dir

    random = HFTextEncoder(HFTextParams(path=str(minilm_dir()), weights="random")).eval()
    sentences = ["same text"]
    assert not torch.allclose(random.encode(sentences).pooled, minilm.encode(sentences).pooled)
    with pytest.raises(ValueError, match="has no config.json"):
        HFTextEncoder(HFTextParams(path=str(tmp_path)))


@pytest.mark.parametrize(("item", "message"), [("", "empty text"), (b"bytes", "expected a string")])
def test_bad_text(minilm, item, message):
    with pytest.raises(InputError, match=message):
        minilm.preprocess([item])
