"""EfficientNet-Lite0 image encoder with multi-scale patch features (stride 8 and 16)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet
from pydantic import Field

from mmfusion.config import LocalPath, PartParams
from mmfusion.encoders.base import Encoder
from mmfusion.media import check_image, resize_normalize
from mmfusion.registry import ENCODERS
from mmfusion.security.integrity import read_model_file
from mmfusion.types import Embedding, Modality

# EfficientNet-Lite was trained on (pixel - 127) / 128, i.e. mean = std = 0.5 on [0, 1] pixels.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
FEATURE_STRIDES = (8, 16)


class EfficientNetParams(PartParams):
    """`params:` for image.efficientnet_lite0."""

    weights: str = Field(default="embedded", pattern="^(embedded|random)$")
    checkpoint: LocalPath | None = None
    image_size: int = Field(default=224, ge=32, le=2048, multiple_of=16)


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a state_dict file, with a clear error for a missing or unreadable file."""
    try:
        data = read_model_file(path)  # checked against the manifest of a model folder being loaded
    except FileNotFoundError:
        raise ValueError(f"checkpoint {path!r} does not exist") from None
    except OSError as error:
        raise ValueError(f"checkpoint {path!r} is not a readable torch file: {error}") from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"checkpoint {path!r} is not a readable torch file: {error}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path!r} does not hold a state_dict")
    return state


@ENCODERS.register("image.efficientnet_lite0")
class EfficientNetLite0Encoder(Encoder):
    """EfficientNet-Lite0 (ImageNet weights from the pip package by default).

    tokens are the stride-16 feature map cells, pooled is the 1280-d global average of the head
    features; `feature_maps` gives the stride-8 and stride-16 maps for anomaly detection, and
    `classify` the ImageNet logits.
    """

    modality = Modality.IMAGE
    Params = EfficientNetParams
    input_names = ("pixels",)
    example_params = {"weights": "random", "image_size": 64}

    def __init__(self, params: EfficientNetParams) -> None:
        super().__init__(params)
        self.net = EfficientNet.from_name("efficientnet-lite0")
        if params.checkpoint is not None:
            self._load(params.checkpoint)
        elif params.weights == "embedded":
            from mmfusion.encoders.embedded import efficientnet_lite0_checkpoint

            self._load(str(efficientnet_lite0_checkpoint()))
        # Depthwise convolutions run ~1.4x faster on CPU in channels-last layout (measured: benchmarks/).
        self.net = self.net.to(memory_format=torch.channels_last).eval()
        # Index of the last block at each feature stride, found from the conv strides.
        self._stride_ends: dict[int, int] = {}
        stride = 2  # the stem
        for index, block in enumerate(self.net._blocks):
            stride *= block._depthwise_conv.stride[0]
            self._stride_ends[stride] = index
        self.token_dim = self.net._blocks[self._stride_ends[16]]._project_conv.out_channels
        self.output_dim = self.net._conv_head.out_channels
        self.feature_dims = {
            s: self.net._blocks[self._stride_ends[s]]._project_conv.out_channels for s in FEATURE_STRIDES
        }
        self.token_projection = torch.nn.Linear(self.token_dim, self.output_dim, bias=False)
        torch.nn.init.orthogonal_(self.token_projection.weight)

    def _load(self, path: str) -> None:
        state = load_state_dict(path)
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {path!r} does not fit EfficientNet-Lite0: "
                f"missing {missing[:3]}..., unexpected {unexpected[:3]}..."
            )

    def preprocess(self, items: list[Any]) -> dict[str, np.ndarray]:
        size = (self.params.image_size, self.params.image_size)
        pixels = [
            resize_normalize(check_image(item, f"image[{i}]"), size, LITE_MEAN, LITE_STD)
            for i, item in enumerate(items)
        ]
        return {"pixels": np.stack(pixels)}  # (B, 3, S, S)

    def _features(
        self, pixels: torch.Tensor, maps_only: bool = False
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
        """Stride-8/16 maps and the head features; `maps_only` stops after the last wanted map (no head)."""
        net = self.net
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        x = net._swish(net._bn0(net._conv_stem(pixels)))  # (B, 32, S/2, S/2)
        maps: dict[int, torch.Tensor] = {}
        wanted = {index: stride for stride, index in self._stride_ends.items() if stride in FEATURE_STRIDES}
        for index, block in enumerate(net._blocks):
            x = block(x)  # eval: no drop-connect
            if index in wanted:
                maps[wanted[index]] = x
                if maps_only and len(maps) == len(wanted):
                    return maps, None  # the stride-32 blocks and the head would be computed for nothing
        head = net._swish(net._bn1(net._conv_head(x)))  # (B, 1280, S/32, S/32)
        return maps, head

    def feature_maps(self, pixels: torch.Tensor) -> dict[int, torch.Tensor]:
        """Patch features by stride: {8: (B, 40, S/8, S/8), 16: (B, 112, S/16, S/16)}."""
        return self._features(pixels, maps_only=True)[0]

    def classify(self, pixels: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000)."""
        _, head = self._features(pixels)
        return self.net._fc(head.mean(dim=(2, 3)))

    def forward(self, pixels: torch.Tensor) -> Embedding:
        maps, head = self._features(pixels)
        tokens = maps[16].flatten(2).transpose(1, 2)  # (B, S/16*S/16, 112)
        tokens = self.token_projection(tokens)  # (B, L, 1280)
        pooled = head.mean(dim=(2, 3))  # (B, 1280)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return Embedding(tokens=tokens, pooled=pooled, mask=mask)
