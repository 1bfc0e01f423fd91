"""INT8 on CPU: static QDQ calibrated on a manifest and dynamic quantisation, against torch FP32."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmfusion.pipeline import Pipeline
from mmfusion.repository.exports import export_dir
from mmfusion.runtime.exported import EXPORT_FILE
from mmfusion.runtime.parity import compare_outputs
from mmfusion.runtime.quantize import calibration_hash, load_calibration_rows
from mmfusion.types import InputError, Inputs
from tests.conftest import random_image
from tests.runtime.conftest import BLUE, RED


def test_static_int8_is_calibrated_recorded_and_smaller(tiny_int8, tiny_fp32, calibration_manifest):
    folder = export_dir(tiny_int8, 1, "onnx")
    info = json.loads((folder / EXPORT_FILE).read_text())
    assert info["precision"] == "int8" and list(info["graphs"]) == ["image"]
    assert info["graphs"]["image"]["quantization"] == "static-qdq"
    rows = load_calibration_rows(calibration_manifest)
    assert info["calibration"]["items"] == 16
    assert info["calibration"]["sha256"] == calibration_hash(calibration_manifest, rows)
    fp32_size = (export_dir(tiny_fp32, 1, "onnx") / "image.onnx").stat().st_size
    assert (folder / "image.onnx").stat().st_size <= 0.5 * fp32_size


def test_static_int8_agrees_with_torch_fp32(tiny_int8):
    reference, quantized = Pipeline(tiny_int8, backend="torch"), Pipeline(tiny_int8, backend="onnxruntime")
    images = [RED + 5, BLUE + 5, RED + 20, BLUE + 20, *[random_image(seed) for seed in range(4)]]
    batch = [Inputs(image=image) for image in images]
    parity = compare_outputs(reference.raw_outputs(batch), quantized.raw_outputs(batch))
    assert parity["min_cosine"] >= 0.99, parity
    for image, label in ((RED + 5, "red"), (BLUE + 5, "blue")):
        assert quantized.predict(image=image).outputs["colour"]["label"] == label


def test_int8_export_without_text_group_refuses_text_with_a_clear_error(tiny_int8):
    with pytest.raises(InputError, match=r"has graphs for image, not for text; re-export with `--groups text`"):
        Pipeline(tiny_int8, backend="onnxruntime").predict(text="only words")


def test_calibration_hash_follows_image_content(calibration_manifest, tmp_path):
    rows = load_calibration_rows(calibration_manifest)
    before = calibration_hash(calibration_manifest, rows)
    assert before == calibration_hash(calibration_manifest, rows)
    image = rows[0].image
    original = image.read_bytes()
    try:
        image.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        assert calibration_hash(calibration_manifest, rows) != before
    finally:
        image.write_bytes(original)


def test_dynamic_int8_quantises_matmuls(tmp_path, tiny_fp32):
    import onnx
    import onnxruntime as ort

    from mmfusion.runtime.quantize import quantize_dynamic_onnx

    source = export_dir(tiny_fp32, 1, "onnx") / "text.onnx"
    target = tmp_path / "text.int8.onnx"
    quantize_dynamic_onnx(source, target)
    operators = {node.op_type for node in onnx.load(str(target)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & operators
    feed = {
        "text.input_ids": np.array([[101, 2023, 2003, 102], [101, 7592, 102, 0]], np.int64),
        "text.attention_mask": np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.int64),
    }
    names = [o.name for o in ort.InferenceSession(str(source)).get_outputs()]
    fp32 = dict(zip(names, ort.InferenceSession(str(source)).run(names, feed)))
    int8 = dict(zip(names, ort.InferenceSession(str(target)).run(names, feed)))
    assert compare_outputs(fp32, int8)["min_cosine"] >= 0.98


def test_output_cosine_and_int8_rounding():
    from mmfusion.runtime.quantize import _rounded_like_int8, output_cosine

    rng = np.random.default_rng(0)
    outputs = [[rng.standard_normal((2, 5, 8)).astype(np.float32)]]
    assert output_cosine(outputs, outputs) == pytest.approx(1.0)
    assert output_cosine(outputs, [[-outputs[0][0]]]) == pytest.approx(-1.0)
    scales = np.array([1e-3, 1.0, 10.0, 0.0], np.float32)[:, None, None, None]  # a dead channel included
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * scales  # (C_out, C_in, kh, kw)
    rounded = _rounded_like_int8(weight, 0)
    for channel in range(4):
        step = np.abs(weight[channel]).max() / 64  # symmetric 7-bit grid per output channel (reduce_range)
        assert np.abs(rounded[channel] - weight[channel]).max() <= step / 2 + 1e-9
        assert np.abs(rounded[channel]).max() == pytest.approx(np.abs(weight[channel]).max(), rel=1e-6)
    matmul = rng.standard_normal((6, 4)).astype(np.float32)  # MatMul B: channels on the last axis
    assert np.abs(_rounded_like_int8(matmul, -1) - matmul).max() <= (np.abs(matmul).max(axis=0) / 128).max() + 1e-9


def test_int8_weights_use_8_bits_only_where_the_cpu_has_int8_dot_products(
    tiny_int8, calibration_manifest, tmp_path, monkeypatch, caplog
):
    import onnx
    from onnx import numpy_helper

    from mmfusion.exporting import export_model
    from mmfusion.runtime import quantize
    from mmfusion.runtime.exported import ExportInfo
    from mmfusion.runtime.onnx_backend import warn_if_weights_may_saturate
    from tests.runtime.conftest import write_tiny_model

    def largest_int8_weight(folder) -> int:
        model = onnx.load(str(folder / "image.onnx"))
        weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
        return max(int(np.abs(w.astype(np.int32)).max()) for w in weights if w.size > 1)

    here = quantize.weight_bits()
    assert here == (8 if quantize.cpu_int8_dot_product() else 7)
    made_here = export_dir(tiny_int8, 1, "onnx")
    assert json.loads((made_here / EXPORT_FILE).read_text())["graphs"]["image"]["weight_bits"] == here
    if here == 7:
        assert largest_int8_weight(made_here) <= 64  # reduce_range: [-64, 64]

    monkeypatch.setattr(quantize, "cpu_int8_dot_product", lambda: ["avx512_vnni"])
    assert quantize.weight_bits() == 8
    model = write_tiny_model(tmp_path / "tiny")
    folder = export_model(model, "onnx", "int8", calibration=calibration_manifest, groups="image")
    info = ExportInfo.from_dict(json.loads((folder / EXPORT_FILE).read_text()))
    assert info.graphs["image"].weight_bits == 8 and largest_int8_weight(folder) > 64
    assert not warn_if_weights_may_saturate(info, folder)  # a VNNI CPU runs it as made

    monkeypatch.setattr(quantize, "cpu_int8_dot_product", lambda: [])
    with caplog.at_level("WARNING", logger="mmfusion.runtime.onnx_backend"):
        pipeline = Pipeline(model, backend="onnxruntime")
    assert "8-bit INT8 weights" in caplog.text and "re-export here" in caplog.text
    assert pipeline.predict(image=RED + 5).outputs["colour"]["label"] == "red"  # it still runs


def _dense_head_graph(path):
    """Conv-ReLU-Conv trunk, then a heatmap (1x1 conv, sigmoid) and a geometry output (1x1 conv plus a constant)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["t1"], name="trunk1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["t1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["t2"], name="trunk2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["t2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["logits"], name="heatmap_conv"),
        helper.make_node("Sigmoid", ["logits"], ["heatmap"], name="heatmap_sigmoid"),
        helper.make_node("Conv", ["r2", "w4"], ["offsets"], name="geometry_conv"),
        helper.make_node("Add", ["offsets", "grid"], ["geometry"], name="geometry_grid"),
    ]
    grid = numpy_helper.from_array(np.arange(2 * 8 * 8, dtype=np.float32).reshape(1, 2, 8, 8) / 16, "grid")
    graph = helper.make_graph(
        nodes, "dense", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("heatmap", "geometry")],
        [weight("w1", 8, 3, 3, 3), weight("w2", 8, 8, 3, 3), weight("w3", 2, 8, 1, 1), weight("w4", 2, 8, 1, 1), grid],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_dense_outputs_keep_their_output_layers_fp32(tmp_path):
    import onnx

    from mmfusion.runtime.quantize import graph_layers, quantize_static_prefix

    source = tmp_path / "dense.onnx"
    _dense_head_graph(source)
    assert graph_layers(source) == (["trunk1", "trunk2", "heatmap_conv", "geometry_conv"], ["geometry_grid"], [])
    layers, tail, outputs = graph_layers(source, fp32_outputs=True)
    assert layers == ["trunk1", "trunk2"] and outputs == ["heatmap_conv", "geometry_conv"]
    assert tail == ["heatmap_conv", "heatmap_sigmoid", "geometry_conv", "geometry_grid"]
    batches = [{"image": np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)}]

    def producers(path):
        model = onnx.load(str(path))
        made_by = {name: node for node in model.graph.node for name in node.output}
        convs = {node.name: made_by.get(node.input[1]) for node in model.graph.node if node.op_type == "Conv"}
        return {out.name: made_by[out.name].op_type for out in model.graph.output}, convs

    all_int8, kept = tmp_path / "int8.onnx", tmp_path / "mixed.onnx"
    plain = quantize_static_prefix(source, all_int8, batches, 0, None)
    mixed = quantize_static_prefix(source, kept, batches, 0, None, fp32_outputs=True)
    assert plain["fp32_output_layers"] == [] and mixed["fp32_output_layers"] == ["heatmap_conv", "geometry_conv"]
    assert producers(all_int8)[0] == {"heatmap": "DequantizeLinear", "geometry": "Add"}  # Add: after the last conv
    outputs_made_by, weights_made_by = producers(kept)
    assert outputs_made_by == {"heatmap": "Sigmoid", "geometry": "Add"}  # no 8-bit step on what leaves the graph
    assert weights_made_by["heatmap_conv"] is None and weights_made_by["geometry_conv"] is None  # FP32 weights
    assert weights_made_by["trunk2"].op_type == "DequantizeLinear"  # the trunk is INT8
    assert mixed["weight_layers"] == 2
