"""Capacity metrics: process CPU charged to each model's batches (intra-op threads included, overlaps split) and
the busy time, on a bare scheduler and through a real server on a real port."""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mmfusion.client import InspectionClient
from mmfusion.serving import build_server
from mmfusion.serving.cpu_share import CpuAccountant, cpu_cores
from mmfusion.serving.scheduler import BatchScheduler
from tests.test_pipeline import tiny_model

WAIT_S = 30.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_overlapping_batches_share_the_cpu_of_their_overlap_evenly():
    cpu, wall = FakeClock(), FakeClock()
    accountant = CpuAccountant(cpu_clock=cpu, clock=wall)
    cpu.now, wall.now = 5.0, 10.0  # CPU spent before any batch is charged to nobody
    heavy = accountant.begin()
    cpu.now, wall.now = 7.0, 11.0  # heavy alone: 2 s
    light = accountant.begin()
    cpu.now, wall.now = 8.0, 12.0  # both: 1 s, half each
    assert accountant.end(light) == pytest.approx(0.5)
    cpu.now, wall.now = 9.0, 13.0  # heavy alone again: 1 s
    assert accountant.end(heavy) == pytest.approx(3.5)
    assert accountant.busy_seconds() == pytest.approx(3.0)  # 10..13, the overlap counted once
    cpu.now, wall.now = 20.0, 20.0
    again = accountant.begin()
    wall.now = 21.5
    assert accountant.busy_seconds() == pytest.approx(4.5)  # a batch still running counts so far
    cpu.now = 20.25
    assert accountant.end(again) == pytest.approx(0.25)


def burn(cpu_seconds: float) -> None:
    """Spin until this thread used `cpu_seconds` of CPU."""
    until = time.thread_time() + cpu_seconds
    while time.thread_time() < until:
        pass


def test_a_batch_is_charged_the_cpu_of_the_threads_it_starts_and_housekeeping_keeps_its_share():
    def run_batch(items: list[str]) -> list[str]:
        workers = [threading.Thread(target=burn, args=(0.1,)) for _ in range(2)]  # like ORT's intra-op threads
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return items

    accountant = CpuAccountant()
    scheduler = BatchScheduler(
        run_batch,
        max_batch_size=2,
        max_queue_delay_us=0,
        name="burn",
        counted=lambda item: item != "chore",
        cpu=accountant,
    )
    try:
        started = time.monotonic()
        scheduler.submit("one").result(WAIT_S)
        charged = scheduler.cpu_seconds()
        assert 0.19 <= charged < 0.19 + (time.monotonic() - started) * 2  # both threads' CPU, at most 2 cores' worth
        scheduler.submit("chore").result(WAIT_S)
        assert scheduler.cpu_seconds() == charged  # a housekeeping batch is not an inference
        assert 0 < scheduler.busy_seconds() <= accountant.busy_seconds() <= time.monotonic() - started
    finally:
        scheduler.close()


def scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return next((s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())), 0.0)


def test_n_inferences_through_a_real_server_move_the_capacity_counters(tmp_path):
    tiny_model(tmp_path / "tiny")
    tiny = {"model": "tiny", "version": "1"}
    count = 12
    with build_server(["tiny"], port=0, model_root=tmp_path, metrics_port=0) as server:
        with InspectionClient(f"127.0.0.1:{server.port}", timeout=WAIT_S) as client:
            client.wait_ready(10)
            client.inspect("tiny", text="warm up")
            before = scrape(server.metrics_port)
            started = time.monotonic()
            for index in range(count):
                client.inspect("tiny", text=f"request {index}")  # distinct texts: no cache hit
            wall = time.monotonic() - started
            after = scrape(server.metrics_port)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("nv_inference_count", **tiny) == count
    cpu = moved("mmfusion_inference_cpu_seconds_total", **tiny)
    assert 0 < cpu <= moved("process_cpu_seconds_total") + 0.02  # 10 ms ticks of the process collector
    assert cpu / count < 1.0  # a tiny 64-pixel model: well under a CPU second per inference
    busy = moved("mmfusion_scheduler_busy_seconds_total", **tiny)
    assert 0 < busy <= moved("mmfusion_busy_seconds_total") + 1e-3 <= wall + 1e-3
    assert value(after, "mmfusion_cpu_cores") == cpu_cores() >= 1
