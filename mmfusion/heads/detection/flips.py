"""Test-time flips of a detector's cell maps: the pair seen mirrored, its heatmaps mirrored back and averaged.

Cells are stride-s pixel-unshuffled planes (B, planes*s*s, h, w), channel = plane*s*s + row*s + col within the
cell. Mirroring the image left-right moves cell column c to w-1-c and the pixel column j within a cell to s-1-j,
so a flipped image's cells are the original cells with their channels permuted and the grid flipped: no second
preprocessing, and exact wherever the padded canvas is (the map is flipped back over the same canvas).
"""

from __future__ import annotations

import torch

MIRRORS = {"left-right": (False, True), "up-down": (True, False), "both": (True, True)}
"""(up-down, left-right) of each mirror a `test_flips` list may name; "both" is the half turn."""
FLIPS = tuple(MIRRORS.values())
"""(up-down, left-right) of the extra passes beside the plain one with `test_flips: true`."""


def chosen_flips(test_flips: bool | list[str]) -> tuple[tuple[bool, bool], ...]:
    """The extra passes `test_flips` asks for: none, all three mirrors (true) or the named ones, in MIRRORS' order."""
    if test_flips is True:
        return FLIPS
    if not test_flips:
        return ()
    return tuple(flip for name, flip in MIRRORS.items() if name in test_flips)


def cell_permutation(dim: int, stride: int, vertical: bool, horizontal: bool) -> torch.Tensor:
    """(D,) channel order of the cells of the mirrored image; D = planes * stride^2."""
    index = torch.arange(dim).reshape(dim // (stride * stride), stride, stride)  # (planes, row, col)
    if vertical:
        index = index.flip(1)
    if horizontal:
        index = index.flip(2)
    return index.reshape(-1)


def flip_cells(cells: torch.Tensor, permutation: torch.Tensor, vertical: bool, horizontal: bool) -> torch.Tensor:
    """Cells (B, D, h, w) of the image mirrored up-down and/or left-right."""
    return flip_map(cells.index_select(1, permutation), vertical, horizontal)


def flip_map(grid: torch.Tensor, vertical: bool, horizontal: bool) -> torch.Tensor:
    """A (B, C, h, w) map mirrored up-down and/or left-right (its own inverse)."""
    dims = [axis for axis, on in ((2, vertical), (3, horizontal)) if on]
    return grid.flip(dims) if dims else grid
