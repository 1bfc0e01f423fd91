"""What a model's scheduler runs: work items and the batch function that runs them through one Pipeline.

The batch function runs on the scheduler's single worker thread, so everything that touches the
pipeline (tokenizers, which are not thread safe, and the backend) happens on one thread per model.
A batch holds items of three kinds, each group run once:

- Predict: items from Pipeline.ready (decoded and image-preprocessed on the caller's thread, so this
  thread only concatenates them, runs the backend and postprocesses); one Pipeline.predict_batch call.
- InferTensors: KServe requests; requests whose tensors have the same names, dtypes and
  non-batch dimensions are concatenated along the batch axis and run as one backend call, then
  split back; requests that differ (e.g. token ids padded to another length) run one by one.
- Call: any function of the Pipeline, run alone (signature probes, tests); not counted in metrics.

When a group fails, its items are retried one by one, so one bad request cannot fail its neighbours.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmfusion import tracing
from mmfusion.pipeline import Pipeline
from mmfusion.types import InputError, Inputs

Arrays = dict[str, np.ndarray]
Attempt = tuple[Any, Exception | None]


@dataclass(frozen=True)
class Predict:
    """One sample for Pipeline.predict_batch: Pipeline.ready's item (a Ready), or Inputs it prepares on this thread."""

    inputs: Inputs


@dataclass(frozen=True)
class InferTensors:
    """One KServe request; graph_inputs() preprocesses its BYTES inputs, so it runs on the scheduler thread."""

    graph_inputs: Callable[[], Arrays]


@dataclass(frozen=True)
class Call:
    """A function of the Pipeline, run alone on the scheduler thread."""

    function: Callable[[Pipeline], Any]


Work = Predict | InferTensors | Call


def is_inference(work: Work) -> bool:
    """True for requests (Predict, InferTensors); Calls are housekeeping and stay out of the metrics."""
    return not isinstance(work, Call)


@dataclass(frozen=True)
class Outcome:
    """One item's value or error, with its batch's size and start and end (time.monotonic instants)."""

    value: Any
    error: Exception | None
    started: float
    finished: float
    batch_size: int

    def unwrap(self) -> Any:
        """The value, or raise the item's error."""
        if self.error is not None:
            raise self.error
        return self.value


def _attempt(function: Callable[..., Any], *args: Any) -> Attempt:
    """(value, None) or (None, the error) of one call."""
    try:
        return function(*args), None
    except Exception as error:  # kept per item; the caller's RPC maps it to a status
        return None, error


def _layout(arrays: Arrays) -> tuple:
    """What must match for two requests' tensors to be concatenated: names, dtypes, non-batch dimensions."""
    return tuple(sorted((name, array.dtype.str, array.shape[1:]) for name, array in arrays.items()))


def _rows(arrays: Arrays) -> int:
    """The batch size of one request (RequestTensors checked that every input agrees)."""
    return next(iter(arrays.values())).shape[0]


class ModelRunner:
    """The batch function of one model's scheduler: each kind of work in a batch goes through the Pipeline once."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def __call__(self, batch: Sequence[Work]) -> list[Outcome]:
        started = time.monotonic()
        attempts: list[Attempt] = [(None, None)] * len(batch)
        kinds: dict[type, list[int]] = defaultdict(list)
        for index, work in enumerate(batch):
            kinds[type(work)].append(index)
        if kinds[Predict]:
            predicted = self._predict([batch[i].inputs for i in kinds[Predict]])
            for index, attempt in zip(kinds[Predict], predicted):
                attempts[index] = attempt
        if kinds[InferTensors]:
            inferred = self._infer([batch[i].graph_inputs for i in kinds[InferTensors]])
            for index, attempt in zip(kinds[InferTensors], inferred):
                attempts[index] = attempt
        for index in kinds[Call]:
            attempts[index] = _attempt(batch[index].function, self.pipeline)
        finished = time.monotonic()
        return [Outcome(value, error, started, finished, len(batch)) for value, error in attempts]

    def _predict(self, items: list[Inputs]) -> list[Attempt]:
        """One predict_batch over every item; on failure, each item alone to find the bad one."""
        predictions, error = _attempt(self.pipeline.predict_batch, items)
        if error is None:
            return [(prediction, None) for prediction in predictions]
        if len(items) == 1:
            return [(None, error)]
        return [_attempt(lambda item: self.pipeline.predict_batch([item])[0], item) for item in items]

    def _infer(self, requests: list[Callable[[], Arrays]]) -> list[Attempt]:
        """Preprocess each request, run compatible ones concatenated, the rest (and failures) one by one."""
        prepared = [_attempt(graph_inputs) for graph_inputs in requests]
        attempts = list(prepared)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, (arrays, error) in enumerate(prepared):
            if error is None:
                groups[_layout(arrays)].append(index)
        for indices in groups.values():
            joined = self._run_joined([prepared[i][0] for i in indices]) if len(indices) > 1 else None
            for position, index in enumerate(indices):
                attempts[index] = (
                    (joined[position], None) if joined is not None else _attempt(self._run, prepared[index][0])
                )
        return attempts

    def _run(self, arrays: Arrays) -> Arrays:
        """One backend call; errors the request checks cannot see are the request's fault."""
        try:
            with tracing.span("backend.run", self._span_attributes(_rows(arrays))):
                return self.pipeline.backend.run(arrays)
        except (RuntimeError, IndexError, ValueError) as error:
            raise InputError(f"model {self.pipeline.name!r} cannot run these inputs: {error}") from None

    def _span_attributes(self, rows: int) -> dict[str, Any] | None:
        """A KServe backend.run span's attributes (None, nothing built, while tracing is off)."""
        if not tracing.enabled():
            return None
        backend = self.pipeline.backend.registry_name
        return {tracing.MODEL_ATTRIBUTE: self.pipeline.name, "mmfusion.backend": backend, "mmfusion.items": rows}

    def _run_joined(self, requests: list[Arrays]) -> list[Arrays] | None:
        """Run requests concatenated along the batch axis and split the outputs; None if that fails."""
        sizes = [_rows(arrays) for arrays in requests]
        joined = {name: np.concatenate([arrays[name] for arrays in requests]) for name in requests[0]}  # (sum B, ...)
        with tracing.span("backend.run", self._span_attributes(sum(sizes))):
            outputs, error = _attempt(self.pipeline.backend.run, joined)
        if error is not None or any(np.shape(array)[:1] != (sum(sizes),) for array in outputs.values()):
            return None
        offsets = np.cumsum(sizes)[:-1]
        pieces = {name: np.split(np.asarray(array), offsets) for name, array in outputs.items()}
        return [{name: parts[position] for name, parts in pieces.items()} for position in range(len(requests))]
