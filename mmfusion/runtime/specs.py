"""Modality groups, example inputs and tensor specs of a pipeline graph (what an export covers)."""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations
from typing import Any

import numpy as np

from mmfusion.graph import SEPARATOR, PipelineGraph, input_name
from mmfusion.runtime.tensors import DYNAMIC, TensorSpec
from mmfusion.types import InputError, Modality

GROUP_JOIN = "+"
EXAMPLE_WORDS = "scratch near the connector one missing pad solder joints look fine traces clean board".split()


def group_key(modalities: tuple[Modality, ...] | list[Modality]) -> str:
    """'image+text': the sorted modality names of one graph export."""
    return GROUP_JOIN.join(sorted(m.value for m in modalities))


def group_of_inputs(names: list[str] | set[str]) -> str:
    """The group key of a set of graph input names ('image.pixels', 'text.input_ids' -> 'image+text')."""
    return GROUP_JOIN.join(sorted({name.split(SEPARATOR, 1)[0] for name in names}))


def default_groups(modalities: list[Modality]) -> list[str]:
    """Every modality subset for up to three modalities, else the full set and each single modality."""
    ordered = sorted(modalities, key=lambda m: m.value)
    if len(ordered) <= 3:
        subsets = [c for size in range(len(ordered), 0, -1) for c in combinations(ordered, size)]
    else:
        subsets = [tuple(ordered), *[(m,) for m in ordered]]
    return [group_key(list(s)) for s in subsets]


def parse_groups(text: str, modalities: list[Modality]) -> list[str]:
    """'image+text,image' -> checked group keys; names must be modalities the model has an encoder for."""
    known = {m.value for m in modalities}
    groups = []
    for part in (p.strip() for p in text.split(",")):
        names = [n.strip() for n in part.split(GROUP_JOIN) if n.strip()]
        unknown = sorted(set(names) - known)
        if not names or unknown:
            raise InputError(
                f"--groups {text!r}: {part!r} is not a set of this model's modalities; "
                f"expected groups like {GROUP_JOIN.join(sorted(known))} separated by commas"
            )
        groups.append(GROUP_JOIN.join(sorted(set(names))))
    return list(dict.fromkeys(groups))


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32): positive, increasing batch sizes (TensorRT optimisation profiles)."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1 or max(sizes) > 4096 or list(sizes) != sorted(set(sizes)):
        raise InputError(
            f"--batch-sizes {text!r}: expected increasing whole numbers from 1 to 4096 separated by commas, e.g. 1,8,32"
        )
    return sizes


def _example_items(modality: Modality, batch: int, variant: int) -> list[Any]:
    """Raw inputs of one modality; `variant` changes sizes (text length) so dynamic dimensions show."""
    rng = np.random.default_rng(variant)
    if modality is Modality.IMAGE:
        # a different size per variant: encoders that keep the input's size (golden template) export dynamic H, W
        height, width = ((96, 128), (112, 144))[variant % 2]
        return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(batch)]
    if modality is Modality.TEXT:
        length = 2 + 5 * (variant % 3)  # a different longest text per variant: the token axis shows as dynamic
        return [
            " ".join(EXAMPLE_WORDS[(index + j) % len(EXAMPLE_WORDS)] for j in range(length - index % 2))
            for index in range(batch)
        ]
    if modality is Modality.AUDIO:
        seconds = 1.0 + 0.5 * variant
        time = np.arange(int(16000 * seconds)) / 16000
        return [(0.2 * np.sin(2 * np.pi * (220 + 40 * index) * time)).astype(np.float32) for index in range(batch)]
    # a different frame count per variant: the frame axis shows as dynamic where the encoder keeps every frame
    return [[rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4 + variant)] for _ in range(batch)]


def example_arrays(graph: PipelineGraph, group: str, batch: int, variant: int = 0) -> dict[str, np.ndarray]:
    """Named graph inputs for the modalities of `group`, made by each encoder's own preprocess."""
    arrays: dict[str, np.ndarray] = {}
    for name in group.split(GROUP_JOIN):
        modality = Modality(name)
        encoder = graph.encoders[modality.value]
        items = _example_items(modality, batch, variant)
        if encoder.uses_reference:
            items = [(image, np.clip(image.astype(np.int16) + 3, 0, 255).astype(np.uint8)) for image in items]
        for array_name, array in encoder.preprocess(items).items():
            arrays[input_name(modality, array_name)] = array
    return arrays


def specs_from_examples(examples: list[dict[str, np.ndarray]]) -> list[TensorSpec]:
    """Specs of named arrays seen in several calls: dimensions that differ between calls are DYNAMIC."""
    specs = []
    for name in sorted(examples[0]):
        shapes = [example[name].shape for example in examples]
        shape = tuple(dims[0] if len(set(dims)) == 1 else DYNAMIC for dims in zip(*shapes))
        specs.append(TensorSpec(name, str(examples[0][name].dtype), (DYNAMIC, *shape[1:])))
    return specs


def probe_specs(
    graph: PipelineGraph, group: str, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs of one group, found by running `run` on two differently sized batches."""
    inputs, outputs = [], []
    for batch, variant in ((1, 0), (2, 1)):
        arrays = example_arrays(graph, group, batch, variant)
        inputs.append(arrays)
        outputs.append(run(arrays))
    return specs_from_examples(inputs), specs_from_examples(outputs)


def check_inputs(inputs: dict[str, np.ndarray], specs: list[TensorSpec], where: str) -> dict[str, np.ndarray]:
    """Inputs in the declared dtypes, in spec order; a missing input or a wrong rank is an InputError."""
    expected = {spec.name for spec in specs}
    if set(inputs) != expected:
        raise InputError(f"{where}: inputs {sorted(inputs)} do not match the graph's {sorted(expected)}")
    checked = {}
    for spec in specs:
        array = np.asarray(inputs[spec.name])
        if array.ndim != len(spec.shape) or any(d not in (DYNAMIC, a) for d, a in zip(spec.shape, array.shape)):
            raise InputError(f"{where}: {spec.name} has shape {list(array.shape)}; expected {list(spec.shape)}")
        checked[spec.name] = np.ascontiguousarray(array, dtype=spec.dtype)
    return checked
