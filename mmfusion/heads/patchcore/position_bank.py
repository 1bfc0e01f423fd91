"""Good patches kept per grid position, for registered parts: each patch is compared only with its own position."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmfusion.config import ConfigError
from mmfusion.heads.patchcore.memory_bank import read_array

POSITION_BANK_FILE = "position_bank.npy"
POSITION_STATS_FILE = "position_stats.npy"
STANDARDISE_CHUNK = 16  # fit parts scored at once against the bank when standardising (L x 16 x N floats)


class PositionBank:
    """Patch features (L, N, D) of N good parts at each of L grid positions.

    A patch's raw score is its mean distance to the `neighbours` nearest good patches at the same position;
    `scores` standardises it per position with the mean and deviation of the fit parts' own raw scores, each
    part left out of its own comparison. Suits parts that are framed alike (solar cells, boards in a
    fixture): a busbar is normal where busbars are and anomalous anywhere else.
    """

    def __init__(
        self,
        features: np.ndarray | torch.Tensor,
        neighbours: int,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
    ) -> None:
        bank = torch.as_tensor(np.asarray(features, np.float32))  # (L, N, D)
        if bank.dim() != 3 or bank.shape[1] < 2:
            raise ValueError(f"position bank of shape {tuple(bank.shape)}: expected (L, N, D) with N >= 2 parts")
        if not 1 <= neighbours < bank.shape[1]:
            raise ConfigError(
                f"anomaly.patchcore neighbours: {neighbours}; expected 1..{bank.shape[1] - 1} "
                f"(fewer than the {bank.shape[1]} good parts in the position bank)"
            )
        self.features = bank
        self.neighbours = neighbours
        self.center = bank.mean(dim=1, keepdim=True)  # (L, 1, D)
        self._centred = bank - self.center  # (L, N, D)
        self._norms = (self._centred * self._centred).sum(dim=2)  # (L, N)
        self.mean = None if mean is None else torch.as_tensor(np.asarray(mean, np.float32))  # (L,)
        self.std = None if std is None else torch.as_tensor(np.asarray(std, np.float32))  # (L,)

    @property
    def positions(self) -> int:
        return self.features.shape[0]

    @property
    def parts(self) -> int:
        return self.features.shape[1]

    @property
    def dim(self) -> int:
        return self.features.shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes held in memory (float32 features and their centred copy)."""
        return self.features.numel() * 8

    @torch.inference_mode()
    def raw_scores(self, queries: np.ndarray | torch.Tensor, leave_out: torch.Tensor | None = None) -> torch.Tensor:
        """Mean distance (B, L) of each query patch (B, L, D) to its k nearest bank patches at the same position.

        leave_out (B,): the bank part each query may not be compared with (itself, when the bank scores its own
        parts). A product ranks the bank; the distances to the chosen neighbours come from the differences.
        """
        queries = torch.as_tensor(np.asarray(queries, np.float32))  # (B, L, D)
        if queries.dim() != 3 or queries.shape[1:] != (self.positions, self.dim):
            raise ConfigError(
                f"patch features of shape {tuple(queries.shape)}: expected (B, {self.positions}, {self.dim}), the "
                "grid the position bank was fitted on; refit the model after changing the encoder's image_size"
            )
        centred = queries.transpose(0, 1) - self.center  # (L, B, D)
        ranking = torch.baddbmm(
            self._norms[:, None, :], centred, self._centred.transpose(1, 2), alpha=-2.0
        )  # (L, B, N)
        if leave_out is not None:
            ranking[:, torch.arange(queries.shape[0]), leave_out] = float("inf")
        nearest = ranking.topk(self.neighbours, dim=2, largest=False).indices  # (L, B, k)
        positions, batch, k = nearest.shape
        chosen = torch.gather(self._centred, 1, nearest.reshape(positions, batch * k, 1).expand(-1, -1, self.dim))
        differences = chosen.reshape(positions, batch, k, self.dim) - centred[:, :, None, :]  # (L, B, k, D)
        return differences.square().sum(dim=3).sqrt().mean(dim=2).T  # (B, L)

    def fit_standardisation(self) -> torch.Tensor:
        """Per-position mean and deviation of the bank parts' own raw scores, each part left out of its comparison;
        returns those parts' standardised scores (N, L)."""
        own = self.features.transpose(0, 1)  # (N, L, D)
        scores = torch.cat(
            [
                self.raw_scores(
                    own[start : start + STANDARDISE_CHUNK],
                    torch.arange(start, min(start + STANDARDISE_CHUNK, self.parts)),
                )
                for start in range(0, self.parts, STANDARDISE_CHUNK)
            ]
        )  # (N, L)
        self.mean, self.std = scores.mean(dim=0), scores.std(dim=0) + 1e-6
        return (scores - self.mean) / self.std

    def scores(self, queries: np.ndarray | torch.Tensor) -> np.ndarray:
        """Standardised patch scores (B, L): 0 is a typical good patch at that position, 1 one deviation above."""
        if self.mean is None or self.std is None:
            raise ConfigError("position bank has no standardisation; fit it (fit_standardisation) before scoring")
        return ((self.raw_scores(queries) - self.mean) / self.std).numpy()

    def save(self, folder: Path) -> None:
        """Write the bank as float16 (L, N, D) and the standardisation (2, L) as float32."""
        if self.mean is None or self.std is None:
            raise ConfigError("position bank has no standardisation to save; fit it first")
        folder = Path(folder)
        np.save(folder / POSITION_BANK_FILE, self.features.numpy().astype(np.float16), allow_pickle=False)
        np.save(folder / POSITION_STATS_FILE, torch.stack([self.mean, self.std]).numpy(), allow_pickle=False)

    @classmethod
    def load(cls, folder: Path, neighbours: int) -> PositionBank:
        """Read what `save` wrote; ConfigError naming the file when it is missing or does not fit."""
        features = read_array(Path(folder) / POSITION_BANK_FILE, "position bank")
        stats = read_array(Path(folder) / POSITION_STATS_FILE, "position bank standardisation")
        if features.ndim != 3 or stats.shape != (2, features.shape[0]):
            raise ConfigError(
                f"{Path(folder) / POSITION_STATS_FILE}: shape {stats.shape} does not fit a bank of {features.shape}; "
                "refit the model"
            )
        return cls(features, neighbours, stats[0], stats[1])
