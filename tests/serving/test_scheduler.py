"""BatchScheduler: batching, delay bound, preferred sizes, fairness, order, backpressure, deadlines, drops, close."""

from __future__ import annotations

import threading
import time

import pytest

from mmfusion.serving.scheduler import (
    BatchScheduler,
    DeadlineExceededError,
    FrameDroppedError,
    QueueFullError,
    SchedulerClosedError,
)

WAIT_S = 10.0  # generous: the test machine is shared


class RecordingBackend:
    """run_batch that records every batch it sees and can be held closed to let a queue build up."""

    def __init__(self, fail_on: object = None) -> None:
        self.batches: list[list] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_on = fail_on

    def __call__(self, items: list) -> list:
        self.entered.set()
        assert self.gate.wait(WAIT_S)
        self.batches.append(list(items))
        if self.fail_on in items:
            raise RuntimeError(f"backend broke on {self.fail_on!r}")
        return [("result", item) for item in items]

    def hold(self) -> None:
        """Make the next batch block until release(), and wait until the worker is inside it."""
        self.gate.clear()
        self.entered.clear()

    def release(self) -> None:
        self.gate.set()


@pytest.fixture
def make_scheduler():
    made: list[BatchScheduler] = []

    def make(backend, **limits) -> BatchScheduler:
        scheduler = BatchScheduler(backend, name="tiny", **limits)
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.close(grace_s=WAIT_S)


def blocked_scheduler(make_scheduler, backend, **limits) -> BatchScheduler:
    """A scheduler whose worker is stuck inside a first 'warm-up' batch, so later submits only queue."""
    scheduler = make_scheduler(backend, **limits)
    backend.hold()
    scheduler.submit("warm-up")
    assert backend.entered.wait(WAIT_S)
    return scheduler


def test_items_are_batched_up_to_max_and_each_future_gets_its_own_result(make_scheduler):
    backend = RecordingBackend()
    scheduler = make_scheduler(backend, max_batch_size=4, max_queue_delay_us=2_000_000)
    futures = [scheduler.submit(index) for index in range(8)]
    assert [future.result(WAIT_S) for future in futures] == [("result", index) for index in range(8)]
    assert backend.batches == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_a_lone_item_waits_at_most_the_queue_delay(make_scheduler):
    backend = RecordingBackend()
    scheduler = make_scheduler(backend, max_batch_size=8, max_queue_delay_us=50_000)
    started = time.monotonic()
    assert scheduler.submit("alone").result(WAIT_S) == ("result", "alone")
    elapsed = time.monotonic() - started
    assert 0.04 <= elapsed < 2.0
    assert backend.batches == [["alone"]]


def test_preferred_size_dispatches_without_waiting_for_the_delay(make_scheduler):
    backend = RecordingBackend()
    scheduler = make_scheduler(backend, max_batch_size=8, max_queue_delay_us=30_000_000, preferred_batch_sizes=(2,))
    started = time.monotonic()
    futures = [scheduler.submit(index) for index in range(2)]
    assert [future.result(WAIT_S) for future in futures] == [("result", 0), ("result", 1)]
    assert time.monotonic() - started < 5.0  # the 30 s delay was not waited for
    assert backend.batches == [[0, 1]]


def test_largest_preferred_size_that_fits_is_taken_first(make_scheduler):
    backend = RecordingBackend()
    scheduler = blocked_scheduler(
        make_scheduler, backend, max_batch_size=8, max_queue_delay_us=0, preferred_batch_sizes=(2, 4)
    )
    futures = [scheduler.submit(index) for index in range(7)]
    backend.release()
    for future in futures:
        future.result(WAIT_S)
    assert [len(batch) for batch in backend.batches[1:]] == [4, 2, 1]


def test_round_robin_serves_a_slow_stream_before_a_flooding_one_drains(make_scheduler):
    backend = RecordingBackend()
    scheduler = blocked_scheduler(make_scheduler, backend, max_batch_size=4, max_queue_delay_us=0)
    flood = [scheduler.submit(("A", index), stream_id="A") for index in range(50)]
    trickle = [scheduler.submit(("B", index), stream_id="B") for index in range(5)]
    backend.release()
    for future in flood + trickle:
        future.result(WAIT_S)
    served = backend.batches[1:]
    batches_with_b = [number for number, batch in enumerate(served) if any(item[0] == "B" for item in batch)]
    assert batches_with_b == [0, 1, 2]  # 2 + 2 + 1 of B's items, alternating with A's
    assert served[0] == [("A", 0), ("B", 0), ("A", 1), ("B", 1)]
    for stream in ("A", "B"):
        order = [item[1] for batch in served for item in batch if item[0] == stream]
        assert order == sorted(order)


