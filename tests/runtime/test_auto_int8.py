"""`backend: auto` runs INT8 only on CPUs with int8 dot products, where verdicts agree and it is faster."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from mmfusion.cli.main import main
from mmfusion.config import ConfigError, RuntimeSpec
from mmfusion.pipeline import Pipeline, build_graph
from mmfusion.repository import auto_int8
from mmfusion.repository.auto_int8 import INT8_DIR, int8_decision, verdict_agreement
from mmfusion.runtime.exported import EXPORT_FILE, read_export
from mmfusion.security.integrity import verify_manifest, write_manifest
from tests.runtime.conftest import BLUE, RED, write_tiny_model
from tests.runtime.test_cpu_flags import fake_cpu

FAST = {"batch": 8, "fp32_images_per_s": 100.0, "int8_images_per_s": 210.0}
SLOW = {"batch": 8, "fp32_images_per_s": 100.0, "int8_images_per_s": 104.0}


@pytest.fixture(scope="module")
def fp32_cache(tmp_path_factory) -> Path:
    """An export cache holding the FP32 export of `calibrated_tiny()` only (its fingerprint is the same anywhere)."""
    folder = tmp_path_factory.mktemp("fp32-cache")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MMFUSION_EXPORT_CACHE", str(folder))
        fake_cpu(monkeypatch, "avx2")
        Pipeline(calibrated_tiny(tmp_path_factory.mktemp("seed") / "tiny")).close()
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch, fp32_cache):
    """A private export cache, so each test builds its own INT8 export (the FP32 one is copied in)."""
    folder = shutil.copytree(fp32_cache, tmp_path / "cache")
    monkeypatch.setenv("MMFUSION_EXPORT_CACHE", str(folder))
    monkeypatch.delenv(auto_int8.PRECISION_ENV, raising=False)
    return folder


def calibrated_tiny(folder, images: int = 8, runtime: dict | None = None):
    """The tiny model on `backend: auto` with `images` noisy reds and blues under calibration/, signed.

    Its multilabel head is left out: random weights put its `blur` score at its threshold, where any
    precision may flip it.
    """
    model = write_tiny_model(folder, runtime=runtime or {"backend": "auto"})
    config = yaml.safe_load((model / "config.yaml").read_text())
    del config["heads"]["flags"]
    (model / "config.yaml").write_text(yaml.safe_dump(config))
    (model / "calibration").mkdir()
    rng = np.random.default_rng(1)
    for index in range(images):
        base = (RED, BLUE)[index % 2].astype(np.int16)
        image = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(model / "calibration" / f"part_{index:02d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    write_manifest(model)
    return model


@pytest.fixture
def model(tmp_path):
    return calibrated_tiny(tmp_path / "models" / "tiny")


@pytest.fixture
def speed(monkeypatch):
    """Set what the speed measurement reports (the tiny graph's real speed says nothing about INT8)."""

    def set_speed(figures: dict) -> None:
        monkeypatch.setattr(auto_int8, "measure_speed", lambda *args: dict(figures))

    set_speed(FAST)
    return set_speed


@pytest.fixture
def builds(monkeypatch):
    """Counts the INT8 exports built."""
    count = []
    real = auto_int8.build_int8_export

    def counting(*args, **kwargs):
        count.append(args[5])
        return real(*args, **kwargs)

    monkeypatch.setattr(auto_int8, "build_int8_export", counting)
    return count


def labels(pipeline: Pipeline) -> list[str]:
    return [pipeline.predict(image=image).outputs["colour"]["label"] for image in (RED + 5, BLUE + 5)]


def test_vnni_cpu_runs_int8_where_verdicts_agree_and_it_is_faster(cache, model, speed, builds, monkeypatch):
    fake_cpu(monkeypatch, "avx512_vnni")
    pipeline = Pipeline(model)
    assert pipeline.backend.precision == "int8"
    choice = pipeline.backend_choice
    assert choice.startswith("onnxruntime int8 (auto): CPU has avx512_vnni; verdicts agree with FP32 torch on 10/10")
    assert "2.10x FP32 (210 vs 100 images/s at batch 8)" in choice and INT8_DIR in choice
    assert labels(pipeline) == ["red", "blue"] == labels(Pipeline(model, backend="torch"))
    (folder,) = builds
    info = read_export(folder)
    assert info.precision == "int8" and info.graphs["image"].quantization == "static-qdq"
    assert info.graphs["text"].quantization is None  # the other groups are the FP32 export's graphs
    assert (folder / "text.onnx").read_bytes() == (folder.parent / "onnx" / "text.onnx").read_bytes()
    check = info.calibration["check"]
    assert check["use"] and check["agreement"]["agreeing"] == 10  # 8 calibration images and the 2 examples
    assert check["held_out"] == 6 and check["recipe"] == auto_int8.RECIPE
    assert verify_manifest(model) > 0  # the signed model folder is untouched


def test_cpu_without_int8_dot_products_stays_on_fp32(cache, model, speed, builds, monkeypatch):
    fake_cpu(monkeypatch, "avx2")
    pipeline = Pipeline(model)
    assert pipeline.backend.precision == "fp32"
    assert "int8 not used: this CPU has no VNNI/AMX int8 dot products" in pipeline.backend_choice
    assert builds == [] and not any(cache.rglob(INT8_DIR)) and not any(cache.rglob(f".{INT8_DIR}*"))


def test_int8_refused_when_its_verdicts_differ_and_the_refusal_is_kept(cache, model, speed, builds, monkeypatch):
    fake_cpu(monkeypatch, "avx512_vnni")
    real = auto_int8._onnx_outputs

    def swapped(*args):  # an INT8 graph that says red for blue and blue for red
        outputs = real(*args)
        outputs["colour.probabilities"] = outputs["colour.probabilities"][:, ::-1]
        return outputs

    monkeypatch.setattr(auto_int8, "_onnx_outputs", swapped)
    pipeline = Pipeline(model)
    assert pipeline.backend.precision == "fp32"
    assert "int8 not used: CPU has avx512_vnni, but INT8 verdicts differ from FP32 torch on 10 of 10" in (
        pipeline.backend_choice
    )
    assert labels(pipeline) == ["red", "blue"]
    assert Pipeline(model).backend.precision == "fp32" and len(builds) == 1  # measured once, not on every load


def test_int8_not_faster_stays_on_fp32(cache, model, speed, monkeypatch):
    fake_cpu(monkeypatch, "avx512_vnni")
    speed(SLOW)
    pipeline = Pipeline(model)
    assert pipeline.backend.precision == "fp32"
    assert "verdicts agree with FP32 torch on 10/10" in pipeline.backend_choice
    assert "image graph 1.04x FP32" in pipeline.backend_choice and "needs 1.1x" in pipeline.backend_choice


def test_fp32_forced_by_the_runtime_block_or_the_environment(cache, tmp_path, speed, builds, monkeypatch):
    fake_cpu(monkeypatch, "avx512_vnni")
    forced = calibrated_tiny(tmp_path / "forced" / "tiny", runtime={"backend": "auto", "precision": "fp32"})
    pipeline = Pipeline(forced)
    assert pipeline.backend.precision == "fp32" and "int8 not used: runtime precision: fp32" in pipeline.backend_choice
    model = calibrated_tiny(tmp_path / "env" / "tiny")
    monkeypatch.setenv(auto_int8.PRECISION_ENV, "fp32")
    pipeline = Pipeline(model)
    assert pipeline.backend.precision == "fp32" and "MMFUSION_AUTO_PRECISION=fp32" in pipeline.backend_choice
    assert builds == []
    monkeypatch.setenv(auto_int8.PRECISION_ENV, "int4")
    with pytest.raises(ConfigError, match="MMFUSION_AUTO_PRECISION='int4': expected fp32"):
        Pipeline(model)


def test_too_few_calibration_images_stay_on_fp32(tmp_path, monkeypatch):
    fake_cpu(monkeypatch, "avx512_vnni")
    model = calibrated_tiny(tmp_path / "few" / "tiny", images=3)

    def no_fp32_needed():
        raise AssertionError("the FP32 export was asked for, as if INT8 were to be built")

    decision = int8_decision(model, RuntimeSpec(backend="auto"), build_graph(model), "tiny", tmp_path, no_fp32_needed)
    assert decision.folder is None
    assert "has 3 images under calibration/ (at least 8 real images" in decision.note


def test_cached_int8_export_round_trip(cache, model, speed, builds, monkeypatch, caplog):
    fake_cpu(monkeypatch, "avx512_vnni")
    first = Pipeline(model)
    (folder,) = builds
    stamp = (folder / EXPORT_FILE).stat().st_mtime_ns
    second = Pipeline(model)
    assert len(builds) == 1 and second.backend.precision == "int8"
    assert second.backend_choice == first.backend_choice and (folder / EXPORT_FILE).stat().st_mtime_ns == stamp
    graph = folder / "image.onnx"
    graph.write_bytes(graph.read_bytes()[:-16] + bytes(16))
    with caplog.at_level("WARNING"):
        third = Pipeline(model)
    assert "cached INT8 export refused" in caplog.text and len(builds) == 2
    assert third.backend.precision == "int8" and verify_manifest(folder) > 0
    monkeypatch.setattr(auto_int8, "cpu_int8_dot_product", lambda: ["amx_int8"])  # another CPU: measured again
    assert "CPU has amx_int8" in Pipeline(model).backend_choice and len(builds) == 3


def test_describe_says_int8_and_why(cache, model, speed, monkeypatch, capsys):
    fake_cpu(monkeypatch, "avx512_vnni")
    assert main(["describe", str(model)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("backend "))
    assert "onnxruntime int8 (auto): CPU has avx512_vnni; verdicts agree with FP32 torch on 10/10" in line


def test_verdict_agreement_compares_labels_and_flags_and_reports_the_largest_score_difference():
    reference = [
        {"verdict": {"label": "pass", "scores": {"pass": 0.7, "defect": 0.3}}, "embedding": {"embedding": [1.0]}},
        {"verdict": {"label": "defect", "scores": {"pass": 0.4, "defect": 0.6}}, "flags": {"flags": ["glare"]}},
    ]
    same = [
        {"verdict": {"label": "pass", "scores": {"pass": 0.68, "defect": 0.32}}, "embedding": {"embedding": [0.9]}},
        {"verdict": {"label": "defect", "scores": {"pass": 0.45, "defect": 0.55}}, "flags": {"flags": ["glare"]}},
    ]
    result = verdict_agreement(reference, same)
    assert result["agreeing"] == 2 and result["images"] == 2 and result["verdicts"] == 3
    assert result["max_score_difference"] == pytest.approx(0.05)
    flipped = [same[0], {**same[1], "flags": {"flags": []}}]
    assert verdict_agreement(reference, flipped)["agreeing"] == 1
    assert verdict_agreement([{"embedding": {}}], [{"embedding": {}}])["verdicts"] == 0


def box(x1: float, label: str = "short") -> dict:
    return {"x1": x1, "y1": 10.0, "x2": x1 + 20.0, "y2": 30.0, "label": label, "score": 0.9}


def test_verdict_agreement_compares_the_boxes_of_detection_heads():
    reference = [{"defects": {"label": "defect", "score": 0.9, "boxes": [box(0), box(100, "spur")]}}]
    moved = [{"defects": {"label": "defect", "score": 0.9, "boxes": [box(2), box(100, "open"), box(300)]}}]
    result = verdict_agreement(reference, moved)
    assert result["agreeing"] == 1  # the label is the same ...
    assert result["boxes"] == {"reference": 2, "candidate": 3, "matched": 1}  # ... but a type changed, a box came
    assert result["box_agreement"] == pytest.approx(2 * 1 / 5)
    shifted = [{"defects": {"label": "defect", "score": 0.9, "boxes": [box(15), box(100, "spur")]}}]  # IoU 5/35
    assert verdict_agreement(reference, shifted)["boxes"]["matched"] == 1
    assert verdict_agreement(reference, reference)["box_agreement"] == 1.0
    assert verdict_agreement([{"verdict": {"label": "pass"}}], [{"verdict": {"label": "pass"}}])["box_agreement"] == 1


def test_too_few_agreeing_boxes_keep_fp32():
    check = {
        "agreement": {
            "images": 16, "agreeing": 16, "verdicts": 16, "max_score_difference": 0.05,
            "boxes": {"reference": 40, "candidate": 40, "matched": 36}, "box_agreement": 0.9,
        },
        "speed": FAST, "cpu_int8_dot_product": ["avx512_vnni"], "held_out": 8, "fp32_layers": [], "weight_layers": 15,
    }  # fmt: skip
    use, note = auto_int8._check_note(check)
    assert not use and "INT8 draws other boxes than FP32 torch (box agreement 0.900 on 16 images, needs 0.95)" in note
    check["agreement"]["box_agreement"] = 0.975
    use, note = auto_int8._check_note(check)
    assert use and "box agreement 0.975" in note
    assert "first 0 of 15 weight layers and the tail after the last convolution kept FP32" in note
    check["fp32_output_layers"] = ["heatmap", "geometry"]
    use, note = auto_int8._check_note(check)
    assert "first 0 of 15 weight layers, the 2 output layers and the tail after the last convolution kept" in note


def test_a_disagreeing_int8_graph_keeps_more_first_layers_fp32(cache, model, speed, monkeypatch):
    fake_cpu(monkeypatch, "avx512_vnni")
    real, asked = auto_int8.quantize_static_prefix, []

    def counting(*args, **kwargs):
        mixed = real(*args, **kwargs)
        asked.append((args[3], len(mixed["fp32_layers"])))  # (at least, kept)
        return mixed

    differ = iter([True])  # boxes differ with all layers INT8, agree with one more FP32

    def boxes_differ_once(*args):
        real_agreement = verdict_agreement(*args)
        if next(differ, False):
            return {**real_agreement, "box_agreement": 0.5}
        return {**real_agreement, "agreeing": real_agreement["images"], "box_agreement": 1.0}

    # the layers kept for output fidelity depend on the CPU's INT8 kernels (AVX2 saturates where VNNI does not):
    # without a fidelity target, only the agreement decides how many first layers stay FP32
    monkeypatch.setattr(auto_int8, "FIDELITY_TARGET", None)
    monkeypatch.setattr(auto_int8, "quantize_static_prefix", counting)
    monkeypatch.setattr(auto_int8, "verdict_agreement", boxes_differ_once)
    pipeline = Pipeline(model)
    check = read_export(next(cache.rglob(INT8_DIR))).calibration["check"]
    (first, kept), (again, kept_again) = asked
    assert first == 0 and again == kept + 1 and kept_again >= again
    assert len(check["fp32_layers"]) == kept_again and check["use"] and pipeline.backend.precision == "int8"
    assert f"first {kept_again} of" in pipeline.backend_choice


def test_pair_models_calibrate_on_references_of_the_same_name(tmp_path):
    folder = tmp_path / "pairs"
    (folder / "calibration" / "references").mkdir(parents=True)
    images = [folder / "calibration" / name for name in ("a.png", "b.png")]
    for path in [*images, folder / "calibration" / "references" / "a.png"]:
        cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
    assert auto_int8.calibration_images(folder) == images  # references/ is not a calibration image
    with pytest.raises(ConfigError, match="calibration/references/b.png: missing; the model reads"):
        auto_int8.calibration_references(folder, images)
    cv2.imwrite(str(folder / "calibration" / "references" / "b.png"), np.zeros((8, 8, 3), np.uint8))
    assert auto_int8.calibration_references(folder, images) == [
        folder / "calibration" / "references" / name for name in ("a.png", "b.png")
    ]
