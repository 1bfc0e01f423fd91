"""Named graph tensors: dtype and shape, with DYNAMIC where a dimension varies between calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DYNAMIC = -1
"""A dimension that varies between calls (batch size, sequence length)."""


@dataclass(frozen=True)
class TensorSpec:
    """One named graph tensor: numpy dtype name and shape, DYNAMIC (-1) where a dimension varies."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TensorSpec:
        return cls(str(raw["name"]), str(raw["dtype"]), tuple(int(d) for d in raw["shape"]))

    def describe(self) -> str:
        """'image.pixels float32[-1,3,224,224]'."""
        return f"{self.name} {self.dtype}[{','.join(str(d) for d in self.shape)}]"
