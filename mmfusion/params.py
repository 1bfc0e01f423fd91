"""Shared `params:` pieces of parts: the width and heads of attention, and a transformer stack's shape."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from mmfusion.config import PartParams


def check_heads_divide_width(heads: int, width: int, heads_key: str = "heads", width_key: str = "width") -> None:
    """ValueError naming both keys when `heads` attention heads cannot split `width` evenly."""
    if width % heads:
        raise ValueError(f"{heads_key} {heads} does not divide {width_key} {width}; expected a divisor of {width}")


class AttentionParams(PartParams):
    """Width and number of attention heads; the heads must divide the width."""

    width: int = Field(default=256, gt=0)
    heads: int = Field(default=4, gt=0)

    @field_validator("heads")
    @classmethod
    def _heads_divide_width(cls, heads: int, info: ValidationInfo) -> int:
        width = info.data.get("width")
        if width is not None:
            check_heads_divide_width(heads, width)
        return heads


class TransformerParams(AttentionParams):
    """A transformer stack: width, heads, depth, MLP ratio and dropout."""

    depth: int = Field(default=2, gt=0)
    mlp_ratio: float = Field(default=4.0, gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
