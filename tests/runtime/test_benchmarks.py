"""The CPU-runnable parts of benchmarks/gpu_check.py (--device cpu --dry), the stream simulator, the GEMM probe,
benchmarks/int8_outputs.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import backends  # noqa: E402
import gpu_check  # noqa: E402
import int8_outputs  # noqa: E402


def test_gpu_check_dry_run_on_cpu_reports_every_variant(tmp_path):
    out = tmp_path / "gpu_check.json"
    arguments = ["--device", "cpu", "--dry", "--seconds", "0", "--batch-sizes", "1", "--streams", "2"]
    assert gpu_check.main([*arguments, "--stream-seconds", "0.3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    by_label = {v["label"]: v for v in report["variants"]}
    assert by_label["torch fp16 CUDA graphs"]["skipped"] == "needs CUDA"
    assert by_label["tensorrt fp16"]["skipped"] == "needs CUDA"
    for label in ("torch fp32 eager", "torch fp32 compile"):
        results = by_label[label]["results"]
        assert set(results) == {"1"} and all(r["images_per_second"] > 0 for r in results.values())
        assert all(r["cosine_vs_fp32"] > 0.9999 and r["p99_ms"] >= r["p50_ms"] for r in results.values())
    assert report["streams"]["streams"] == 2 and report["streams"]["mean_fps_per_stream"] > 0
    (detector,) = report["detector"]  # shipped pcb-template, CPU fp32, 8 pairs: its own reference
    assert detector["variant"] == "pcb-template torch fp32" and detector["batch"] == 8
    assert detector["verdicts_agreeing"] == "8/8" and detector["box_agreement"] == 1.0
    assert detector["pairs_per_second"] > 0 and detector["p99_ms"] > 0


class _FixedCost:
    """A backend that takes a fixed time per call, whatever the batch."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.batches = seconds, []

    def run(self, arrays):
        import time

        self.batches.append(len(arrays["image.pixels"]))
        time.sleep(self.seconds)
        return {}


def test_stream_simulation_batches_waiting_frames_and_keeps_up_when_fast():
    fast = _FixedCost(0.001)
    stats = gpu_check.simulate_streams(fast, np.zeros((3, 4, 4), np.float32), 8, 20.0, 1.0, max_batch=64)
    assert stats["dropped_frames"] == 0 and stats["worst_fps_per_stream"] >= 15.0
    slow = _FixedCost(0.2)  # 5 calls a second for 160 frames a second: frames must be batched and some dropped
    stats = gpu_check.simulate_streams(slow, np.zeros((3, 4, 4), np.float32), 8, 20.0, 1.0, max_batch=64)
    assert max(slow.batches) > 1 and stats["dropped_frames"] > 0 and stats["p99_ms"] >= 200


def test_stream_simulation_pads_to_one_shape_for_compiled_graphs():
    backend = _FixedCost(0.01)
    stats = gpu_check.simulate_streams(backend, np.zeros((3, 4, 4), np.float32), 8, 20.0, 1.0, 16, fixed_batch=True)
    assert set(backend.batches) == {16} and stats["worst_fps_per_stream"] >= 15.0


def test_gemm_kernel_probe_times_torch_and_both_onnxruntime_kernels():
    kernels = backends.gemm_kernels(threads=1, repeats=1)
    assert set(kernels) == {"torch fp32", "onnxruntime fp32", "onnxruntime int8"}
    assert all(0 < value < 1e5 for value in kernels.values())  # G(FL)OPS of one core, not a unit slip


def test_int8_output_layers_benchmark_keeps_the_detector_outputs_closer_to_fp32(tmp_path):
    out = tmp_path / "int8_outputs.json"
    int8_outputs.main(["--rounds", "1", "--calls", "1", "--out", str(out)])  # the shipped pcb-template
    rows = {row["graph"]: row for row in json.loads(out.read_text())["rows"]}
    fp32, outputs_int8, outputs_fp32 = rows["fp32"], rows["recipe 2 (outputs INT8)"], rows["recipe 3 (outputs FP32)"]
    assert fp32["output_cosine"] == 1.0 and outputs_int8["fp32_output_layers"] == []
    assert outputs_fp32["fp32_output_layers"] == [
        "/graph/defects/heatmap/heatmap.2/Conv", "/graph/defects/geometry/geometry.2/Conv",
    ]  # fmt: skip
    assert outputs_fp32["output_cosine"] > 0.99 > outputs_int8["output_cosine"]  # held-out pairs
    geometry = "defects.geometry"
    assert outputs_fp32["max_difference"][geometry] < outputs_int8["max_difference"][geometry]
    assert all(row["images_per_second"] > 0 for row in rows.values())
