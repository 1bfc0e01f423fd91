"""`backend: auto`: onnxruntime on an export built once into the cache, verified, rebuilt, else torch."""

from __future__ import annotations

import builtins
import logging

import pytest

from mmfusion.cli.main import main
from mmfusion.config import RuntimeSpec
from mmfusion.pipeline import Pipeline
from mmfusion.repository import auto_backend
from mmfusion.runtime.exported import EXPORT_FILE
from mmfusion.runtime.parity import compare_outputs, within_fp32_parity
from mmfusion.security.integrity import verify_manifest, write_manifest
from mmfusion.types import Inputs
from tests.conftest import random_image
from tests.runtime.conftest import write_tiny_model

BATCH = [Inputs(image=random_image(21), text="scratch near the pad"), Inputs(image=random_image(22), text="ok")]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private export cache, so each test builds its own export."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("MMFUSION_EXPORT_CACHE", str(folder))
    return folder


@pytest.fixture
def signed_tiny(tmp_path):
    """The tiny model with `runtime: {backend: auto}`, signed with a sha256 manifest like a shipped model."""
    model = write_tiny_model(tmp_path / "models" / "tiny", runtime={"backend": "auto"})
    write_manifest(model)
    return model


@pytest.fixture
def builds(monkeypatch):
    """Counts the exports auto builds."""
    count = []
    real = auto_backend.build_export

    def counting(*args, **kwargs):
        count.append(args[4])
        return real(*args, **kwargs)

    monkeypatch.setattr(auto_backend, "build_export", counting)
    return count


def test_auto_runs_onnxruntime_on_a_cached_export_built_once(cache, signed_tiny, builds):
    first = Pipeline(signed_tiny)
    assert first.backend.registry_name == "onnxruntime"
    assert first.backend_choice.startswith("onnxruntime fp32 (auto): built and cached export")
    (folder,) = builds
    assert folder.is_relative_to(cache / "tiny")
    stamp = (folder / EXPORT_FILE).stat().st_mtime_ns
    second = Pipeline(signed_tiny)
    assert len(builds) == 1, "the second load re-exported"
    assert second.backend_choice.startswith("onnxruntime fp32 (auto): cached export")
    assert (folder / EXPORT_FILE).stat().st_mtime_ns == stamp
    assert not (signed_tiny / "versions").exists()
    assert verify_manifest(signed_tiny) > 0  # the signed model folder is untouched


def test_auto_agrees_with_torch_within_fp32_parity(cache, signed_tiny):
    auto = Pipeline(signed_tiny)
    reference = Pipeline(signed_tiny, backend="torch")
    assert reference.backend.registry_name == "torch"
    assert within_fp32_parity(compare_outputs(reference.raw_outputs(BATCH), auto.raw_outputs(BATCH)))
    got = [p.outputs["colour"]["label"] for p in auto.predict_batch(BATCH)]
    assert got == [p.outputs["colour"]["label"] for p in reference.predict_batch(BATCH)]


def test_tampered_cached_export_is_refused_and_rebuilt(cache, signed_tiny, builds, caplog):
    Pipeline(signed_tiny)
    (folder,) = builds
    graph = next(folder.glob("*.onnx"))
    graph.write_bytes(graph.read_bytes()[:-16] + bytes(16))
    with caplog.at_level(logging.WARNING):
        pipeline = Pipeline(signed_tiny)
    assert "cached export refused" in caplog.text
    assert len(builds) == 2
    assert pipeline.backend.registry_name == "onnxruntime"
    assert "rebuilt cached export" in pipeline.backend_choice
    assert verify_manifest(folder) > 0


def test_changed_model_gets_a_new_export(cache, signed_tiny, builds):
    Pipeline(signed_tiny)
    config = signed_tiny / "config.yaml"
    config.write_text(config.read_text().replace("seed: 3", "seed: 4"))
    write_manifest(signed_tiny)
    Pipeline(signed_tiny)
    assert len(builds) == 2 and builds[0] != builds[1]


def test_missing_onnxruntime_falls_back_to_torch_with_the_reason(cache, signed_tiny, monkeypatch, caplog):
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with caplog.at_level(logging.WARNING):
        pipeline = Pipeline(signed_tiny)
    assert pipeline.backend.registry_name == "torch"
    assert pipeline.backend_choice.startswith("torch fp32 (auto fallback)")
    assert "onnxruntime is not installed" in pipeline.backend_choice
    assert "falls back to torch" in caplog.text
    assert not cache.exists() or not any(cache.rglob(EXPORT_FILE))


def test_export_failure_falls_back_to_torch(cache, signed_tiny, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("tracing failed on purpose")

    monkeypatch.setattr(auto_backend, "build_export", broken)
    pipeline = Pipeline(signed_tiny)
    assert pipeline.backend.registry_name == "torch"
    assert "RuntimeError: tracing failed on purpose" in pipeline.backend_choice
    assert pipeline.predict(image=random_image(3)).outputs["colour"]["label"] in ("red", "blue")


def test_torch_named_by_flag_or_block_is_not_overridden(cache, signed_tiny, builds):
    assert Pipeline(signed_tiny, backend="torch").backend.registry_name == "torch"
    assert Pipeline(signed_tiny, backend=RuntimeSpec(backend="torch")).backend.registry_name == "torch"
    assert builds == []


def test_auto_prefers_the_model_folders_own_export(cache, tmp_path, builds):
    model = write_tiny_model(tmp_path / "tiny", runtime={"backend": "auto"})
    assert main(["export", str(model), "--groups", "image"]) == 0
    pipeline = Pipeline(model)
    assert "model folder export" in pipeline.backend_choice
    assert builds == []


def test_auto_precision_other_than_fp32_is_refused():
    with pytest.raises(ValueError, match="precision int8 is not available on auto"):
        RuntimeSpec(backend="auto", precision="int8")


def test_describe_prints_the_choice(cache, signed_tiny, capsys):
    assert main(["describe", str(signed_tiny)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.strip().startswith("backend "))
    assert "onnxruntime fp32 (auto)" in line and str(cache) in line
    assert "int8 not used" in line
