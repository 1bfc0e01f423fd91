"""Backend benchmark: torch eager FP32 vs onnxruntime FP32 and INT8 for ViT-B-32 and EfficientNet-Lite0 on CPU.

For each model x backend x precision x batch (1, 8): images/s, p50/p99 latency of one backend call, peak RSS
of a process that holds only that backend, and model size; plus the ViT-B-32 end-to-end verdict pipeline
(preprocess + backend + postprocess) on the fastest backend. Every configuration runs in its own process
(forked from a server that imported the model stack once) so its resident memory is its own. Targets are
ratios measured in the same run: ORT INT8 >= 3x torch eager FP32 (ViT-B-32, batch 8), end-to-end >= 15
images/s, INT8 size <= 50% of FP32. A single matrix product at ViT-B-32's MLP shape, timed per kernel,
shows how much INT8 can gain on this CPU at all.

    .venv/bin/python benchmarks/backends.py [--threads 2] [--seconds 1.5]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "backends.json"
BATCHES = (1, 8)
MODELS = {
    "vit-b32": {"name": "image.open_clip", "params": {"model_name": "ViT-B-32"}},
    "effnet-lite0": {"name": "image.efficientnet_lite0", "params": {"weights": "embedded", "image_size": 224}},
}
CONFIGS = (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"))
PRELOAD = [
    "torch",
    "onnxruntime",
    "mmfusion.encoders",
    "mmfusion.fusion",
    "mmfusion.heads",
    "mmfusion.runtime",
    "mmfusion.pipeline",
]
"""Imported once by the fork server, so each worker starts in under a second instead of about 11 s."""


def _write_image(path: Path, colour: tuple[int, int, int], seed: int) -> Path:
    import cv2

    rng = np.random.default_rng(seed)
    image = np.clip(np.full((240, 320, 3), colour, np.int16) + rng.integers(-30, 30, (240, 320, 3)), 0, 255)
    cv2.imwrite(str(path), image.astype(np.uint8)[:, :, ::-1])
    return path


def write_model(root: Path, name: str, threads: int) -> Path:
    """An image model: encoder -> identity fusion -> a pass/defect verdict imprinted from two examples + embedding."""
    import yaml

    folder = root / name
    folder.mkdir(parents=True)
    _write_image(folder / "good.png", (40, 140, 60), 0)
    _write_image(folder / "defect.png", (150, 60, 40), 1)
    config = {
        "name": name,
        "encoders": {"image": MODELS[name]},
        "fusion": {"name": "identity"},
        "heads": {
            "verdict": {
                "name": "classification",
                "labels": ["pass", "defect"],
                "params": {
                    "examples": [{"label": "pass", "image": "good.png"}, {"label": "defect", "image": "defect.png"}]
                },
            },
            "embedding": {"name": "embedding"},
        },
        "runtime": {"threads": threads},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def calibration_manifest(root: Path, count: int = 8) -> Path:
    """Generated board-like images to calibrate static INT8 on."""
    from mmfusion.data.manifest import write_manifest

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        colour = ((40, 140, 60), (150, 60, 40))[index % 2]
        rows.append({"image": _write_image(root / f"calibration_{index}.png", colour, 10 + index), "label": "good"})
    return write_manifest(root / "calibration.csv", rows)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def _time_calls(call, seconds: float, min_calls: int = 3) -> list[float]:
    call()  # warm-up: first-call allocations and kernel selection
    latencies: list[float] = []
    started = time.perf_counter()
    while len(latencies) < min_calls or time.perf_counter() - started < seconds:
        began = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - began)
        if len(latencies) >= 200:
            break
    return latencies


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark (VmHWM; ru_maxrss would carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(model_dir: Path, backend: str, seconds: float, end_to_end: bool) -> dict:
    """Runs in a child process: load one backend only, time it per batch size, report peak RSS."""
    import torch

    from mmfusion.repository.exports import load_backend
    from mmfusion.repository.folder import read_config

    config = read_config(model_dir)
    torch.set_num_threads(config.runtime.threads or torch.get_num_threads())
    runtime = config.runtime.model_copy(update={"backend": backend})
    if backend == "torch":
        from mmfusion.pipeline import Pipeline

        pipeline = Pipeline(model_dir, backend="torch")
        runner = pipeline.backend
        size_bytes = sum(p.numel() * p.element_size() for p in pipeline.graph.parameters())
    else:
        from mmfusion.repository.exports import export_dir
        from mmfusion.runtime.exported import folder_size

        runner = load_backend(model_dir, runtime, config.version)
        size_bytes = folder_size(export_dir(model_dir, config.version, "onnx"))
    pixels = next(spec for spec in runner.input_specs() if spec.name == "image.pixels")
    rng = np.random.default_rng(0)
    result = {"size_mb": size_bytes / 1e6, "batches": {}}
    for batch in BATCHES:
        arrays = {"image.pixels": rng.standard_normal((batch, *pixels.shape[1:])).astype(np.float32)}
        latencies = _time_calls(lambda arrays=arrays: runner.run(arrays), seconds)
        result["batches"][str(batch)] = {
            "images_per_second": batch * len(latencies) / sum(latencies),
            "p50_ms": _percentile(latencies, 50),
            "p99_ms": _percentile(latencies, 99),
            "calls": len(latencies),
        }
    result["peak_rss_mb"] = peak_rss_mb()  # the backend alone
    if end_to_end:
        from mmfusion.pipeline import Pipeline
        from mmfusion.types import Inputs

        if backend != "torch":
            runner.close()  # one session in the process: an idle one's spinning threads would compete
            pipeline = Pipeline(model_dir, backend=backend)
        images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(8)]
        items = [Inputs(image=image) for image in images]
        latencies = _time_calls(lambda: pipeline.predict_batch(items), 2 * seconds)
        result["end_to_end_images_per_second"] = len(items) * len(latencies) / sum(latencies)
    return result


def _reset_peak_rss() -> None:
    """Start VmHWM from here: a forked worker would otherwise inherit its parent's high-water mark."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # the peak then includes the fork server's (imports only, no model)


