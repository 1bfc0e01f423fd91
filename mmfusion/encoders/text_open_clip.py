"""open_clip text encoder: per-token features and the CLIP text embedding, with the bundled BPE tokenizer."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mmfusion.encoders.base import Encoder
from mmfusion.encoders.open_clip_model import EXAMPLE_MODEL, OpenClipParams, build_clip, model_config
from mmfusion.registry import ENCODERS
from mmfusion.types import Embedding, InputError, Modality


def _refuse_hub_tokenizer(name: str) -> None:
    hf_tokenizer = model_config(name)["text_cfg"].get("hf_tokenizer_name")
    if hf_tokenizer or "siglip" in name.lower():
        raise ValueError(
            f"model_name {name!r}: its tokenizer ({hf_tokenizer or 'SigLIP sentencepiece'}) comes from the "
            f"Hugging Face hub; mmfusion never downloads, so pick a model with open_clip's bundled BPE "
            f"tokenizer (e.g. ViT-B-32)"
        )


def _project(features: torch.Tensor, projection: nn.Module | torch.Tensor | None) -> torch.Tensor:
    """Apply an open_clip text projection, which is a Linear, a bare matrix or absent."""
    if projection is None:
        return features
    if isinstance(projection, nn.Linear):
        return projection(features)
    return features @ projection


@ENCODERS.register("text.open_clip")
class OpenClipTextEncoder(Encoder):
    """The text half of an open_clip model; the visual tower is dropped after loading.

    tokens are every position's final features (after ln_final) through the text projection, so they
    live in the same `embed_dim` space as pooled, which equals the model's `encode_text`. The mask
    marks the real tokens (start, words, end); padding is token id 0. Texts longer than the context
    (77 tokens for the CLIP models) are cut by the tokenizer, which keeps the end token.
    """

    modality = Modality.TEXT
    Params = OpenClipParams
    input_names = ("input_ids",)
    example_params = {"model_name": EXAMPLE_MODEL}

    def __init__(self, params: OpenClipParams) -> None:
        super().__init__(params)
        _refuse_hub_tokenizer(params.model_name)
        import open_clip  # lazily: see open_clip_model.check_model_name

        self.tokenizer = open_clip.get_tokenizer(params.model_name)
        clip = build_clip(params.model_name, params.checkpoint)
        if hasattr(clip, "text"):
            # CustomTextCLIP / CoCa keep the whole text tower in one module.
            self.text_tower: nn.Module | None = clip.text
            self.text_tower.output_tokens = True
            self.pad_id = int(getattr(self.text_tower, "pad_id", 0))
        else:
            # Plain CLIP spreads the text tower over its own attributes: keep the model, drop its visual tower.
            del clip.visual
            self.clip = clip
            self.text_tower = None
            self.pad_id = 0
        self.output_dim = model_config(params.model_name)["embed_dim"]
        self.eval()

    def preprocess(self, items: list[Any]) -> dict[str, np.ndarray]:
        """Strings -> BPE token ids (B, context_length) int64, zero-padded."""
        if not items:
            raise InputError("texts: empty batch; expected at least one string")
        for index, item in enumerate(items):
            if not isinstance(item, str):
                raise InputError(f"text {index}: expected a string, got {type(item).__name__}")
        input_ids = self.tokenizer(list(items))  # (B, L)
        return {"input_ids": input_ids.numpy().astype(np.int64)}

    def forward(self, input_ids: torch.Tensor) -> Embedding:
        """Token ids (B, L) -> token features (B, L, D), the CLIP text embedding (B, D), mask (B, L)."""
        if self.text_tower is not None:
            tokens, pooled = self._tower_features(input_ids)
        else:
            tokens, pooled = self._clip_features(input_ids)
        mask = input_ids != self.pad_id  # (B, L)
        return Embedding(tokens=tokens, pooled=pooled, mask=mask)

    def _clip_features(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP.encode_text, keeping every position's features as well as the pooled one."""
        from open_clip.transformer import text_global_pool

        clip = self.clip
        x = clip.token_embedding(input_ids) + clip.positional_embedding  # (B, L, W)
        x = clip.transformer(x, attn_mask=clip.attn_mask)  # (B, L, W)
        x = clip.ln_final(x)  # (B, L, W)
        pooled = text_global_pool(x, input_ids, clip.text_pool_type, eos_token_id=clip.text_eos_id)  # (B, W)
        return _project(x, clip.text_projection), _project(pooled, clip.text_projection)  # (B, L, D), (B, D)

    def _tower_features(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A TextTransformer tower with output_tokens: pooled is projected, the tokens are not yet."""
        tower = self.text_tower
        pooled, tokens = tower(input_ids)  # (B, D), (B, L, W)
        if getattr(tower, "cls_emb", None) is not None:
            tokens = tower.ln_final(tokens)  # with a class token the tower normalises only the pooled one
        return _project(tokens, tower.text_projection), pooled  # (B, L, D), (B, D)
