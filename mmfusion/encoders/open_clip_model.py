"""Shared open_clip model building: name checks, random weights or a local checkpoint, never a download."""

from __future__ import annotations

import contextlib
import difflib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import field_validator
from torch import nn

from mmfusion.config import LocalPath, PartParams

EXAMPLE_MODEL = "ViT-S-32-alt"
"""The smallest built-in ViT config (43M parameters, builds in about half a second): for tests."""


class OpenClipParams(PartParams):
    """`params:` shared by image.open_clip and text.open_clip."""

    model_name: str = "ViT-B-32"
    checkpoint: LocalPath | None = None
    """A local file: a full-model state_dict (torch.save(model.state_dict())), an open_clip training
    checkpoint ({"state_dict": ...}), .safetensors, or big_vision .npz; None = random weights."""

    @field_validator("model_name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        return check_model_name(name)


def check_model_name(name: str) -> str:
    """Return `name` if open_clip has a config for it, else raise naming a few close names."""
    import open_clip  # here, not at module import: open_clip brings torchvision, which the edge image leaves out

    known = open_clip.list_models()
    if name in known:
        return name
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.4) or known[:5]
    raise ValueError(
        f"model_name {name!r} is not an open_clip model; close names: {', '.join(close)} "
        f"(open_clip.list_models() has all {len(known)})"
    )


def model_config(name: str) -> dict[str, Any]:
    """The built-in open_clip config of a model: embed_dim, vision_cfg, text_cfg."""
    import open_clip

    return open_clip.get_model_config(check_model_name(name))


def _refuse_hub_text_tower(name: str) -> None:
    hf_model = model_config(name)["text_cfg"].get("hf_model_name")
    if hf_model:
        raise ValueError(
            f"model_name {name!r}: its text tower is the Hugging Face model {hf_model!r}, which open_clip "
            f"builds from the Hugging Face hub; mmfusion never downloads, so pick a model with a built-in "
            f"text tower (e.g. ViT-B-32)"
        )


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """Drop open_clip's 'initialized randomly' warning when a checkpoint is loaded right after."""

    def keep(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _load_checkpoint(model: nn.Module, model_name: str, checkpoint: str) -> None:
    import open_clip

    try:
        open_clip.load_checkpoint(model, checkpoint, strict=True, weights_only=True)
    except Exception as error:  # torch.load and load_state_dict raise many types for a bad file
        detail = " ".join(str(error).split())
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise ValueError(
            f"checkpoint {checkpoint!r} cannot be loaded as an open_clip {model_name} model: "
            f"{type(error).__name__}: {detail}"
        ) from None


def build_clip(model_name: str, checkpoint: str | None) -> nn.Module:
    """Build a full open_clip model in eval mode: random weights, or `checkpoint` loaded strictly."""
    import open_clip

    _refuse_hub_text_tower(model_name)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ValueError(f"checkpoint {checkpoint!r} does not exist; expected a local open_clip {model_name} file")
    # pretrained=None always: a string there may be taken for a download tag such as "openai".
    quiet = _quiet_random_init_warning() if checkpoint is not None else contextlib.nullcontext()
    with quiet:
        model = open_clip.create_model(model_name, pretrained=None, pretrained_image=False, pretrained_text=False)
    if checkpoint is not None:
        _load_checkpoint(model, model_name, checkpoint)
    return model.eval()
