"""Fusion contract tests over every registered fusion, plus per-fusion behaviour."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

import mmfusion.fusion  # noqa: F401  (registers the fusions)
from mmfusion.config import ConfigError, validate_params
from mmfusion.registry import FUSIONS
from mmfusion.types import Embedding, Modality

IMAGE, TEXT, AUDIO = Modality.IMAGE, Modality.TEXT, Modality.AUDIO
INPUT_DIMS = {IMAGE: 16, TEXT: 24, AUDIO: 8}
LENGTHS = {IMAGE: 5, TEXT: 7, AUDIO: 3}
BATCH = 3
MULTI_MODAL = [name for name in FUSIONS.names() if not FUSIONS.get(name).single_modality]


def make_embedding(dim: int, length: int, batch: int = BATCH, valid: list[int] | None = None) -> Embedding:
    """Random tokens/pooled; `valid[b]` leading tokens of item b are valid (default: all)."""
    tokens = torch.randn(batch, length, dim)  # (B, L, D)
    pooled = torch.randn(batch, dim)  # (B, D)
    lengths = torch.tensor(valid if valid is not None else [length] * batch)  # (B,)
    mask = torch.arange(length)[None, :] < lengths[:, None]  # (B, L)
    return Embedding(tokens=tokens, pooled=pooled, mask=mask)


def make_inputs(seed: int = 0) -> dict[Modality, Embedding]:
    torch.manual_seed(seed)
    return {m: make_embedding(INPUT_DIMS[m], LENGTHS[m], valid=[LENGTHS[m], 2, 1]) for m in INPUT_DIMS}


def build(name: str, input_dims: dict[Modality, int] | None = None, **overrides):
    torch.manual_seed(0)
    cls = FUSIONS.get(name)
    params = cls.Params(**{**cls.example_params, **overrides})
    return cls(params, dict(input_dims or INPUT_DIMS)).eval()


def test_the_three_fusions_are_registered():
    assert {"early", "late", "cross_attention"} <= set(FUSIONS.names())


@pytest.mark.parametrize("name", MULTI_MODAL)
def test_output_is_an_embedding_of_output_dim(name):
    fusion = build(name)
    out = fusion(make_inputs())
    assert isinstance(out, Embedding)
    assert out.tokens.shape[0] == BATCH and out.tokens.shape[2] == fusion.output_dim
    assert out.pooled.shape == (BATCH, fusion.output_dim)
    assert out.mask.dtype == torch.bool and out.mask.shape == out.tokens.shape[:2]
    assert out.tokens.dtype == torch.float32 and out.pooled.dtype == torch.float32
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.pooled).all()


@pytest.mark.parametrize("absent", list(INPUT_DIMS))
@pytest.mark.parametrize("name", MULTI_MODAL)
def test_each_single_modality_may_be_absent(name, absent):
    fusion = build(name)
    inputs = {m: e for m, e in make_inputs().items() if m != absent}
    out = fusion(inputs)
    assert out.pooled.shape == (BATCH, fusion.output_dim)
    assert out.mask.dtype == torch.bool and out.tokens.shape[0] == BATCH
    assert torch.isfinite(out.pooled).all()


@pytest.mark.parametrize("name", MULTI_MODAL)
def test_no_modality_is_a_value_error(name):
    with pytest.raises(ValueError, match="at least one modality"):
        build(name)({})


@pytest.mark.parametrize("name", MULTI_MODAL)
def test_unknown_modality_is_a_value_error(name):
    fusion = build(name, {IMAGE: 16, TEXT: 24})
    inputs = make_inputs()
    with pytest.raises(ValueError, match="audio"):
        fusion(inputs)


@pytest.mark.parametrize("name", MULTI_MODAL)
def test_wrong_input_width_names_modality_and_widths(name):
    fusion = build(name)
    inputs = make_inputs()
    inputs[IMAGE] = make_embedding(INPUT_DIMS[IMAGE] + 1, LENGTHS[IMAGE])
    with pytest.raises(ValueError, match=r"image .*width 17.*expected 16"):
        fusion(inputs)


@pytest.mark.parametrize("name", MULTI_MODAL)
def test_eval_mode_is_deterministic(name):
    overrides = {"dropout": 0.2} if "dropout" in FUSIONS.get(name).Params.model_fields else {}
    fusion = build(name, **overrides)
    inputs = make_inputs()
    first, second = fusion(inputs), fusion(inputs)
    assert torch.equal(first.tokens, second.tokens)
    assert torch.equal(first.pooled, second.pooled)
    assert torch.equal(first.mask, second.mask)


@pytest.mark.parametrize("name", MULTI_MODAL)
def test_modality_order_does_not_depend_on_dict_order(name):
    fusion = build(name)
    inputs = make_inputs()
    reordered = dict(reversed(list(inputs.items())))
    torch.testing.assert_close(fusion(inputs).pooled, fusion(reordered).pooled)


@pytest.mark.parametrize("name", MULTI_MODAL)
def test_empty_input_dims_is_rejected(name):
    cls = FUSIONS.get(name)
    with pytest.raises(ValueError, match="input_dims"):
        cls(cls.Params(**cls.example_params), {})


# --- early ---------------------------------------------------------------------------------------


def test_early_concatenates_cls_and_present_tokens():
    fusion = build("early")
    inputs = make_inputs()
    out = fusion(inputs)
    assert out.tokens.shape == (BATCH, 1 + sum(LENGTHS.values()), 32)
    expected_mask = torch.cat(
        [torch.ones(BATCH, 1, dtype=torch.bool)] + [inputs[m].mask for m in (AUDIO, IMAGE, TEXT)], 1
    )
    assert torch.equal(out.mask, expected_mask)
    assert torch.equal(out.pooled, out.tokens[:, 0])
    del inputs[TEXT]
    assert fusion(inputs).tokens.shape[1] == 1 + LENGTHS[IMAGE] + LENGTHS[AUDIO]


def test_early_padded_tokens_do_not_reach_the_cls():
    fusion = build("early")
    inputs = make_inputs()
    before = fusion(inputs).pooled
    for embedding in inputs.values():
        embedding.tokens[~embedding.mask] = torch.randn(int((~embedding.mask).sum()), embedding.dim) * 100
    after = fusion(inputs).pooled
    torch.testing.assert_close(before, after)


def test_early_modality_embeddings_tell_modalities_apart():
    fusion = build("early", {IMAGE: 8, TEXT: 8})
    torch.manual_seed(1)
    same = make_embedding(8, 4)
    swapped = make_embedding(8, 4)
    a = fusion({IMAGE: same, TEXT: swapped}).pooled
    b = fusion({IMAGE: swapped, TEXT: same}).pooled
    assert not torch.allclose(a, b)


# --- late ----------------------------------------------------------------------------------------


def identity_late(weights: dict[str, float] | None, normalize: bool = True):
    """A late fusion whose projections are the identity (width == every input width)."""
    dims = {IMAGE: 6, TEXT: 6, AUDIO: 6}
    fusion = build("late", dims, width=6, projection="orthogonal", weights=weights, normalize=normalize)
    with torch.no_grad():
        for projection in fusion.projections.values():
            projection.weight.copy_(torch.eye(6))
    return fusion


def pooled_inputs(dim: int = 6, seed: int = 0) -> dict[Modality, Embedding]:
    torch.manual_seed(seed)
    return {m: make_embedding(dim, 2) for m in (IMAGE, TEXT, AUDIO)}


def test_late_fixed_weights_give_the_hand_computed_weighted_sum():
    fusion = identity_late({"image": 0.5, "text": 0.25, "audio": 0.25})
    inputs = pooled_inputs()
    expected = (
        0.5 * F.normalize(inputs[IMAGE].pooled, dim=-1)
        + 0.25 * F.normalize(inputs[TEXT].pooled, dim=-1)
        + 0.25 * F.normalize(inputs[AUDIO].pooled, dim=-1)
    )
    out = fusion(inputs)
    torch.testing.assert_close(out.pooled, expected)
    # tokens are the per-modality vectors in sorted order: audio, image, text
    torch.testing.assert_close(out.tokens[:, 1], F.normalize(inputs[IMAGE].pooled, dim=-1))
    assert out.mask.all()


def test_late_without_normalize_sums_raw_projections():
    fusion = identity_late({"image": 3.0, "text": 1.0, "audio": 0.0}, normalize=False)
    inputs = pooled_inputs()
    expected = 0.75 * inputs[IMAGE].pooled + 0.25 * inputs[TEXT].pooled
    torch.testing.assert_close(fusion(inputs).pooled, expected)


def test_late_renormalises_weights_when_a_modality_is_missing():
    fusion = identity_late({"image": 0.5, "text": 0.25, "audio": 0.25})
    inputs = pooled_inputs()
    del inputs[IMAGE]
    out = fusion(inputs)
    expected = 0.5 * F.normalize(inputs[TEXT].pooled, dim=-1) + 0.5 * F.normalize(inputs[AUDIO].pooled, dim=-1)
    torch.testing.assert_close(out.pooled, expected)
    assert out.tokens.shape == (BATCH, 3, 6)
    assert out.mask.tolist() == [[True, False, True]] * BATCH
    assert torch.equal(out.tokens[:, 1], torch.zeros(BATCH, 6))


def test_late_learned_weights_are_a_softmax_over_present_modalities():
    fusion = build("late")
    with torch.no_grad():
        fusion.weight_logits.copy_(torch.tensor([0.0, 1.0, 2.0]))  # audio, image, text
    weights = fusion.modality_weights([IMAGE, TEXT])
    torch.testing.assert_close(weights, torch.softmax(torch.tensor([1.0, 2.0]), dim=0))
    assert fusion.weight_logits.requires_grad


def test_late_all_present_weights_zero_is_a_value_error():
    fusion = identity_late({"image": 1.0, "text": 0.0, "audio": 0.0})
    inputs = pooled_inputs()
    del inputs[IMAGE]
    with pytest.raises(ValueError, match="weight 0"):
        fusion(inputs)


def test_late_orthogonal_projection_preserves_cosine_similarity_and_norm():
    dims = {IMAGE: 12, TEXT: 20}
    fusion = build("late", dims, width=32, projection="orthogonal", normalize=False)
    torch.manual_seed(3)
    inputs = {m: make_embedding(d, 1, batch=4) for m, d in dims.items()}
    out = fusion(inputs)
    for slot, modality in enumerate(sorted(dims, key=lambda m: m.value)):
        x = inputs[modality].pooled  # (4, D)
        y = out.tokens[:, slot]  # (4, W)
        torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
        cos_x = F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).T  # (4, 4)
        cos_y = F.normalize(y, dim=-1) @ F.normalize(y, dim=-1).T  # (4, 4)
        torch.testing.assert_close(cos_y, cos_x)


# --- cross_attention -----------------------------------------------------------------------------


def test_cross_attention_outputs_query_tokens_and_masked_mean():
    fusion = build("cross_attention")
    inputs = make_inputs()
    out = fusion(inputs)
    assert out.tokens.shape == (BATCH, LENGTHS[IMAGE], 32)
    assert torch.equal(out.mask, inputs[IMAGE].mask)
    weights = out.mask.unsqueeze(-1).float()
    torch.testing.assert_close(out.pooled, (out.tokens * weights).sum(1) / weights.sum(1))


def test_cross_attention_padded_context_tokens_have_no_effect():
    fusion = build("cross_attention", depth=2)
    inputs = make_inputs()
    before = fusion(inputs)
    context = inputs[TEXT]
    context.tokens[~context.mask] = torch.randn(int((~context.mask).sum()), context.dim) * 100
    after = fusion(inputs)
    torch.testing.assert_close(before.tokens, after.tokens)


def test_cross_attention_context_matters():
    fusion = build("cross_attention")
    inputs = make_inputs()
    with_context = fusion(inputs).pooled
    inputs[TEXT] = make_embedding(INPUT_DIMS[TEXT], LENGTHS[TEXT])
    assert not torch.allclose(with_context, fusion(inputs).pooled)


def test_cross_attention_fully_padded_context_equals_absent_context():
    fusion = build("cross_attention")
    inputs = make_inputs()
    inputs[TEXT].mask[0] = False
    out = fusion(inputs)
    alone = fusion({IMAGE: inputs[IMAGE]})
    assert torch.isfinite(out.tokens).all()
    torch.testing.assert_close(out.tokens[0], alone.tokens[0])
    assert not torch.allclose(out.tokens[1], alone.tokens[1])


def test_cross_attention_uses_context_as_query_when_query_is_absent():
    fusion = build("cross_attention")
    inputs = make_inputs()
    out = fusion({TEXT: inputs[TEXT], AUDIO: inputs[AUDIO]})
    assert out.tokens.shape == (BATCH, LENGTHS[TEXT], 32)
    assert torch.equal(out.mask, inputs[TEXT].mask)


def test_cross_attention_without_query_or_context_is_a_value_error():
    fusion = build("cross_attention")
    with pytest.raises(ValueError, match="needs image or text; got only audio"):
        fusion({AUDIO: make_inputs()[AUDIO]})


def test_cross_attention_attend_is_the_forward_bridge():
    fusion = build("cross_attention")
    inputs = make_inputs()
    bridged = fusion.attend(inputs[IMAGE], inputs[TEXT])
    torch.testing.assert_close(bridged.tokens, fusion(inputs).tokens)
    with pytest.raises(ValueError, match="query batch 3 != context batch 2"):
        fusion.attend(inputs[IMAGE], make_embedding(INPUT_DIMS[TEXT], 4, batch=2))


@pytest.mark.parametrize("key", ["query", "context"])
def test_cross_attention_missing_modality_in_input_dims_names_the_key(key):
    dims = {TEXT: 24, AUDIO: 8} if key == "query" else {IMAGE: 16, AUDIO: 8}
    missing = "image" if key == "query" else "text"
    with pytest.raises(ValueError, match=rf"{key} {missing} has no encoder; available: audio, "):
        build("cross_attention", dims)


# --- params validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "key", "value"),
    [
        ("early", {"width": 30, "heads": 4}, "heads", "4"),
        ("early", {"width": 0}, "width", "0"),
        ("early", {"depth": -1}, "depth", "-1"),
        ("early", {"dropout": 1.5}, "dropout", "1.5"),
        ("cross_attention", {"query": "image", "context": "text", "width": 30, "heads": 4}, "heads", "4"),
        ("cross_attention", {"query": "image", "context": "image"}, "context", "image"),
        ("cross_attention", {"query": "smell", "context": "text"}, "query", "smell"),
        ("late", {"weights": {"image": -0.5}}, "weights", "-0.5"),
        ("late", {"weights": {"smell": 1.0}}, "weights.smell", "smell"),
        ("late", {"weights": {"image": 0.0}}, "weights", "no positive weight"),
        ("late", {"projection": "random"}, "projection", "random"),
        ("late", {"width": -8}, "width", "-8"),
        ("late", {"colour": "blue"}, "colour", "unknown key"),
    ],
)
def test_bad_params_name_the_key_and_value(name, params, key, value):
    cls = FUSIONS.get(name)
    with pytest.raises(ValidationError):
        cls.Params(**params)
    with pytest.raises(ConfigError) as error:
        validate_params(cls.Params, params, "config.yaml", ("fusion", "params"), None)
    message = str(error.value)
    assert f"fusion.params.{key}" in message and value in message


def test_late_weights_for_a_modality_without_encoder_name_the_key():
    with pytest.raises(ValueError, match="weights.audio names a modality without an encoder; available: image, text"):
        build("late", {IMAGE: 16, TEXT: 24}, weights={"image": 1.0, "text": 1.0, "audio": 1.0})


def test_late_weights_must_cover_every_encoder():
    with pytest.raises(ValueError, match="no entry for text"):
        build("late", {IMAGE: 16, TEXT: 24}, weights={"image": 1.0})


@pytest.mark.parametrize("name", MULTI_MODAL)
def test_example_params_validate(name):
    cls = FUSIONS.get(name)
    params = cls.Params(**cls.example_params)
    assert cls.Params.model_validate(params.model_dump()) == params


def test_identity_passes_one_modality_through_with_its_grid():
    fusion = build("identity", {IMAGE: 16})
    tokens = torch.randn(2, 6, 16)  # (B, h*w, D)
    embedding = Embedding(tokens=tokens, pooled=tokens.mean(1), mask=torch.ones(2, 6, dtype=torch.bool), grid=(2, 3))
    fused = fusion({IMAGE: embedding})
    assert fused is embedding and fused.grid == (2, 3) and fusion.output_dim == 16
    with pytest.raises(ValueError, match="built for image"):
        fusion({TEXT: make_embedding(16, 4)})
    with pytest.raises(ValueError, match="exactly one modality"):
        build("identity", {IMAGE: 16, TEXT: 24})


def test_embedding_grid_must_cover_the_tokens():
    with pytest.raises(ValueError, match="grid"):
        Embedding(
            tokens=torch.zeros(1, 6, 4), pooled=torch.zeros(1, 4), mask=torch.ones(1, 6, dtype=torch.bool), grid=(2, 2)
        )
