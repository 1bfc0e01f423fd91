"""Per-model `serving:` blocks in a real server: own scheduler settings, flags as overrides, queue policy, instances."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import yaml

from mmfusion.cli.main import main
from mmfusion.client import InspectionClient, ServerError
from mmfusion.proto import inspection_pb2 as pb
from mmfusion.serving import build_server
from mmfusion.serving.batching import Call
from mmfusion.serving.models import ModelManager
from mmfusion.serving.policy import ServingOverrides
from tests.serving.test_server import WAIT_S, hold_scheduler
from tests.serving.test_service_scheduling import eventually
from tests.test_pipeline import tiny_model

STRICT = {
    "max_batch_size": 2,
    "max_queue_delay_us": 1000,
    "queue_policy": {"max_queue_size": 2, "default_timeout_us": 200_000},
}
WIDE = {"max_batch_size": 4, "max_queue_delay_us": 0, "preferred_batch_sizes": [2], "instances": 2}


def served_model(root, name: str, serving: dict):
    """A tiny model folder with a `serving:` block."""
    folder = tiny_model(root / name)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["serving"] = serving
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    served_model(root, "strict", STRICT)
    served_model(root, "wide", WIDE)
    return root


@pytest.fixture(scope="module")
def server(model_root):
    with build_server(["strict", "wide"], port=0, model_root=model_root) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with InspectionClient(f"127.0.0.1:{server.port}", timeout=None) as connected:  # no deadline unless given
        connected.wait_ready(10)
        yield connected


def test_two_models_get_the_scheduler_settings_of_their_own_blocks(server):
    strict, wide = server.models.get("strict"), server.models.get("wide")
    assert (strict.scheduler.max_batch_size, strict.scheduler.max_queue_delay_s) == (2, 0.001)
    assert (strict.scheduler.max_queue_size, strict.scheduler.default_timeout_s) == (2, 0.2)
    assert (strict.scheduler.instances, len(strict.pipelines)) == (1, 1)
    assert (wide.scheduler.max_batch_size, wide.scheduler.max_queue_delay_s) == (4, 0.0)
    assert wide.scheduler.preferred_batch_sizes == (2,) and wide.scheduler.max_queue_size == 256  # the default
    assert wide.scheduler.default_timeout_s is None
    assert wide.batching_sources["max_queue_size"] == "default" and wide.batching_sources["instances"] == "config"


def test_a_full_queue_of_one_model_refuses_with_resource_exhausted_by_its_own_size(server, client):
    entry = server.models.get("strict")
    release = hold_scheduler(entry)
    with ThreadPoolExecutor(2) as pool:
        calls = [pool.submit(client._call, client.stub.Inspect, _request(f"q{i}"), WAIT_S) for i in range(2)]
        eventually(lambda: entry.scheduler.queued == 2)
        with pytest.raises(ServerError, match="queue full .*max_queue_size=2") as raised:
            client._call(client.stub.Inspect, _request("one too many"), WAIT_S)
        assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert client.inspect("wide", text="the other model still queues").model == "wide"
        release.set()
        assert all(call.result(WAIT_S).model == "strict" for call in calls)


def test_the_default_timeout_drops_a_queued_call_without_deadline(server, client):
    entry = server.models.get("strict")
    release = hold_scheduler(entry)
    with ThreadPoolExecutor(2) as pool:
        no_deadline = pool.submit(client.inspect, "strict", text="waits too long")
        eventually(lambda: entry.scheduler.queued == 1)
        with_deadline = pool.submit(client._call, client.stub.Inspect, _request("may wait"), WAIT_S)
        eventually(lambda: entry.scheduler.queued == 2)
        time.sleep(0.3)  # past default_timeout_us (0.2 s)
        release.set()
        with pytest.raises(ServerError) as raised:
            no_deadline.result(WAIT_S)
        assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert with_deadline.result(WAIT_S).model == "strict"  # its own deadline replaces the default


def test_two_instances_serve_two_slow_batches_side_by_side(server):
    entry = server.models.get("wide")
    both = threading.Barrier(2)
    first_running = threading.Event()

    def slow(pipeline) -> int:
        first_running.set()
        both.wait(WAIT_S)  # broken unless the other instance runs a batch meanwhile
        return id(pipeline)

    first = entry.scheduler.submit(Call(slow))
    assert first_running.wait(WAIT_S)
    second = entry.scheduler.submit(Call(slow))
    copies = {first.result(WAIT_S).unwrap(), second.result(WAIT_S).unwrap()}
    assert copies == {id(pipeline) for pipeline in entry.pipelines} and len(copies) == 2


def test_flags_override_the_block_for_every_model(model_root):
    manager = ModelManager(model_root, batching=ServingOverrides(max_batch_size=3, max_queue_size=5))
    try:
        entry = manager.load("strict")
        assert (entry.scheduler.max_batch_size, entry.scheduler.max_queue_size) == (3, 5)
        assert entry.scheduler.max_queue_delay_s == 0.001 and entry.scheduler.default_timeout_s == 0.2  # the block
        assert entry.batching_sources["max_batch_size"] == "flag"
        assert entry.batching_sources["max_queue_delay_us"] == "config"
        with pytest.raises(ValueError, match=r"model 'wide': preferred_batch_sizes \[2\] \(config\) exceed"):
            ModelManager(model_root, batching=ServingOverrides(max_batch_size=1)).load("wide")
    finally:
        manager.close(1.0)


def test_describe_prints_the_effective_serving_settings_and_their_sources(model_root, capsys):
    assert main(["describe", str(model_root / "strict")]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("serving"))
    assert "max_batch_size=2 (config)" in line and "max_queue_size=2 (config)" in line
    assert "default_timeout_us=200000 (config)" in line and "instances=1 (default)" in line
    assert "preferred_batch_sizes=[] (default)" in line


def _request(text: str) -> pb.InspectRequest:
    """An Inspect request for the strict model (sent with an explicit deadline through client._call)."""
    return pb.InspectRequest(model="strict", text=text)
