"""Greedy k-center coreset: a small subset of patch features that covers all of them (PatchCore's subsampling)."""

from __future__ import annotations

import torch
from tqdm import tqdm


def coreset_size(total: int, ratio: float, size: int | None) -> int:
    """How many features to keep: `size` when given, else `ratio` of `total`; at least 1, at most `total`."""
    wanted = size if size is not None else round(total * ratio)
    return max(1, min(total, wanted))


def greedy_coreset(
    features: torch.Tensor, size: int, projection_dim: int = 32, seed: int = 0, progress: bool = False
) -> torch.Tensor:
    """Indices (size,) of a greedy k-center coreset of features (N, D).

    Each step adds the feature farthest from those chosen so far, so outliers and rare patches are kept
    while near-duplicates are dropped. Distances are measured after a fixed Gaussian random projection to
    `projection_dim` dimensions (Johnson-Lindenstrauss), which keeps the selection cheap; 0 = no projection.
    """
    total, dim = features.shape
    if size >= total:
        return torch.arange(total)
    threads = torch.get_num_threads()
    # each step is a few memory-bound vector operations: one thread is as fast idle and far faster on a busy machine
    torch.set_num_threads(1)
    try:
        return _greedy(features, size, projection_dim, seed, progress)
    finally:
        torch.set_num_threads(threads)


def _greedy(features: torch.Tensor, size: int, projection_dim: int, seed: int, progress: bool) -> torch.Tensor:
    total, dim = features.shape
    generator = torch.Generator().manual_seed(seed)
    points = features.float()
    if 0 < projection_dim < dim:
        projection = torch.randn(dim, projection_dim, generator=generator) / projection_dim**0.5  # (D, P)
        points = points @ projection  # (N, P)
    squared_norms = (points * points).sum(dim=1)  # (N,)
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = int(torch.randint(total, (1,), generator=generator))
    nearest = torch.full((total,), float("inf"))  # squared distance of each point to its nearest chosen point
    for step in tqdm(range(size), desc="coreset", unit="patch", disable=None if progress else True, mininterval=1.0):
        centre = points[chosen[step]]  # (P,)
        distances = squared_norms - 2.0 * (points @ centre) + centre @ centre  # (N,)
        torch.minimum(nearest, distances, out=nearest)
        if step + 1 < size:
            chosen[step + 1] = int(torch.argmax(nearest))
    return chosen
