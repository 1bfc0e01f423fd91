"""The pipeline graph: encoders -> fusion -> heads as one module with named tensors in and out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mmfusion.encoders.base import Encoder
from mmfusion.fusion.base import Fusion
from mmfusion.heads.base import Head
from mmfusion.types import Embedding, Inputs, Modality

SEPARATOR = "."


def input_name(modality: Modality, array: str) -> str:
    """Graph input name of one encoder array, e.g. 'image.pixels'."""
    return f"{modality.value}{SEPARATOR}{array}"


def output_name(head: str, key: str) -> str:
    """Graph output name of one head output, e.g. 'verdict.probabilities'."""
    return f"{head}{SEPARATOR}{key}"


class PipelineGraph(nn.Module):
    """Runs the encoders of the modalities present in `inputs`, fuses them, and runs every head."""

    def __init__(self, encoders: dict[Modality, Encoder], fusion: Fusion, heads: dict[str, Head]) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({m.value: e for m, e in sorted(encoders.items(), key=lambda i: i[0].value)})
        self.fusion = fusion
        self.heads = nn.ModuleDict(heads)

    def input_names(self) -> list[str]:
        """Every input name the graph accepts (a modality's inputs are all present or all absent)."""
        return [input_name(Modality(m), name) for m, encoder in self.encoders.items() for name in encoder.input_names]

    def embed(self, inputs: dict[str, torch.Tensor]) -> dict[Modality, Embedding]:
        """Run the encoder of every modality whose inputs are present."""
        embeddings: dict[Modality, Embedding] = {}
        for modality_name, encoder in self.encoders.items():
            modality = Modality(modality_name)
            names = {name: input_name(modality, name) for name in encoder.input_names}
            present = [key for key in names.values() if key in inputs]
            if not present:
                continue
            if len(present) != len(names):
                missing = sorted(set(names.values()) - set(present))
                raise ValueError(f"{modality.value} inputs are incomplete: missing {missing}")
            embeddings[modality] = encoder(**{name: inputs[key] for name, key in names.items()})
        return embeddings

    def fuse(self, inputs: dict[str, torch.Tensor]) -> Embedding:
        """Encoders then fusion: the fused Embedding the heads read."""
        embeddings = self.embed(inputs)
        if not embeddings:
            raise ValueError(f"no inputs for any modality; expected some of {self.input_names()}")
        return self.fusion(embeddings)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fused = self.fuse(inputs)
        outputs: dict[str, torch.Tensor] = {}
        for head_name, head in self.heads.items():
            for key, value in head(fused).items():
                outputs[output_name(head_name, key)] = value
        return outputs

    def postprocess(
        self,
        outputs: dict[str, np.ndarray],
        image_sizes: list[tuple[int, int] | None],
        inputs: list[Inputs] | None = None,
    ) -> list[dict[str, Any]]:
        """Every head's results per item from the graph's named outputs (`image_sizes`: each item's (H, W) or None;
        `inputs`: the items themselves, for heads that read pixels after the graph)."""
        per_item: list[dict[str, Any]] = [{} for _ in image_sizes]
        for head_name, head in self.heads.items():
            prefix = output_name(head_name, "")
            head_outputs = {k.removeprefix(prefix): v for k, v in outputs.items() if k.startswith(prefix)}
            if head.reads_image_sizes:
                results = head.postprocess(head_outputs, image_sizes=image_sizes)
            elif head.reads_inputs:
                results = head.postprocess(head_outputs, inputs=inputs)
            else:
                results = head.postprocess(head_outputs)
            for index, result in enumerate(results):
                per_item[index][head_name] = result
        return per_item
