"""ONNX export + onnxruntime backend against torch eager FP32: parity, reload, tampering, selection, errors."""

from __future__ import annotations

import gc
import json
import shutil

import numpy as np
import pytest

from mmfusion.config import ConfigError
from mmfusion.pipeline import Pipeline
from mmfusion.repository.exports import export_dir
from mmfusion.runtime.exported import EXPORT_FILE
from mmfusion.runtime.parity import compare_outputs, within_fp32_parity
from mmfusion.runtime.tensors import DYNAMIC
from mmfusion.security.integrity import MANIFEST_NAME, sha256_file
from mmfusion.types import InputError, Inputs
from tests.conftest import random_image
from tests.runtime.conftest import BLUE, RED, copy_model

GROUP_BATCHES = {
    "image+text": [
        Inputs(image=random_image(11), text="scratch on the left"),
        Inputs(image=random_image(12), text="ok"),
    ],
    "image": [Inputs(image=random_image(13)), Inputs(image=RED + 7), Inputs(image=BLUE + 7)],
    "text": [Inputs(text="a much longer note than any example the export was traced with, truly"), Inputs(text="x")],
}


@pytest.fixture(scope="module")
def torch_pipeline(tiny_fp32):
    return Pipeline(tiny_fp32, backend="torch")


@pytest.fixture(scope="module")
def ort_pipeline(tiny_fp32):
    return Pipeline(tiny_fp32, backend="onnxruntime")


@pytest.mark.parametrize("group", list(GROUP_BATCHES))
def test_every_group_matches_torch_eager_fp32(torch_pipeline, ort_pipeline, group):
    batch = GROUP_BATCHES[group]
    expected, got = torch_pipeline.raw_outputs(batch), ort_pipeline.raw_outputs(batch)
    assert set(got) == set(expected) == {"colour.probabilities", "flags.probabilities", "embedding.embedding"}
    parity = compare_outputs(expected, got)
    assert within_fp32_parity(parity), parity


def test_predictions_and_postprocess_are_the_same(torch_pipeline, ort_pipeline):
    for item in [RED + 3, BLUE + 3, random_image(21)]:
        expected, got = torch_pipeline.predict(image=item).outputs, ort_pipeline.predict(image=item).outputs
        assert got["colour"]["label"] == expected["colour"]["label"]
        assert got["colour"]["score"] == pytest.approx(expected["colour"]["score"], abs=1e-4)
        assert got["flags"]["flags"] == expected["flags"]["flags"]  # thresholds applied outside the graph
    assert ort_pipeline.predict(image=RED + 3).outputs["colour"]["label"] == "red"


def test_export_folder_records_specs_versions_and_sha256(tiny_fp32):
    folder = export_dir(tiny_fp32, 1, "onnx")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["image+text.onnx", "image.onnx", "text.onnx", EXPORT_FILE, MANIFEST_NAME]
    )
    info = json.loads((folder / EXPORT_FILE).read_text())
    assert (info["model"], info["version"], info["kind"], info["precision"]) == ("tiny", 1, "onnx", "fp32")
    assert info["batch_sizes"] == [1, 8] and info["calibration"] is None
    assert {"torch", "onnx", "onnxruntime"} <= set(info["exporter"])
    pixels = next(s for s in info["graphs"]["image"]["inputs"] if s["name"] == "image.pixels")
    assert pixels == {"name": "image.pixels", "dtype": "float32", "shape": [DYNAMIC, 3, 64, 64]}
    ids = next(s for s in info["graphs"]["text"]["inputs"] if s["name"] == "text.input_ids")
    assert ids["dtype"] == "int64" and ids["shape"] == [DYNAMIC, DYNAMIC]
    manifest = json.loads((folder / MANIFEST_NAME).read_text())["files"]
    assert set(manifest) == {p.name for p in folder.iterdir()} - {MANIFEST_NAME}
    assert all(manifest[name]["sha256"] == sha256_file(folder / name) for name in manifest)


