"""Spatial patch tokens for anomaly detection: any image encoder with `feature_maps`, letterboxed, multi-scale."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field, ValidationError, ValidationInfo, field_validator

from mmfusion.config import PartParams, format_validation_error
from mmfusion.encoders.base import Encoder
from mmfusion.encoders.patch_grid import aggregate_patches, letterbox
from mmfusion.media import check_image
from mmfusion.registry import ENCODERS
from mmfusion.types import Embedding, Modality


class PatchFeatureParams(PartParams):
    """`params:` for image.patch_features."""

    backbone: str = "image.efficientnet_lite0"
    backbone_params: dict[str, Any] = Field(default_factory=dict)
    image_size: int = Field(default=256, ge=32, le=2048, multiple_of=32)
    strides: list[int] = Field(default_factory=lambda: [8, 16], min_length=1)
    neighbourhood: int = Field(default=3, ge=1, le=7)

    @field_validator("backbone")
    @classmethod
    def _backbone_has_feature_maps(cls, name: str) -> str:
        if name not in ENCODERS:
            raise ValueError(f"'{name}' is not a known encoder; allowed: {', '.join(ENCODERS.names())}")
        backbone = ENCODERS.get(name)
        if backbone.modality is not Modality.IMAGE or not hasattr(backbone, "feature_maps"):
            usable = [n for n in ENCODERS.names() if hasattr(ENCODERS.get(n), "feature_maps")]
            raise ValueError(f"encoder '{name}' has no feature_maps; usable backbones: {', '.join(usable)}")
        return name

    @field_validator("backbone_params")
    @classmethod
    def _valid_backbone_params(cls, raw: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "backbone" not in info.data:
            return raw
        schema = ENCODERS.get(info.data["backbone"]).Params
        try:
            return schema.model_validate(raw, context=info.context).model_dump()
        except ValidationError as error:
            raise ValueError(format_validation_error("backbone_params", error, schema).replace("\n", "; ")) from None

    @field_validator("strides")
    @classmethod
    def _increasing(cls, strides: list[int]) -> list[int]:
        if strides != sorted(set(strides)):
            raise ValueError("expected distinct strides in increasing order, e.g. [8, 16]")
        return strides


@ENCODERS.register("image.patch_features")
class PatchFeatureEncoder(Encoder):
    """Letterboxed image -> backbone feature maps at several strides -> locally averaged patch tokens on a grid.

    tokens (B, h*w, D) are the cells of the finest stride in row-major order (grid (h, w)); D is the sum of
    the backbone's channels at the chosen strides. The aspect ratio is kept: the image's long side fills
    `image_size` and the rest of the square is mirrored, so every image of a model gives the same grid.
    """

    modality = Modality.IMAGE
    Params = PatchFeatureParams
    input_names = ("pixels",)
    example_params = {"backbone_params": {"weights": "random"}, "image_size": 64}

    def __init__(self, params: PatchFeatureParams) -> None:
        super().__init__(params)
        backbone_class = ENCODERS.get(params.backbone)
        backbone_params = dict(params.backbone_params)
        if "image_size" in backbone_class.Params.model_fields:
            backbone_params["image_size"] = params.image_size
        self.backbone = backbone_class(backbone_class.Params(**backbone_params)).eval()
        dims = getattr(self.backbone, "feature_dims", {})
        missing = [s for s in params.strides if s not in dims]
        if missing:
            raise ValueError(
                f"backbone '{params.backbone}' has no feature map at stride(s) {missing}; it has {sorted(dims)}"
            )
        self.output_dim = sum(dims[s] for s in params.strides)

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the patch grid: the image size over the finest stride."""
        cells = self.params.image_size // self.params.strides[0]
        return cells, cells

    def preprocess(self, items: list[Any]) -> dict[str, np.ndarray]:
        canvases = [letterbox(check_image(item, f"image[{i}]"), self.params.image_size) for i, item in enumerate(items)]
        return {"pixels": self.backbone.preprocess(canvases)["pixels"]}  # (B, 3, S, S)

    def forward(self, pixels: torch.Tensor) -> Embedding:
        maps = self.backbone.feature_maps(pixels)
        patches = aggregate_patches([maps[s] for s in self.params.strides], self.params.neighbourhood)  # (B, D, h, w)
        batch, dim, height, width = patches.shape
        tokens = patches.reshape(batch, dim, height * width).transpose(1, 2)  # (B, h*w, D)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return Embedding(tokens=tokens, pooled=tokens.mean(dim=1), mask=mask, grid=(height, width))
