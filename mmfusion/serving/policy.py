"""A model's effective serving settings: `serve` flags given, else its config's `serving:` block, else defaults."""

from __future__ import annotations

from dataclasses import dataclass, fields

from mmfusion.config import ServingSpec
from mmfusion.serving.scheduler import BatchingConfig

DEFAULTS = BatchingConfig()


@dataclass(frozen=True)
class ServingOverrides:
    """Server-wide `serve` flags that replace the same field of every model's `serving:` block; None: not given."""

    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    preferred_batch_sizes: tuple[int, ...] | None = None
    max_queue_size: int | None = None

    def given(self) -> dict:
        """The fields that were given."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def block_values(spec: ServingSpec) -> dict:
    """The fields a `serving:` block sets, flattened (queue_policy's keys at the top level)."""
    values = spec.model_dump(exclude={"queue_policy"}, exclude_unset=True)
    values.update(spec.queue_policy.model_dump(exclude_unset=True))
    values = {key: value for key, value in values.items() if value is not None}  # `key: null` reads as unset
    return {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}


def effective_batching(
    name: str, spec: ServingSpec, overrides: ServingOverrides | None = None
) -> tuple[BatchingConfig, dict[str, str]]:
    """The model's scheduler settings and where each came from ('flag', 'config' or 'default').

    Preferred sizes above an overriding --max-batch-size are a ValueError naming the model, both values and sources.
    """
    given = (overrides or ServingOverrides()).given()
    block = block_values(spec)
    values, sources = {}, {}
    for f in fields(BatchingConfig):
        if f.name == "owner":
            continue
        if f.name in given:
            values[f.name], sources[f.name] = given[f.name], "flag"
        elif f.name in block:
            values[f.name], sources[f.name] = block[f.name], "config"
        else:
            values[f.name], sources[f.name] = getattr(DEFAULTS, f.name), "default"
    largest = values["max_batch_size"]
    too_big = [size for size in values["preferred_batch_sizes"] if size > largest]
    if too_big:
        raise ValueError(
            f"model {name!r}: preferred_batch_sizes {list(values['preferred_batch_sizes'])} "
            f"({sources['preferred_batch_sizes']}) exceed max_batch_size {largest} ({sources['max_batch_size']}); "
            f"expected sizes in 1..{largest}"
        )
    return BatchingConfig(**values, owner=f"model {name!r}"), sources


def describe(config: BatchingConfig, sources: dict[str, str]) -> str:
    """One line: each setting with where it came from, e.g. `max_batch_size=4 (config)`."""
    parts = []
    for name, source in sources.items():
        value = getattr(config, name)
        shown = list(value) if isinstance(value, tuple) else ("none" if value is None else value)
        parts.append(f"{name}={shown} ({source})")
    return ", ".join(parts)
