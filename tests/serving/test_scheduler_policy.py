"""BatchScheduler instances and queue policy: parallel workers, a default queue timeout and its override."""

from __future__ import annotations

import threading
import time

import pytest

from mmfusion.config import ServingSpec
from mmfusion.serving.policy import ServingOverrides, effective_batching
from mmfusion.serving.scheduler import BatchScheduler, DeadlineExceededError
from tests.serving.test_scheduler import WAIT_S, RecordingBackend


@pytest.fixture
def make_scheduler():
    made: list[BatchScheduler] = []

    def make(run_batch, **limits) -> BatchScheduler:
        made.append(BatchScheduler(run_batch, name="tiny", **limits))
        return made[-1]

    yield make
    for scheduler in made:
        scheduler.close(grace_s=WAIT_S)


def test_two_instances_run_two_slow_batches_at_the_same_time(make_scheduler):
    both_running = threading.Barrier(3)
    spans: dict[str, tuple[float, float]] = {}

    def instance(name: str):
        def run(items: list) -> list:
            started = time.monotonic()
            both_running.wait(WAIT_S)  # breaks (and fails the test) unless the other batch runs meanwhile
            time.sleep(0.05)
            spans[name] = (started, time.monotonic())
            return [name for _ in items]

        return run

    scheduler = make_scheduler([instance("first"), instance("second")], max_batch_size=1)
    futures = [scheduler.submit("a"), scheduler.submit("b")]
    both_running.wait(WAIT_S)
    assert sorted(future.result(WAIT_S) for future in futures) == ["first", "second"]
    (start_1, end_1), (start_2, end_2) = spans.values()
    assert start_1 < end_2 and start_2 < end_1  # the two batches overlapped in time
    assert scheduler.instances == 2


def test_one_instance_runs_batches_one_after_the_other(make_scheduler):
    backend = RecordingBackend()
    scheduler = make_scheduler(backend, max_batch_size=1)
    backend.hold()
    first = scheduler.submit("a")
    assert backend.entered.wait(WAIT_S)
    second = scheduler.submit("b")
    time.sleep(0.1)
    assert scheduler.queued == 1 and not second.done()  # no second worker took it
    backend.release()
    assert first.result(WAIT_S) and second.result(WAIT_S)


def held(make_scheduler, **limits) -> tuple[BatchScheduler, RecordingBackend]:
    """A scheduler whose one worker is stuck in a warm-up batch, so later items only queue."""
    backend = RecordingBackend()
    scheduler = make_scheduler(backend, **limits)
    backend.hold()
    scheduler.submit("warm-up")
    assert backend.entered.wait(WAIT_S)
    return scheduler, backend


def test_default_timeout_drops_an_item_without_deadline_that_waited_too_long(make_scheduler):
    scheduler, backend = held(make_scheduler, default_timeout_us=50_000)
    stale = scheduler.submit("stale")
    time.sleep(0.15)
    fresh = scheduler.submit("fresh")
    backend.release()
    with pytest.raises(DeadlineExceededError):
        stale.result(WAIT_S)
    assert fresh.result(WAIT_S) == ("result", "fresh")
    assert ["stale"] not in backend.batches and all("stale" not in batch for batch in backend.batches)


def test_a_client_deadline_overrides_the_default_timeout_unless_the_policy_forbids_it(make_scheduler):
    scheduler, backend = held(make_scheduler, default_timeout_us=50_000)
    patient = scheduler.submit("patient", deadline=time.monotonic() + WAIT_S)
    strict, strict_backend = held(make_scheduler, default_timeout_us=50_000, allow_timeout_override=False)
    capped = strict.submit("capped", deadline=time.monotonic() + WAIT_S)
    time.sleep(0.15)
    backend.release()
    strict_backend.release()
    assert patient.result(WAIT_S) == ("result", "patient")
    with pytest.raises(DeadlineExceededError):
        capped.result(WAIT_S)


def test_flags_override_the_block_field_by_field_and_defaults_fill_the_rest():
    spec = ServingSpec(max_batch_size=16, preferred_batch_sizes=[4], queue_policy={"max_queue_size": 9})
    batching, sources = effective_batching("tiny", spec, ServingOverrides(max_batch_size=12, max_queue_delay_us=0))
    assert (batching.max_batch_size, sources["max_batch_size"]) == (12, "flag")
    assert (batching.max_queue_delay_us, sources["max_queue_delay_us"]) == (0, "flag")
    assert (batching.preferred_batch_sizes, sources["preferred_batch_sizes"]) == ((4,), "config")
    assert (batching.max_queue_size, sources["max_queue_size"]) == (9, "config")
    assert (batching.instances, sources["instances"]) == (1, "default")
    assert batching.default_timeout_us is None and sources["default_timeout_us"] == "default"


def test_a_flag_max_below_the_blocks_preferred_sizes_names_model_values_and_sources():
    spec = ServingSpec(max_batch_size=16, preferred_batch_sizes=[8])
    with pytest.raises(
        ValueError, match=r"model 'tiny': preferred_batch_sizes \[8\] \(config\) exceed max_batch_size 4"
    ):
        effective_batching("tiny", spec, ServingOverrides(max_batch_size=4))