def test_backend_declares_input_and_output_specs(ort_pipeline, torch_pipeline):
    for backend in (ort_pipeline.backend, torch_pipeline.backend):
        inputs = {spec.name: spec for spec in backend.input_specs()}
        outputs = {spec.name: spec for spec in backend.output_specs()}
        assert set(inputs) == {"image.pixels", "text.input_ids", "text.attention_mask"}
        assert inputs["image.pixels"].shape == (DYNAMIC, 3, 64, 64)
        assert outputs["colour.probabilities"].shape == (DYNAMIC, 2)
        assert outputs["embedding.embedding"].dtype == "float32"


def test_exported_deleted_and_reloaded_gives_the_same_outputs(tiny_fp32):
    batch = GROUP_BATCHES["image+text"]
    first = Pipeline(tiny_fp32, backend="onnxruntime")
    before = first.raw_outputs(batch)
    first.close()
    del first
    gc.collect()
    after = Pipeline(tiny_fp32, backend="onnxruntime").raw_outputs(batch)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


def test_a_tampered_export_file_is_refused_naming_the_file(tiny_fp32, tmp_path):
    model = copy_model(tiny_fp32, tmp_path / "tiny")
    graph = export_dir(model, 1, "onnx") / "image.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"refused to load the export: model file 'image\.onnx' does not match"):
        Pipeline(model, backend="onnxruntime")


def test_runtime_block_selects_the_backend_and_flag_overrides_it(tiny_fp32, tmp_path):
    model = copy_model(tiny_fp32, tmp_path / "tiny", runtime={"backend": "onnxruntime", "threads": 1})
    chosen = Pipeline(model)
    assert chosen.backend.registry_name == "onnxruntime"
    assert chosen.backend.providers == ["CPUExecutionProvider"]
    assert chosen.predict(image=BLUE + 2).outputs["colour"]["label"] == "blue"
    assert Pipeline(model, backend="torch").backend.registry_name == "torch"


def test_missing_export_and_precision_mismatch_say_which_command_fixes_them(tiny_fp32, tmp_path):
    bare = copy_model(tiny_fp32, tmp_path / "tiny")
    mismatch = copy_model(
        tiny_fp32, tmp_path / "other" / "tiny", runtime={"backend": "onnxruntime", "precision": "int8"}
    )
    shutil.rmtree(bare / "versions")
    with pytest.raises(ConfigError, match=r"has no onnx export .* run `mmfusion export .* --backend onnx`"):
        Pipeline(bare, backend="onnxruntime")
    with pytest.raises(
        ConfigError, match=r"exported at precision fp32, but runtime.precision is int8.*--precision int8"
    ):
        Pipeline(mismatch)


def test_wrong_input_shape_is_an_input_error(ort_pipeline):
    with pytest.raises(InputError, match=r"image\.pixels has shape \[1, 3, 32, 32\]; expected \[-1, 3, 64, 64\]"):
        ort_pipeline.backend.run({"image.pixels": np.zeros((1, 3, 32, 32), np.float32)})


@pytest.mark.slow
def test_open_clip_vit_tower_exports_within_fp32_parity(tmp_path):
    import yaml

    from mmfusion.encoders.open_clip_model import EXAMPLE_MODEL
    from mmfusion.exporting import export_model

    model = tmp_path / "clip"
    model.mkdir()
    config = {
        "name": "clip",
        "encoders": {"image": {"name": "image.open_clip", "params": {"model_name": EXAMPLE_MODEL}}},
        "fusion": {"name": "identity"},
        "heads": {"embedding": {"name": "embedding"}},
    }
    (model / "config.yaml").write_text(yaml.safe_dump(config))
    folder = export_model(model, "onnx", "fp32")
    assert [p.name for p in folder.glob("*.onnx")] == ["image.onnx"]
    batch = [Inputs(image=random_image(seed)) for seed in range(3)]
    expected = Pipeline(model, backend="torch").raw_outputs(batch)
    assert within_fp32_parity(compare_outputs(expected, Pipeline(model, backend="onnxruntime").raw_outputs(batch)))
