"""The memory bank of good patch features: nearest-neighbour distances in torch, stored as float16 .npy."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from mmfusion.config import ConfigError
from mmfusion.security.integrity import IntegrityError, read_model_file

BANK_FILE = "memory_bank.npy"
MAX_CHUNK_ELEMENTS = 2**25  # query-by-bank distances held at once (128 MB of float32)


class MemoryBank:
    """Patch features (M, D) of good parts; `distances` gives each query's distance to its nearest one."""

    def __init__(self, features: np.ndarray | torch.Tensor) -> None:
        bank = torch.as_tensor(np.asarray(features, np.float32))  # (M, D)
        if bank.dim() != 2 or bank.shape[0] == 0:
            raise ValueError(f"memory bank of shape {tuple(bank.shape)}: expected (M, D) with M >= 1")
        self.features = bank
        self.squared_norms = (bank * bank).sum(dim=1)  # (M,)
        self._features_t = bank.T.contiguous()  # (D, M): the layout the distance product reads fastest

    @property
    def size(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes held in memory (float32 features, their transpose and their norms)."""
        return self.features.numel() * 8 + self.squared_norms.numel() * 4

    @torch.inference_mode()
    def distances(self, queries: np.ndarray | torch.Tensor, chunk: int = 2048) -> np.ndarray:
        """Euclidean distance (N,) from each query (N, D) to its nearest bank feature, in chunks of queries."""
        queries = torch.as_tensor(np.asarray(queries, np.float32)).reshape(-1, self.dim)  # (N, D)
        chunk = max(16, min(chunk, MAX_CHUNK_ELEMENTS // self.size))  # a big bank gets fewer queries per chunk
        nearest = torch.empty(queries.shape[0])
        for start in range(0, queries.shape[0], chunk):
            block = queries[start : start + chunk]  # (n, D)
            # |q - m|^2 = |m|^2 - 2 q.m + |q|^2; |q|^2 is the same for every m, so it is added after the min
            partial = torch.addmm(self.squared_norms.unsqueeze(0), block, self._features_t, alpha=-2.0)  # (n, M)
            nearest[start : start + chunk] = partial.amin(dim=1) + (block * block).sum(dim=1)  # amin: no indices, 20x
        return nearest.clamp_min_(0.0).sqrt_().numpy()

    def save(self, folder: Path) -> Path:
        """Write the bank as float16 (half the bytes; distances change far below the score noise)."""
        path = Path(folder) / BANK_FILE
        np.save(path, self.features.numpy().astype(np.float16), allow_pickle=False)
        return path

    @classmethod
    def load(cls, folder: Path) -> MemoryBank:
        """Read a bank written by `save`; ConfigError naming the file when it is missing or unreadable."""
        path = Path(folder) / BANK_FILE
        try:
            features = np.load(io.BytesIO(read_model_file(path)), allow_pickle=False)
        except IntegrityError:
            raise
        except (OSError, ValueError) as error:
            raise ConfigError(f"{path}: not a readable memory bank ({error}); refit the model") from None
        return cls(features)