def test_unary_requests_share_one_fifo_pseudo_stream(make_scheduler):
    backend = RecordingBackend()
    scheduler = blocked_scheduler(make_scheduler, backend, max_batch_size=4, max_queue_delay_us=0)
    unary = [scheduler.submit(("u", index)) for index in range(3)]
    camera = [scheduler.submit(("cam", index), stream_id="cam") for index in range(3)]
    assert scheduler.stream_depth(None) == 3 and scheduler.stream_depth("cam") == 3
    backend.release()
    for future in unary + camera:
        future.result(WAIT_S)
    assert backend.batches[1] == [("u", 0), ("cam", 0), ("u", 1), ("cam", 1)]


def test_submit_raises_queue_full_at_the_bound_and_accepts_again_once_served(make_scheduler):
    backend = RecordingBackend()
    scheduler = blocked_scheduler(make_scheduler, backend, max_batch_size=2, max_queue_delay_us=0, max_queue_size=3)
    accepted = [scheduler.submit(index, stream_id=f"cam{index}") for index in range(3)]
    with pytest.raises(QueueFullError, match="max_queue_size=3"):
        scheduler.submit("one too many")
    assert scheduler.queued == 3
    backend.release()
    for future in accepted:
        future.result(WAIT_S)
    assert scheduler.submit("later").result(WAIT_S) == ("result", "later")


def test_expired_deadline_fails_without_being_computed(make_scheduler):
    backend = RecordingBackend()
    scheduler = blocked_scheduler(make_scheduler, backend, max_batch_size=4, max_queue_delay_us=0)
    expired = scheduler.submit("late", deadline=time.monotonic() + 0.01)
    in_time = scheduler.submit("fine", deadline=time.monotonic() + 60)
    time.sleep(0.05)
    backend.release()
    with pytest.raises(DeadlineExceededError):
        expired.result(WAIT_S)
    assert in_time.result(WAIT_S) == ("result", "fine")
    assert all("late" not in batch for batch in backend.batches)


def test_backend_error_fails_its_batch_and_the_next_batch_still_runs(make_scheduler):
    backend = RecordingBackend(fail_on="poison")
    scheduler = blocked_scheduler(make_scheduler, backend, max_batch_size=2, max_queue_delay_us=0)
    doomed = [scheduler.submit("poison"), scheduler.submit("neighbour")]
    backend.release()
    for future in doomed:
        with pytest.raises(RuntimeError, match="backend broke on 'poison'"):
            future.result(WAIT_S)
    assert scheduler.submit("next", stream_id="s").result(WAIT_S) == ("result", "next")


def test_wrong_result_count_is_reported_to_every_future(make_scheduler):
    scheduler = make_scheduler(lambda items: items[:1], max_batch_size=2, max_queue_delay_us=1_000_000)
    futures = [scheduler.submit(1), scheduler.submit(2)]
    for future in futures:
        with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
            future.result(WAIT_S)


def test_drop_oldest_removes_stale_frames_and_fails_their_futures(make_scheduler):
    backend = RecordingBackend()
    scheduler = blocked_scheduler(make_scheduler, backend, max_batch_size=8, max_queue_delay_us=0)
    frames = [scheduler.submit(("cam", sequence), stream_id="cam") for sequence in range(5)]
    other = scheduler.submit(("other", 0), stream_id="other")
    assert scheduler.drop_oldest("cam", keep=2) == [("cam", 0), ("cam", 1), ("cam", 2)]
    assert scheduler.drop_oldest("cam", keep=2) == []
    assert scheduler.drop_oldest("never-seen", keep=0) == []
    assert scheduler.queued == 3
    for future in frames[:3]:
        with pytest.raises(FrameDroppedError):
            future.result(WAIT_S)
    backend.release()
    assert [future.result(WAIT_S) for future in frames[3:]] == [("result", ("cam", 3)), ("result", ("cam", 4))]
    assert other.result(WAIT_S) == ("result", ("other", 0))
    assert all(("cam", 0) not in batch for batch in backend.batches)


