"""Dynamic batching for one model: per-stream FIFOs served round-robin by one worker thread per model instance.

Requests without a stream id share one pseudo-stream (FIFO among themselves), which takes its
turn in the rotation like any camera stream: a flood of unary calls gets one stream's share,
never all of it, and a fast camera cannot starve the unary callers either.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, TypeVar

from mmfusion import tracing
from mmfusion.logs import current_request_id, request_id_bound
from mmfusion.serving import cpu_share

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

BatchHook = Callable[[int, list[float], float], None]

_UNARY = object()  # key of the pseudo-stream shared by requests that name no stream


class SchedulerError(RuntimeError):
    """Base class of the errors a scheduler puts on a request's future."""


class QueueFullError(SchedulerError):
    """The model's queue holds max_queue_size items; the caller should back off (RESOURCE_EXHAUSTED)."""


class DeadlineExceededError(SchedulerError):
    """The request's deadline passed before its batch was formed; it was not computed."""


class FrameDroppedError(SchedulerError):
    """A newer frame of the same stream superseded this one before it was served."""


class SchedulerClosedError(SchedulerError):
    """The scheduler is closed (or closed before this request was served)."""


@dataclass(frozen=True)
class BatchingConfig:
    """Batching limits of a model's scheduler; checked on construction, naming the bad field."""

    max_batch_size: int = 8
    max_queue_delay_us: int = 2000
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 256
    default_timeout_us: int | None = None
    allow_timeout_override: bool = True
    instances: int = 1
    owner: str = field(default="batching", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "preferred_batch_sizes", tuple(self.preferred_batch_sizes))
        _check_limits(
            self.owner, self.max_batch_size, self.max_queue_delay_us, self.preferred_batch_sizes, self.max_queue_size
        )
        if self.default_timeout_us is not None and self.default_timeout_us < 1:
            raise ValueError(f"{self.owner}: default_timeout_us={self.default_timeout_us}: expected >= 1 or none")
        if self.instances < 1:
            raise ValueError(f"{self.owner}: instances={self.instances}: expected >= 1")

    def as_kwargs(self) -> dict:
        """The limits as BatchScheduler keyword arguments (instances is the number of run_batch functions)."""
        kwargs = asdict(self)
        del kwargs["instances"], kwargs["owner"]
        return kwargs


@dataclass
class _Pending(Generic[T, R]):
    """One queued request: the item, its future and its timing."""

    item: T
    stream: object
    enqueued: float
    deadline: float | None
    future: Future = field(default_factory=Future)
    request_id: str | None = None  # the submitting call's, for the batch's logs and spans
    trace: Any = None  # the submitting call's trace context (tracing on): parent of its queue span
    enqueued_ns: int = 0  # time.time_ns() at submit (tracing on): the queue span's start


