"""Memory bank of good patch features: nearest-neighbour distances (fp32, or bf16 where native), stored as float16."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from mmfusion.config import ConfigError
from mmfusion.security.integrity import IntegrityError, read_model_file

BANK_FILE = "memory_bank.npy"
MAX_CHUNK_ELEMENTS = 2**25  # query-by-bank distances held at once (128 MB of float32)
SEARCHES = ("auto", "fp32", "bf16")


def cpu_bf16_products() -> bool:
    """True when this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX): a bf16 search is then 2x an fp32 one."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def search_precision(search: str) -> str:
    """The precision a `search` setting runs in here: auto is bf16 where the CPU has it, else fp32."""
    if search not in SEARCHES:
        raise ConfigError(f"memory bank search: {search!r}; expected one of {', '.join(SEARCHES)}")
    if search == "auto":
        return "bf16" if cpu_bf16_products() else "fp32"
    return search


def read_array(path: Path, what: str) -> np.ndarray:
    """A fitted .npy array, read through the model folder's integrity check; ConfigError naming the file."""
    try:
        return np.load(io.BytesIO(read_model_file(path)), allow_pickle=False)
    except IntegrityError:
        raise
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: not a readable {what} ({error}); refit the model") from None


def split_bf16(values: torch.Tensor) -> torch.Tensor:
    """Values (N,) as two bfloat16-exact columns (N, 2) whose sum keeps about 16 bits of them."""
    high = values.to(torch.bfloat16).float()
    return torch.stack([high, values - high], dim=1)


class MemoryBank:
    """Patch features (M, D) of good parts; `distances` gives each query's distance to its nearest one.

    A matrix product ranks the bank for every query and the distance to the best-ranked feature is then
    measured from the difference in fp32. search "fp32" ranks in fp32; "bf16" ranks in bfloat16, half
    the time on CPUs with AVX512-BF16, and a distance differs only where two neighbours are closer than
    bf16 tells apart, by less than that (tests/anomaly/test_coreset.py). "auto" is bf16 where it is native.
    """

    def __init__(self, features: np.ndarray | torch.Tensor, search: str = "auto") -> None:
        bank = torch.as_tensor(np.asarray(features, np.float32))  # (M, D)
        if bank.dim() != 2 or bank.shape[0] == 0:
            raise ValueError(f"memory bank of shape {tuple(bank.shape)}: expected (M, D) with M >= 1")
        self.features = bank
        self.precision = search_precision(search)
        self.center = bank.mean(dim=0)  # (D,): centred features keep |q|^2 - 2 q.m + |m|^2 from cancelling digits away
        self._centred = bank - self.center  # (M, D)
        self.squared_norms = (self._centred * self._centred).sum(dim=1)  # (M,)
        if self.precision == "fp32":
            self._features_t = self._centred.T.contiguous()  # (D, M): the layout the distance product reads fastest
        else:
            ones = torch.ones(bank.shape[0], 2)
            # [-2m, |m|^2 (hi, lo), 1, 1] . [q, 1, 1, |q|^2 (hi, lo)] = |q - m|^2, accumulated in fp32, one product
            augmented = torch.cat([-2.0 * self._centred, split_bf16(self.squared_norms), ones], dim=1)  # (M, D + 4)
            self._features_t = augmented.to(torch.bfloat16).T.contiguous()  # (D + 4, M)

    @property
    def size(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes held in memory (float32 features and their centred copy, the product's copy, the norms)."""
        product = self._features_t.numel() * self._features_t.element_size()
        return self.features.numel() * 8 + product + self.squared_norms.numel() * 4

    @torch.inference_mode()
    def distances(self, queries: np.ndarray | torch.Tensor, chunk: int = 2048) -> np.ndarray:
        """Euclidean distance (N,) from each query (N, D) to its nearest bank feature, in chunks of queries."""
        queries = torch.as_tensor(np.asarray(queries, np.float32)).reshape(-1, self.dim)  # (N, D)
        chunk = max(16, min(chunk, MAX_CHUNK_ELEMENTS // self.size))  # a big bank gets fewer queries per chunk
        nearest = torch.empty(queries.shape[0])
        for start in range(0, queries.shape[0], chunk):
            block = queries[start : start + chunk] - self.center  # (n, D)
            nearest[start : start + chunk] = self._nearest(block)
        return nearest.clamp_min_(0.0).sqrt_().numpy()

    def _nearest(self, block: torch.Tensor) -> torch.Tensor:
        """Squared distances (n,) of centred queries (n, D): the product picks each neighbour, a difference measures it.

        |q - m|^2 = |m|^2 - 2 q.m + |q|^2 loses digits when |q| is much larger than |q - m|, so the product
        only ranks the bank and the distance to the neighbour it picks is computed from the difference.
        """
        if self.precision == "fp32":
            ranking = torch.addmm(self.squared_norms.unsqueeze(0), block, self._features_t, alpha=-2.0)  # (n, M)
            nearest = ranking.numpy().argmin(axis=1)  # (n,); numpy's argmin is 10x torch's here
        else:
            ones = torch.ones(block.shape[0], 2)
            augmented = torch.cat([block, ones, split_bf16((block * block).sum(dim=1))], dim=1)  # (n, D + 4)
            ranking = torch.mm(augmented.to(torch.bfloat16), self._features_t)  # (n, M) bf16, about |q - m|^2
            # non-negative bf16 orders like its int16 bits; one rounded below 0 (a distance of about 0) sorts first
            nearest = ranking.view(torch.int16).numpy().argmin(axis=1)  # (n,)
        return ((self._centred[torch.from_numpy(nearest)] - block) ** 2).sum(dim=1)

    def save(self, folder: Path) -> Path:
        """Write the bank as float16 (half the bytes; distances change far below the score noise)."""
        path = Path(folder) / BANK_FILE
        np.save(path, self.features.numpy().astype(np.float16), allow_pickle=False)
        return path

    @classmethod
    def load(cls, folder: Path, search: str = "auto") -> MemoryBank:
        """Read a bank written by `save`; ConfigError naming the file when it is missing or unreadable."""
        return cls(read_array(Path(folder) / BANK_FILE, "memory bank"), search)