def test_dropping_a_whole_stream_leaves_the_rotation_consistent(make_scheduler):
    backend = RecordingBackend()
    scheduler = blocked_scheduler(make_scheduler, backend, max_batch_size=4, max_queue_delay_us=0)
    scheduler.submit("gone", stream_id="cam")
    survivor = scheduler.submit("kept", stream_id="other")
    assert scheduler.drop_oldest("cam", keep=0) == ["gone"]
    backend.release()
    assert survivor.result(WAIT_S) == ("result", "kept")
    assert scheduler.submit("again", stream_id="cam").result(WAIT_S) == ("result", "again")


def test_cancelled_future_is_skipped(make_scheduler):
    backend = RecordingBackend()
    scheduler = blocked_scheduler(make_scheduler, backend, max_batch_size=4, max_queue_delay_us=0)
    cancelled = scheduler.submit("cancelled")
    kept = scheduler.submit("kept")
    assert cancelled.cancel()
    backend.release()
    assert kept.result(WAIT_S) == ("result", "kept")
    assert all("cancelled" not in batch for batch in backend.batches)


def test_close_drains_queued_work_then_rejects_new_items():
    backend = RecordingBackend()
    scheduler = BatchScheduler(backend, max_batch_size=2, max_queue_delay_us=30_000_000, name="tiny")
    futures = [scheduler.submit(index, stream_id="cam") for index in range(5)]
    started = time.monotonic()
    assert scheduler.close(grace_s=WAIT_S) is True
    assert time.monotonic() - started < 5.0  # closing does not wait out the 30 s queue delay
    assert [future.result(0) for future in futures] == [("result", index) for index in range(5)]
    with pytest.raises(SchedulerClosedError):
        scheduler.submit("after close")


def test_close_fails_what_it_cannot_serve_within_grace():
    backend = RecordingBackend()
    scheduler = BatchScheduler(backend, max_batch_size=1, max_queue_delay_us=0, name="tiny")
    backend.hold()
    running = scheduler.submit("running")
    assert backend.entered.wait(WAIT_S)
    stranded = scheduler.submit("stranded")
    threading.Timer(0.3, backend.release).start()
    assert scheduler.close(grace_s=0.1) is False
    with pytest.raises(SchedulerClosedError, match="shut down before"):
        stranded.result(WAIT_S)
    assert running.result(WAIT_S) == ("result", "running")


def test_on_batch_hook_reports_size_queue_times_and_compute_time(make_scheduler):
    reports = []
    scheduler = make_scheduler(
        lambda items: [item * 2 for item in items],
        max_batch_size=3,
        max_queue_delay_us=1_000_000,
        on_batch=lambda size, queue_seconds, compute_seconds: reports.append((size, queue_seconds, compute_seconds)),
    )
    assert [future.result(WAIT_S) for future in [scheduler.submit(n) for n in (1, 2, 3)]] == [2, 4, 6]
    deadline = time.monotonic() + WAIT_S
    while not reports and time.monotonic() < deadline:
        time.sleep(0.01)
    size, queue_seconds, compute_seconds = reports[0]
    assert size == 3 and len(queue_seconds) == 3
    assert all(0 <= seconds < WAIT_S for seconds in queue_seconds) and 0 <= compute_seconds < WAIT_S


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"max_batch_size": 0}, "max_batch_size=0"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us=-1"),
        ({"max_queue_size": 0}, "max_queue_size=0"),
        ({"max_batch_size": 4, "preferred_batch_sizes": (8,)}, "preferred_batch_sizes"),
    ],
)
def test_impossible_limits_are_rejected_naming_the_field(limits, field):
    with pytest.raises(ValueError, match=field):
        BatchScheduler(lambda items: items, **limits)


def test_on_batch_hook_reports_only_counted_items(make_scheduler):
    reports = []
    scheduler = make_scheduler(
        lambda items: items,
        max_batch_size=3,
        max_queue_delay_us=1_000_000,
        on_batch=lambda size, queue_seconds, compute_seconds: reports.append((size, len(queue_seconds))),
        counted=lambda item: item != "housekeeping",
    )
    futures = [scheduler.submit(item) for item in ("a", "housekeeping", "b")]
    assert [future.result(WAIT_S) for future in futures] == ["a", "housekeeping", "b"]
    assert scheduler.submit("housekeeping").result(WAIT_S) == "housekeeping"
    scheduler.close(grace_s=WAIT_S)
    assert reports == [(2, 2)]  # the housekeeping-only batch is not reported at all