class _BusyClock:
    """Seconds the workers of a scheduler spent running batches; a batch still running counts so far."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0.0
        self._since: dict[int, float] = {}  # worker thread id -> start of its running batch

    def begin(self, now: float) -> None:
        with self._lock:
            self._since[threading.get_ident()] = now

    def end(self, now: float) -> None:
        with self._lock:
            self._total += now - self._since.pop(threading.get_ident(), now)

    def seconds(self) -> float:
        now = time.monotonic()
        with self._lock:
            return self._total + sum(now - since for since in self._since.values())


class BatchScheduler(Generic[T, R]):
    """Queue of one model: forms batches up to max_batch_size within max_queue_delay_us and runs them."""

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R]] | Sequence[Callable[[list[T]], Sequence[R]]],
        *,
        max_batch_size: int = 8,
        max_queue_delay_us: int = 0,
        preferred_batch_sizes: Sequence[int] = (),
        max_queue_size: int = 1024,
        default_timeout_us: int | None = None,
        allow_timeout_override: bool = True,
        name: str = "model",
        on_batch: BatchHook | None = None,
        counted: Callable[[T], bool] | None = None,
        cpu: cpu_share.CpuAccountant | None = None,
    ) -> None:
        """on_batch(size, queue_seconds, compute_seconds) after each batch reports the items counted(item) accepts
        (default: all), so housekeeping work stays out of the metrics; a batch of none is not reported.

        run_batch may be a list: one worker thread per function (per model instance), so batches run side by side.
        default_timeout_us: an item still queued that long fails DeadlineExceededError when it names no deadline
        (or, without allow_timeout_override, whichever of the two comes first).
        cpu: the accountant that charges process CPU time to batches (default: the process's, shared by all)."""
        _check_limits(f"model {name!r}", max_batch_size, max_queue_delay_us, preferred_batch_sizes, max_queue_size)
        runners = list(run_batch) if isinstance(run_batch, Sequence) else [run_batch]
        if not runners:
            raise ValueError(f"model {name!r}: run_batch: an empty list; expected one function per instance")
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_us / 1e6
        self.preferred_batch_sizes = tuple(sorted(set(preferred_batch_sizes), reverse=True))
        self.max_queue_size = max_queue_size
        self.default_timeout_s = None if default_timeout_us is None else default_timeout_us / 1e6
        self.allow_timeout_override = allow_timeout_override
        self._on_batch = on_batch
        self._counted = counted
        self._cond = threading.Condition()
        self._streams: dict[object, deque[_Pending]] = {}
        self._rotation: deque[object] = deque()  # streams with queued items, next to serve first
        self._queued = 0
        self._closing = False
        self._abandon = False
        self._busy = _BusyClock()
        self._cpu = cpu if cpu is not None else cpu_share.PROCESS
        self._cpu_lock = threading.Lock()
        self._cpu_seconds = 0.0
        self.started_at = time.monotonic()
        self._workers = [
            threading.Thread(target=self._serve, args=(runner,), name=f"scheduler-{name}-{index}", daemon=True)
            for index, runner in enumerate(runners)
        ]
        for worker in self._workers:
            worker.start()

    @property
    def instances(self) -> int:
        """Worker threads, one per model instance: how many batches may run at once."""
        return len(self._workers)

    @property
    def queued(self) -> int:
        """Items waiting to be batched, over all streams."""
        with self._cond:
            return self._queued

    @property
    def closed(self) -> bool:
        """True once close() has been called: submit raises."""
        return self._closing

    @property
    def stopped(self) -> bool:
        """True once every worker thread has ended: no batch runs now or later."""
        return not any(worker.is_alive() for worker in self._workers)

    def busy_seconds(self) -> float:
        """Seconds the workers have spent running batches since the scheduler started, summed over workers."""
        return self._busy.seconds()

    def cpu_seconds(self) -> float:
        """Process CPU seconds charged to this scheduler's batches (see cpu_share), counted items' share only.

        A batch's charge is split by item: housekeeping items that counted() rejects take their share out, so
        cpu_seconds() / items reported to on_batch is the CPU time of one inference.
        """
        with self._cpu_lock:
            return self._cpu_seconds

    def stream_depth(self, stream_id: str | None) -> int:
        """Unserved items of one stream (None: the shared pseudo-stream of unary requests)."""
        with self._cond:
            return len(self._streams.get(_stream_key(stream_id), ()))

    def submit(self, item: T, stream_id: str | None = None, deadline: float | None = None) -> Future[R]:
        """Queue one item; the future resolves to its result (deadline is a time.monotonic() instant)."""
        now = time.monotonic()
        pending = _Pending(item, _stream_key(stream_id), now, self._queue_deadline(now, deadline))
        pending.request_id = current_request_id()
        if tracing.enabled():
            pending.trace, pending.enqueued_ns = tracing.current_context(), time.time_ns()
        with self._cond:
            if self._closing:
                raise SchedulerClosedError(f"model {self.name!r}: the scheduler is shutting down")
            if self._queued >= self.max_queue_size:
                raise QueueFullError(
                    f"model {self.name!r}: queue full ({self._queued} of max_queue_size={self.max_queue_size});"
                    " retry later"
                )
            queue = self._streams.get(pending.stream)
            if queue is None:
                queue = self._streams[pending.stream] = deque()
                self._rotation.append(pending.stream)
            queue.append(pending)
            self._queued += 1
            self._cond.notify()
        return pending.future

    def _queue_deadline(self, now: float, deadline: float | None) -> float | None:
        """The caller's deadline, or the queue policy's default timeout when it gives none (or may not override)."""
        if self.default_timeout_s is None:
            return deadline
        default = now + self.default_timeout_s
        if deadline is None:
            return default
        return deadline if self.allow_timeout_override else min(deadline, default)

    def drop_oldest(self, stream_id: str | None, keep: int) -> list[T]:
        """Remove the oldest unserved items of a stream beyond the newest `keep`; their futures fail."""
        if keep < 0:
            raise ValueError(f"keep={keep}: expected a count >= 0")
        dropped: list[_Pending] = []
        key = _stream_key(stream_id)
        with self._cond:
            queue = self._streams.get(key)
            while queue and len(queue) > keep:
                dropped.append(queue.popleft())
            self._queued -= len(dropped)
            if queue is not None and not queue:
                self._forget(key)
        for pending in dropped:
            _fail(pending, FrameDroppedError(f"model {self.name!r}: superseded by a newer item of its stream"))
        return [pending.item for pending in dropped]

    def close(self, grace_s: float = 5.0) -> bool:
        """Stop accepting, serve what is queued within grace_s, fail the rest; True if all was served.

        A batch already running when the grace period ends is given up to another grace_s to finish
        (the worker is a daemon thread, so a stuck backend cannot hold the process open).
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._join(grace_s)
        if self.stopped:
            return True
        with self._cond:
            self._abandon = True
            abandoned = [pending for queue in self._streams.values() for pending in queue]
            self._streams.clear()
            self._rotation.clear()
            self._queued = 0
            self._cond.notify_all()
        for pending in abandoned:
            _fail(pending, SchedulerClosedError(f"model {self.name!r}: shut down before this request was served"))
        self._join(grace_s)
        return False

    def _join(self, grace_s: float) -> None:
        """Wait for every worker, all within one grace period."""
        deadline = time.monotonic() + grace_s
        for worker in self._workers:
            worker.join(max(deadline - time.monotonic(), 0.0))

    def _serve(self, run_batch: Callable[[list[T]], Sequence[R]]) -> None:
        """Worker loop: form a batch, run it on this worker's instance, resolve its futures; until drained."""
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch, run_batch)

    def _next_batch(self) -> list[_Pending] | None:
        """Block until a batch is due, then take it round-robin; None when closed and drained."""
        while True:
            with self._cond:
                while not self._queued and not self._closing:
                    self._cond.wait()
                if not self._queued or self._abandon:
                    return None
                now = time.monotonic()
                size = self._due_size()
                if size is None:
                    due_at = min(queue[0].enqueued for queue in self._streams.values()) + self.max_queue_delay_s
                    if now < due_at and not self._closing:
                        self._cond.wait(due_at - now)
                        continue
                    size = min(self._queued, self.max_batch_size)
                taken = self._take(size)
            batch, expired = [], []
            for pending in taken:
                if pending.deadline is not None and pending.deadline <= now:
                    expired.append(pending)
                elif pending.future.set_running_or_notify_cancel():
                    batch.append(pending)
            for pending in expired:
                _fail(pending, DeadlineExceededError(f"model {self.name!r}: deadline passed while queued"))
            if batch:
                return batch

    def _due_size(self) -> int | None:
        """Batch size to dispatch now without waiting (full or a preferred size), else None."""
        if self._queued >= self.max_batch_size:
            return self.max_batch_size
        for preferred in self.preferred_batch_sizes:
            if preferred <= self._queued:
                return preferred
        return None

    def _take(self, size: int) -> list[_Pending]:
        """Pop up to size items, one per stream per turn, keeping each stream's order."""
        taken: list[_Pending] = []
        while len(taken) < size and self._rotation:
            key = self._rotation.popleft()
            queue = self._streams[key]
            taken.append(queue.popleft())
            if queue:
                self._rotation.append(key)
            else:
                del self._streams[key]
        self._queued -= len(taken)
        return taken

    def _forget(self, key: object) -> None:
        """Drop an emptied stream from the table and the rotation."""
        del self._streams[key]
        self._rotation.remove(key)

    def _run(self, batch: list[_Pending], run_batch: Callable[[list[T]], Sequence[R]]) -> None:
        """Run the backend on one batch and resolve every future of it, whatever happens."""
        ids = {pending.request_id for pending in batch}
        with request_id_bound(ids.pop() if len(ids) == 1 else None):  # a batch of one call logs its request id
            self._run_batch(batch, run_batch)

    def _run_batch(self, batch: list[_Pending], run_batch: Callable[[list[T]], Sequence[R]]) -> None:
        started = time.monotonic()
        queue_seconds = [started - pending.enqueued for pending in batch]
        span = self._trace(batch) if tracing.enabled() else None
        cpu_token = self._cpu.begin()  # the process-wide busy window encloses this scheduler's (they end in turn)
        self._busy.begin(time.monotonic())
        try:
            with tracing.use(span):
                results = list(run_batch([pending.item for pending in batch]))
            if len(results) != len(batch):
                raise SchedulerError(
                    f"model {self.name!r}: run_batch returned {len(results)} results for {len(batch)} items"
                )
        except BaseException as error:  # every waiter must learn of the failure, even on SystemExit
            self._busy.end(time.monotonic())
            cpu_seconds = self._cpu.end(cpu_token)
            tracing.end(span, error)
            for pending in batch:
                pending.future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            log.warning("model %r: batch of %d failed: %s", self.name, len(batch), error)
        else:
            self._busy.end(time.monotonic())
            cpu_seconds = self._cpu.end(cpu_token)
            tracing.end(span)  # before the callers wake: their RPC spans end after their batch's
            for pending, result in zip(batch, results):
                pending.future.set_result(result)
        compute_seconds = time.monotonic() - started
        if self._counted is not None:
            queue_seconds = [seconds for pending, seconds in zip(batch, queue_seconds) if self._counted(pending.item)]
        if queue_seconds:
            with self._cpu_lock:
                self._cpu_seconds += cpu_seconds * len(queue_seconds) / len(batch)
        if self._on_batch is not None and queue_seconds:
            try:
                self._on_batch(len(queue_seconds), queue_seconds, compute_seconds)
            except Exception:
                log.exception("model %r: on_batch hook failed", self.name)

    def _trace(self, batch: list[_Pending]) -> Any:
        """Record each traced item's queue span and start the batch's span (None when no item is traced).

        The batch span is a child of its first traced item's call and links to every traced item's call.
        """
        now_ns = time.time_ns()
        parents = [pending.trace for pending in batch if pending.trace is not None]
        for pending in batch:
            if pending.trace is not None:
                attributes = {tracing.MODEL_ATTRIBUTE: self.name}
                if pending.request_id:
                    attributes[tracing.REQUEST_ID_ATTRIBUTE] = pending.request_id
                tracing.record_span("queue", pending.enqueued_ns, now_ns, pending.trace, attributes)
        if not parents:
            return None  # housekeeping (warm-ups, probes) submitted outside any call
        attributes = {tracing.MODEL_ATTRIBUTE: self.name, "mmfusion.batch_size": len(batch)}
        request_ids = [pending.request_id for pending in batch if pending.request_id]
        if request_ids:
            attributes["mmfusion.request_ids"] = request_ids
        return tracing.start_span("batch", attributes, parent=parents[0], links=parents)


def _stream_key(stream_id: str | None) -> object:
    """Queue key of a stream id; None maps to the shared unary pseudo-stream."""
    return _UNARY if stream_id is None else stream_id


def _fail(pending: _Pending, error: SchedulerError) -> None:
    """Resolve a queued request's future with an error unless its caller already cancelled it."""
    if pending.future.set_running_or_notify_cancel():
        pending.future.set_exception(error)


def _check_limits(
    owner: str, max_batch_size: int, max_queue_delay_us: int, preferred: Sequence[int], max_queue_size: int
) -> None:
    """Reject batching limits that cannot work, naming the field."""
    if max_batch_size < 1:
        raise ValueError(f"{owner}: max_batch_size={max_batch_size}: expected >= 1")
    if max_queue_delay_us < 0:
        raise ValueError(f"{owner}: max_queue_delay_us={max_queue_delay_us}: expected >= 0")
    if max_queue_size < 1:
        raise ValueError(f"{owner}: max_queue_size={max_queue_size}: expected >= 1")
    bad = [size for size in preferred if not 1 <= size <= max_batch_size]
    if bad:
        raise ValueError(f"{owner}: preferred_batch_sizes {list(preferred)}: expected sizes in 1..{max_batch_size}")
