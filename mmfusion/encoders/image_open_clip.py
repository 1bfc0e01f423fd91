"""open_clip image encoder: ViT patch tokens and the CLIP image embedding."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import field_validator

from mmfusion.encoders.base import Encoder
from mmfusion.encoders.open_clip_model import EXAMPLE_MODEL, OpenClipParams, build_clip, model_config
from mmfusion.media import check_image, resize_normalize
from mmfusion.registry import ENCODERS
from mmfusion.types import Embedding, InputError, Modality


class OpenClipImageParams(OpenClipParams):
    """`params:` for image.open_clip; mean/std override the model's normalisation (e.g. SigLIP's 0.5)."""

    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    @field_validator("std")
    @classmethod
    def _positive_std(cls, std: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if std is not None and min(std) <= 0:
            raise ValueError(f"std {list(std)}: expected three values > 0")
        return std


@ENCODERS.register("image.open_clip")
class OpenClipImageEncoder(Encoder):
    """The visual tower of an open_clip model; the text tower is dropped after loading.

    pooled is the CLIP image embedding (what `encode_image` returns). For ViT towers the tokens are
    the patch tokens projected with the tower's own `proj`, so tokens and pooled share `embed_dim`;
    other towers (ModifiedResNet, timm) have no patch tokens here and give tokens = pooled[:, None].
    Images are stretched to the model's square input rather than centre-cropped: an inspection
    image's edges matter, and the aspect change is what open_clip's `resize_mode="squash"` does too.
    """

    modality = Modality.IMAGE
    Params = OpenClipImageParams
    input_names = ("pixels",)
    example_params = {"model_name": EXAMPLE_MODEL}

    def __init__(self, params: OpenClipImageParams) -> None:
        super().__init__(params)
        clip = build_clip(params.model_name, params.checkpoint)
        self.visual = clip.visual
        del clip  # the text tower is not needed here
        preprocess_cfg = self.visual.preprocess_cfg
        size = preprocess_cfg["size"]
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)
        self.mean = tuple(params.mean or preprocess_cfg["mean"])
        self.std = tuple(params.std or preprocess_cfg["std"])
        self.output_dim = model_config(params.model_name)["embed_dim"]
        from open_clip.transformer import VisionTransformer  # lazily: see open_clip_model.check_model_name

        self.has_patch_tokens = isinstance(self.visual, VisionTransformer)
        if self.has_patch_tokens:
            self.visual.output_tokens = True
        self.eval()

    def preprocess(self, items: list[Any]) -> dict[str, np.ndarray]:
        """RGB uint8 images (H, W, 3) -> normalised pixels (B, 3, S, S) at the model's input size."""
        if not items:
            raise InputError("images: empty batch; expected at least one (H, W, 3) uint8 RGB image")
        images = [check_image(item, f"image {index}") for index, item in enumerate(items)]
        pixels = [resize_normalize(image, self.image_size, self.mean, self.std) for image in images]
        return {"pixels": np.stack(pixels)}  # (B, 3, S, S)

    def forward(self, pixels: torch.Tensor) -> Embedding:
        """Pixels (B, 3, S, S) -> patch tokens (B, N, D) and the CLIP image embedding (B, D)."""
        if not self.has_patch_tokens:
            return Embedding.from_pooled(self.visual(pixels))  # (B, 1, D)
        pooled, tokens = self.visual(pixels)  # (B, D), (B, N, W)
        tokens = self._project_tokens(tokens)  # (B, N, D)
        if tokens.shape[-1] != pooled.shape[-1]:
            return Embedding.from_pooled(pooled)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)  # (B, N)
        return Embedding(tokens=tokens, pooled=pooled, mask=mask)

    def _project_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Bring patch tokens into the embedding space the way the tower brings its pooled token."""
        visual = self.visual
        if getattr(visual, "final_ln_after_pool", False) and visual.attn_pool is None:
            tokens = visual.ln_post(tokens)  # in this mode the tower normalises only the pooled token
        if visual.proj is not None:
            tokens = tokens @ visual.proj  # (B, N, D)
        return tokens
