"""A small fully-convolutional detector over stride-s cells: per-type centre heatmaps and box sizes (CenterNet)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def conv_block(inputs: int, outputs: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
    )


class CenterNet(nn.Module):
    """U-shaped encoder-decoder (cell, 2x, 4x coarser) ending in two maps at the input's cell resolution.

    `heatmap` (B, K, h, w): probability that a defect of each type is centred in the cell;
    `geometry` (B, 4, h, w): log box width and height in cells and the centre's offset within the cell
    (x, y, in cells, 0.5 = the cell's centre), read at the peaks.
    """

    def __init__(self, input_dim: int, types: int, width: int = 32, prior: float = 0.01) -> None:
        super().__init__()
        wide, wider = 2 * width, 3 * width
        embed = nn.Sequential(nn.Conv2d(input_dim, wide, 1, bias=False), nn.BatchNorm2d(wide), nn.ReLU(inplace=True))
        self.stem = nn.Sequential(embed, conv_block(wide, width))  # a cell's pixels, then its neighbours
        self.down1 = nn.Sequential(conv_block(width, wide, stride=2), conv_block(wide, wide))
        self.down2 = nn.Sequential(
            conv_block(wide, wider, stride=2), conv_block(wider, wider), conv_block(wider, wider)
        )
        self.lateral2 = nn.Conv2d(wider, wide, 1)
        self.up2 = conv_block(wide, wide)
        self.lateral1 = nn.Conv2d(wide, width, 1)
        self.up1 = conv_block(width, width)
        self.heatmap = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(width, types, 1)
        )
        self.geometry = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(width, 4, 1)
        )
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - prior) / prior))  # start near "no defect"

    def forward(self, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fine = self.features(cells)  # (B, W, h, w)
        return self.heatmap(fine), self.geometry(fine)  # (B, K, h, w) logits, (B, 4, h, w)

    def features(self, cells: torch.Tensor) -> torch.Tensor:
        """The decoder's cell-resolution features (B, W, h, w) both output branches read."""
        fine = self.stem(cells)  # (B, W, h, w)
        middle = self.down1(fine)  # (B, 2W, h/2, w/2)
        coarse = self.down2(middle)  # (B, 4W, h/4, w/4)
        middle = self.up2(middle + F.interpolate(self.lateral2(coarse), size=middle.shape[-2:], mode="nearest"))
        return self.up1(fine + F.interpolate(self.lateral1(middle), size=fine.shape[-2:], mode="nearest"))
