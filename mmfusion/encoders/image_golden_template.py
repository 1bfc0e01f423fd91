"""Golden-template image encoder: early fusion of a tested image with its aligned template, as stride-s cells."""

from __future__ import annotations

from typing import Any, Literal

import cv2
import numpy as np
import torch
from pydantic import Field

from mmfusion.config import PartParams
from mmfusion.encoders.base import Encoder
from mmfusion.media import check_image
from mmfusion.registry import ENCODERS
from mmfusion.types import Embedding, InputError, Modality

FUSE_CHANNELS = {"stack": 2, "difference": 1, "both": 3}
"""Planes per colour channel: stack = (template, tested), difference = tested - template, both = all three."""


class GoldenTemplateParams(PartParams):
    """`params:` for image.golden_template."""

    fuse: Literal["stack", "difference", "both"] = "both"
    color: Literal["gray", "rgb"] = "gray"
    stride: int = Field(default=4, ge=1, le=16)


GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
"""RGB -> grey (ITU-R BT.601 luma), the weights cv2.COLOR_RGB2GRAY uses."""


def unit_planes(image: np.ndarray, color: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (P, H, W) float32 in [0, 1]: one grey plane (P = 1) or the three colour planes."""
    pixels = image.astype(np.float32)
    if color == "gray":
        return cv2.transform(pixels, (GREY_WEIGHTS / 255.0).reshape(1, 3))[None]  # (1, H, W)
    return pixels.transpose(2, 0, 1) * np.float32(1 / 255)  # (3, H, W)


def fuse_pair(image: np.ndarray, reference: np.ndarray, fuse: str, color: str) -> np.ndarray:
    """One aligned pair of (H, W, 3) uint8 RGB images as fused planes (C, H, W) float32.

    Pixels are scaled to [0, 1]; the signed difference (tested - template, in [-1, 1]) keeps missing
    and extra material apart, which is what separates e.g. an open from a short.
    """
    tested, template = unit_planes(image, color), unit_planes(reference, color)
    planes = {
        "stack": [template, tested],
        "difference": [tested - template],
        "both": [template, tested, tested - template],
    }
    return np.concatenate(planes[fuse], axis=0)


def fuse_cells_into(
    image: np.ndarray, reference: np.ndarray, fuse: str, color: str, stride: int, out: np.ndarray
) -> None:
    """`space_to_depth(fuse_pair(...))` written into `out` (C*s*s, h, w); cells beyond the pair's are left as they are.

    The same numbers without the (C, H, W) planes in between: each image's planes are cut into cells once and the
    signed difference is taken between cells (cutting only moves pixels): 4.0 -> 1.6 ms per 640x640 grey pair.
    """
    height, width = image.shape[:2]
    rows, cols = -(-height // stride), -(-width // stride)
    tested, template = unit_planes(image, color), unit_planes(reference, color)  # (P, H, W) each
    pad = ((0, 0), (0, rows * stride - height), (0, cols * stride - width))
    if any(after for _, after in pad):
        tested, template = np.pad(tested, pad), np.pad(template, pad)
    size = tested.shape[0] * stride * stride  # cell channels of one image's planes
    if fuse == "difference":
        scratch = np.empty((2 * size, rows, cols), np.float32)
        tested_cells, template_cells = _cut(tested, stride, scratch[:size]), _cut(template, stride, scratch[size:])
        np.subtract(tested_cells, template_cells, out=out[:size, :rows, :cols])
        return
    template_cells = _cut(template, stride, out[:size])
    tested_cells = _cut(tested, stride, out[size : 2 * size])
    if fuse == "both":
        np.subtract(tested_cells, template_cells, out=out[2 * size : 3 * size, :rows, :cols])


def _cut(planes: np.ndarray, stride: int, out: np.ndarray) -> np.ndarray:
    """(P, H, W) planes, H and W multiples of `stride`, as cells into the top-left of `out` (P*s*s, h, w); that part.

    `out` must be C-contiguous (a whole array, or a slice of its first axis), so the reshape below is a view of it.
    """
    assert out.flags.c_contiguous, "cells are written through a reshaped view"
    channels, height, width = planes.shape
    rows, cols = height // stride, width // stride
    target = out.reshape(channels, stride, stride, *out.shape[1:])[..., :rows, :cols]  # (P, s, s, rows, cols) view
    target[...] = planes.reshape(channels, rows, stride, cols, stride).transpose(0, 2, 4, 1, 3)
    return out[:, :rows, :cols]


def space_to_depth(planes: np.ndarray, stride: int) -> np.ndarray:
    """(C, H, W) planes, H and W multiples of `stride` -> (C*s*s, H/s, W/s) cells, as torch's pixel_unshuffle.

    Done here rather than in the graph: ONNX Runtime ran the exported pixel_unshuffle (a 6-D Transpose) in
    7 of the 23 ms of pcb-template's 640x640 pass on one thread; this copy takes under 1 ms.
    """
    channels, height, width = planes.shape
    return _cut(planes, stride, np.empty((channels * stride * stride, height // stride, width // stride), np.float32))


@ENCODERS.register("image.golden_template")
class GoldenTemplateEncoder(Encoder):
    """Reads (tested image, golden template) pairs, fuses them early and cuts the planes into stride-s cells.

    tokens are the cells of the fused planes (pixel-unshuffled, D = planes * stride^2) on a (H/s, W/s) grid;
    the learned comparison lives in the head that reads them (e.g. `detection`). Images of one batch are
    zero-padded to a common size that is a multiple of the stride; padded cells are masked out.
    """

    modality = Modality.IMAGE
    Params = GoldenTemplateParams
    input_names = ("cells", "sizes")
    example_params = {"fuse": "both", "color": "gray", "stride": 4}
    uses_reference = True

    def __init__(self, params: GoldenTemplateParams) -> None:
        super().__init__(params)
        self.planes = FUSE_CHANNELS[params.fuse] * (1 if params.color == "gray" else 3)
        self.output_dim = self.planes * params.stride**2

    def preprocess(self, items: list[Any]) -> dict[str, np.ndarray]:
        """(image, reference) pairs -> cells (B, C*s*s, H/s, W/s) float32 (padded to the stride), sizes (B, 2) int64."""
        pairs = []
        for index, item in enumerate(items):
            if not isinstance(item, tuple) or len(item) != 2 or item[1] is None:
                raise InputError(f"reference_image: missing for item {index}; expected an (image, template) pair")
            image = check_image(item[0], "image")
            reference = check_image(item[1], "reference_image")
            if image.shape != reference.shape:
                raise InputError(
                    f"reference_image: size {reference.shape[1]}x{reference.shape[0]} differs from the image's "
                    f"{image.shape[1]}x{image.shape[0]}; expected an aligned pair"
                )
            pairs.append((image, reference))
        stride = self.params.stride
        sizes = np.array([image.shape[:2] for image, _ in pairs], np.int64)  # (B, 2) height, width
        rows, cols = -(-sizes.max(0) // stride)
        cells = np.zeros((len(pairs), self.output_dim, rows, cols), np.float32)  # (B, D, h, w), zero padding
        for index, (image, reference) in enumerate(pairs):
            fuse_cells_into(image, reference, self.params.fuse, self.params.color, stride, cells[index])
        return {"cells": cells, "sizes": sizes}

    def forward(self, cells: torch.Tensor, sizes: torch.Tensor) -> Embedding:
        stride = self.params.stride
        batch, dim, height, width = cells.shape  # (B, C*s*s, h, w)
        tokens = cells.flatten(2).transpose(1, 2)  # (B, h*w, D)
        rows = torch.arange(height, device=cells.device) * stride  # (h,)
        cols = torch.arange(width, device=cells.device) * stride  # (w,)
        valid = (rows[None, :, None] < sizes[:, 0, None, None]) & (cols[None, None, :] < sizes[:, 1, None, None])
        mask = valid.flatten(1)  # (B, h*w)
        weights = mask.unsqueeze(-1).to(tokens.dtype)  # (B, h*w, 1)
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, D)
        return Embedding(tokens=tokens, pooled=pooled, mask=mask, grid=(height, width))
