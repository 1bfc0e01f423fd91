"""`mmfusion serve` flags reach build_server: metrics port, batching limits, cache size and exclusions."""

from __future__ import annotations

import inspect

import pytest

from mmfusion.cli.main import main
from mmfusion.serving import server
from mmfusion.serving.models import ModelManager
from tests.test_pipeline import tiny_model


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tiny_model(root / "tiny")
    return root


@pytest.fixture
def served(monkeypatch) -> list[tuple[tuple, dict]]:
    """Calls to serve() instead of serving."""
    calls: list[tuple[tuple, dict]] = []
    monkeypatch.setattr(server, "serve", lambda *args, **kwargs: calls.append((args, kwargs)) or 0)
    return calls


def test_serve_flags_reach_the_server(served):
    argv = ["serve", "tiny", "--port", "6000", "--metrics-port", "9100", "--max-batch-size", "16"]
    argv += ["--max-queue-delay-us", "500", "--preferred-batch-size", "4", "--preferred-batch-size", "8"]
    argv += ["--max-queue-size", "32", "--cache-mb", "0.5", "--no-cache-model", "tiny", "--no-cache-model", "other"]
    assert main(argv) == 0
    (args, kwargs) = served[0]
    assert args == (["tiny"], 6000)
    assert kwargs["metrics_port"] == 9100 and kwargs["cache_bytes"] == 512 * 1024
    assert kwargs["no_cache_models"] == ["tiny", "other"]
    limits = {key: kwargs[key] for key in ("max_batch_size", "max_queue_delay_us", "preferred_batch_sizes")}
    assert limits == {"max_batch_size": 16, "max_queue_delay_us": 500, "preferred_batch_sizes": (4, 8)}
    assert kwargs["max_queue_size"] == 32


def test_serve_defaults_match_build_server(served):
    assert main(["serve"]) == 0
    kwargs = served[0][1]
    defaults = inspect.signature(server.build_server).parameters
    for key in ("max_batch_size", "max_queue_delay_us", "max_queue_size", "cache_bytes", "metrics_port"):
        assert kwargs[key] == defaults[key].default, key
    assert kwargs["preferred_batch_sizes"] is None and kwargs["no_cache_models"] == []
    limits = (kwargs["max_batch_size"], kwargs["max_queue_delay_us"], kwargs["max_queue_size"])
    assert limits == (None, None, None)  # not given: each model's serving: block, else the built-in defaults


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-batch-size", "0"], "batching: max_batch_size=0: expected >= 1"),
        (["--max-batch-size", "4", "--preferred-batch-size", "8"], "preferred_batch_sizes [8]: expected sizes in 1..4"),
        (["--max-queue-size", "0"], "batching: max_queue_size=0: expected >= 1"),
        (["--max-queue-delay-us", "-5"], "batching: max_queue_delay_us=-5: expected >= 0"),
        (["--cache-mb", "-1"], "--cache-mb -1.0: expected megabytes >= 0"),
    ],
)
def test_impossible_serve_flags_exit_2_naming_the_field(model_root, monkeypatch, capsys, flags, message):
    monkeypatch.setenv("MMFUSION_MODELS", str(model_root))

    def load(*args, **kwargs):
        raise AssertionError("a model was loaded although the flags are impossible")

    monkeypatch.setattr(ModelManager, "load", load)
    assert main(["serve", "tiny", "--port", "0", *flags]) == 2  # refused before any model is loaded
    error = capsys.readouterr().err
    assert error.startswith("mmfusion: error: ") and message in error and error.count("\n") == 1
