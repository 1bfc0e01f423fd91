"""Work onto a model's scheduler and back: queued within the call's deadline, cancelled when the client leaves."""

from __future__ import annotations

import time
from concurrent.futures import Future

import grpc

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.serving.batching import Outcome, Work
from mmfusion.serving.deadlines import time_remaining
from mmfusion.serving.models import ModelEntry, ModelNotFound
from mmfusion.serving.scheduler import DeadlineExceededError, SchedulerClosedError


def submit(entry: ModelEntry, work: Work, stream_id: str | None = None, deadline: float | None = None) -> Future:
    """Queue one work item on the model's scheduler; a closed scheduler means the model was unloaded."""
    try:
        return entry.scheduler.submit(work, stream_id=stream_id, deadline=deadline)
    except SchedulerClosedError:
        raise ModelNotFound(f"model {entry.name!r} was unloaded while this request waited") from None


def run_on_model(entry: ModelEntry, work: Work, context: grpc.ServicerContext) -> Outcome:
    """Run one item through the model's scheduler within the call's deadline (expired work is never computed)."""
    remaining = time_remaining(context)
    future = submit(entry, work, deadline=None if remaining is None else time.monotonic() + remaining)
    context.add_callback(future.cancel)  # a client that leaves takes its queued work with it
    try:
        return future.result(timeout=remaining)
    except TimeoutError:
        future.cancel()
        raise DeadlineExceededError(
            f"model {entry.name!r}: the deadline passed before this request was served"
        ) from None
    except SchedulerClosedError:
        raise ModelNotFound(f"model {entry.name!r} was unloaded while this request waited") from None


def failed(error: Exception) -> Future:
    """A future that already holds `error` (work refused before it reached the scheduler)."""
    future: Future = Future()
    future.set_exception(error)
    return future


def milliseconds(start: float, end: float) -> float:
    """Milliseconds between two monotonic times."""
    return (end - start) * 1000.0


def timings(received: float, submitted: float, outcome: Outcome) -> pb.Timings:
    """Decode, queue, compute and total milliseconds of one item, as the reply carries them."""
    return pb.Timings(
        decode_ms=milliseconds(received, submitted),
        queue_ms=milliseconds(submitted, outcome.started),
        compute_ms=milliseconds(outcome.started, outcome.finished),
        total_ms=milliseconds(received, time.monotonic()),
    )