def _child(queue, model_dir: str, backend: str, seconds: float, end_to_end: bool) -> None:
    _reset_peak_rss()
    try:
        queue.put(("ok", worker(Path(model_dir), backend, seconds, end_to_end)))
    except BaseException:  # the parent raises it with the worker's name
        queue.put(("error", traceback.format_exc()))


def run_worker(context, model_dir: Path, backend: str, seconds: float, end_to_end: bool) -> dict:
    """`worker` in a fresh process forked from the fork server (model stack imported once, no model loaded)."""
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, str(model_dir), backend, seconds, end_to_end))
    process.start()
    status, payload = queue.get()
    process.join()
    if status != "ok":
        raise RuntimeError(f"worker {model_dir.name} {backend} failed:\n{payload[-3000:]}")
    return payload


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.5, help="timing budget per batch size and backend")
    args = parser.parse_args()

    from mmfusion.exporting import export_model
    from mmfusion.runtime.quantize import cpu_int8_dot_product

    started = time.perf_counter()
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    root = Path(tempfile.mkdtemp(prefix="mmfusion-bench-backends-"))
    rows, export_seconds = [], {}
    try:
        calibration = calibration_manifest(root / "calibration")
        for model in MODELS:
            folders = {}
            for backend, precision in CONFIGS:
                folder = write_model(root / f"{backend}-{precision}", model, args.threads)
                if backend != "torch":
                    began = time.perf_counter()
                    # ViT: dynamic INT8 (its compute is MatMul); EfficientNet: static QDQ (its compute is Conv).
                    static = precision == "int8" and model == "effnet-lite0"
                    export_model(folder, "onnx", precision, calibration=calibration if static else None)
                    export_seconds[f"{model} {precision}"] = time.perf_counter() - began
                folders[(backend, precision)] = folder
            for (backend, precision), folder in folders.items():
                end_to_end = model == "vit-b32" and (backend, precision) == ("onnxruntime", "int8")
                measured = run_worker(context, folder, backend, args.seconds, end_to_end)
                for batch, numbers in measured["batches"].items():
                    rows.append(
                        {
                            "model": model,
                            "backend": backend,
                            "precision": precision,
                            "batch": int(batch),
                            **numbers,
                            "peak_rss_mb": measured["peak_rss_mb"],
                            "size_mb": measured["size_mb"],
                            "end_to_end_images_per_second": measured.get("end_to_end_images_per_second"),
                        }
                    )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = summarise(rows)
    kernels = gemm_kernels(args.threads)
    torch_batch8 = _row(rows, "vit-b32", "torch", "fp32", 8)["images_per_second"]
    target = summary["vit_b32_ort_int8_over_torch_fp32_batch8"]["target"]
    budget = {
        "products_at_probe_speed": 8 * VIT_PRODUCT_OPS / (kernels["onnxruntime int8"] * 1e9) * 1e3,
        "target_batch": 8 / (target * torch_batch8) * 1e3,
    }
    report = {
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "cpu_int8_dot_product": cpu_int8_dot_product(),
        "seconds": time.perf_counter() - started,
        "export_seconds": export_seconds,
        "rows": rows,
        "gemm_gops": kernels,
        "vit_int8_budget_ms": budget,
        "targets": summary,
    }
    print_table(rows, summary, report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten {RESULTS.relative_to(REPO)}")
    return 0


VIT_MLP_GEMM = (400, 768, 3072)
"""(M, K, N) of ViT-B-32's first MLP product at batch 8 (8 images x 50 tokens): most of its compute."""
VIT_PRODUCT_OPS = 2 * 12 * 50 * 768 * (3 * 768 + 768 + 4 * 768 + 4 * 768)
"""Operations of ViT-B-32's weight products per image: 12 blocks x 50 tokens x (qkv, out, MLP in, MLP out)."""


def gemm_kernels(threads: int, repeats: int = 40) -> dict[str, float]:
    """G(FL)OPS of one matrix product at VIT_MLP_GEMM: torch FP32, ORT FP32, ORT uint8 x int8 (7-bit weights).

    The INT8 kernel over torch FP32 is about what INT8 can gain end to end on this CPU (products dominate ViT).
    """
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = VIT_MLP_GEMM
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((k, n)).astype(np.float32)  # (K, N)
    activations = rng.standard_normal((m, k)).astype(np.float32)  # (M, K)

    def session(op: str, x_type: int, y_type: int, initialisers: list) -> ort.InferenceSession:
        inputs = ["x", "w", "x_zero"][: len(initialisers) + 1]
        graph = helper.make_graph(
            [helper.make_node(op, inputs, ["y"])],
            op,
            [helper.make_tensor_value_info("x", x_type, [m, k])],
            [helper.make_tensor_value_info("y", y_type, [m, n])],
            initialisers,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    fp32 = session("MatMul", TensorProto.FLOAT, TensorProto.FLOAT, [numpy_helper.from_array(weight, "w")])
    weight_int8 = rng.integers(-64, 64, (k, n)).astype(np.int8)  # 7-bit weights, as exported without VNNI
    int8 = session(
        "MatMulInteger",
        TensorProto.UINT8,
        TensorProto.INT32,
        [numpy_helper.from_array(weight_int8, "w"), numpy_helper.from_array(np.array(128, np.uint8), "x_zero")],
    )
    activations_uint8 = rng.integers(0, 256, (m, k)).astype(np.uint8)
    torch.set_num_threads(threads)
    torch_weight, torch_activations = torch.from_numpy(weight), torch.from_numpy(activations)
    calls = {
        "torch fp32": lambda: torch_activations @ torch_weight,
        "onnxruntime fp32": lambda: fp32.run(None, {"x": activations}),
        "onnxruntime int8": lambda: int8.run(None, {"x": activations_uint8}),
    }
    operations = 2 * m * k * n
    result = {}
    for name, call in calls.items():
        call()
        best = float("inf")
        for _ in range(3):
            began = time.perf_counter()
            for _ in range(repeats):
                call()
            best = min(best, (time.perf_counter() - began) / repeats)
        result[name] = operations / best / 1e9
    return result


def _row(rows: list[dict], model: str, backend: str, precision: str, batch: int) -> dict:
    return next(
        r for r in rows if (r["model"], r["backend"], r["precision"], r["batch"]) == (model, backend, precision, batch)
    )


def summarise(rows: list[dict]) -> dict:
    """The issue's targets as ratios within this run."""
    vit_torch, vit_int8 = _row(rows, "vit-b32", "torch", "fp32", 8), _row(rows, "vit-b32", "onnxruntime", "int8", 8)
    speedup = vit_int8["images_per_second"] / vit_torch["images_per_second"]
    end_to_end = vit_int8["end_to_end_images_per_second"]
    sizes = {
        model: _row(rows, model, "onnxruntime", "int8", 8)["size_mb"]
        / _row(rows, model, "onnxruntime", "fp32", 8)["size_mb"]
        for model in MODELS
    }
    return {
        "vit_b32_ort_int8_over_torch_fp32_batch8": {"value": speedup, "target": 3.0, "met": speedup >= 3.0},
        "vit_b32_end_to_end_images_per_second": {"value": end_to_end, "target": 15.0, "met": end_to_end >= 15.0},
        **{
            f"{model}_int8_size_over_fp32": {"value": ratio, "target": 0.5, "met": ratio <= 0.5}
            for model, ratio in sizes.items()
        },
    }


def print_table(rows: list[dict], summary: dict, report: dict) -> None:
    header = f"{'model':13s} {'backend':11s} {'prec':4s} {'batch':>5s} {'img/s':>7s} {'p50 ms':>8s} {'p99 ms':>8s} "
    header += f"{'RSS MB':>7s} {'size MB':>8s} {'e2e img/s':>9s}"
    print(header)
    print("-" * len(header))
    for r in rows:
        e2e = (
            f"{r['end_to_end_images_per_second']:9.2f}" if r["end_to_end_images_per_second"] and r["batch"] == 8 else ""
        )
        print(
            f"{r['model']:13s} {r['backend']:11s} {r['precision']:4s} {r['batch']:5d} {r['images_per_second']:7.2f} "
            f"{r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['peak_rss_mb']:7.0f} {r['size_mb']:8.1f} {e2e:>9s}"
        )
    isa = ", ".join(report["cpu_int8_dot_product"]) or "none"
    print(f"\ntargets (same run, {report['threads']} threads, load average {report['load_average'][0]:.1f}, ", end="")
    print(f"int8 dot-product instructions: {isa}):")
    for name, target in summary.items():
        print(
            f"  {name:45s} {target['value']:7.2f}  target {target['target']:5.2f}  "
            f"{'met' if target['met'] else 'MISSED'}"
        )
    kernels = report["gemm_gops"]
    m, k, n = VIT_MLP_GEMM
    print(
        f"GEMM kernels at ViT-B-32's MLP shape ({m}x{k}x{n}), G(FL)OPS: "
        + ", ".join(f"{name} {value:.0f}" for name, value in kernels.items())
        + f"; INT8 kernel / torch FP32 {kernels['onnxruntime int8'] / kernels['torch fp32']:.2f}x"
    )
    budget, target = report["vit_int8_budget_ms"], summary["vit_b32_ort_int8_over_torch_fp32_batch8"]["target"]
    print(
        f"ViT-B-32 batch 8: its weight products alone take {budget['products_at_probe_speed']:.0f} ms at the INT8 "
        f"kernel's speed; {target:.0f}x torch FP32 leaves {budget['target_batch']:.0f} ms for the whole batch"
    )
    print(
        f"total {report['seconds']:.0f} s (exports: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report["export_seconds"].items())
        + ")"
    )


if __name__ == "__main__":
    sys.exit(main())
