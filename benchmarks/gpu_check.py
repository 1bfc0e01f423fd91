"""GPU check: torch fp16/bf16 eager vs torch.compile vs CUDA graphs vs TensorRT, 64 camera streams at 15 fps, PCB pairs.

Prints one table (variant x batch -> images/s, p50/p99 latency of a backend call, cosine against torch FP32
eager), one line for the stream simulation (achieved fps per stream, p99 frame latency), the shipped pcb-template
detector end to end per precision (pairs/s, verdicts and boxes against torch FP32 on CPU), and writes
benchmarks/results/gpu_check.json. Run through benchmarks/gpu_check.sh (which adds the gpu-marked tests).
`--device cpu --dry` runs every code path that does not need CUDA on a tiny random model in seconds;
CUDA-only variants are listed as skipped with the reason.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "gpu_check.json"
ENCODERS = {
    "effnet-lite0": {"name": "image.efficientnet_lite0", "params": {"weights": "embedded", "image_size": 224}},
    "vit-b32": {"name": "image.open_clip", "params": {"model_name": "ViT-B-32"}},
    "tiny": {"name": "image.efficientnet_lite0", "params": {"weights": "random", "image_size": 64}},
}


@dataclass
class Variant:
    """One way of running the graph: a label, the runtime block, and why it is skipped (if it is)."""

    label: str
    runtime: dict
    needs_cuda: bool = False
    skipped: str = ""
    dry_compile: bool = False
    runner: object = None
    results: dict = field(default_factory=dict)


def write_model(root: Path, encoder: str) -> Path:
    """Encoder -> identity fusion -> embedding head: the tensor-in/tensor-out core every variant runs."""
    import yaml

    folder = root / "gpu-check"
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "name": "gpu-check",
        "encoders": {"image": ENCODERS[encoder]},
        "fusion": {"name": "identity"},
        "heads": {"embedding": {"name": "embedding"}},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def variants(device: str, dry: bool) -> list[Variant]:
    """Every variant of the issue's table; the ones this machine cannot run carry the reason."""
    cuda = device == "cuda"
    gpu = {"device": "cuda"} if cuda else {"device": "cpu"}
    low = "fp16" if cuda else "fp32"  # fp16/bf16 on torch need CUDA; the CPU dry run exercises the same code in fp32
    found = [
        Variant("torch fp32 eager", {"backend": "torch", **gpu}),
        Variant("torch fp16 eager", {"backend": "torch", "precision": "fp16", **gpu}, needs_cuda=True),
        Variant("torch bf16 eager", {"backend": "torch", "precision": "bf16", **gpu}, needs_cuda=True),
        Variant(f"torch {low} compile", {"backend": "torch", "precision": low, "compile": True, **gpu}),
        Variant(
            "torch fp16 CUDA graphs",
            {"backend": "torch", "precision": "fp16", "compile": True, "compile_mode": "reduce-overhead", **gpu},
            needs_cuda=True,
        ),
        Variant("tensorrt fp16", {"backend": "tensorrt", "device": "cuda"}, needs_cuda=True),
    ]
    for variant in found:
        if variant.needs_cuda and not cuda:
            variant.skipped = "needs CUDA"
        if variant.runtime.get("compile") and dry:
            variant.dry_compile = True  # torch.compile(backend="eager"): dynamo traces the graph, no code generation
    trt = next(v for v in found if v.label.startswith("tensorrt"))
    if not trt.skipped and importlib.util.find_spec("tensorrt") is None:
        trt.skipped = "tensorrt is not installed"
    return found


def load_runner(model: Path, variant: Variant, batch_sizes: tuple[int, ...]):
    """The backend of a variant, loaded; TensorRT exports (builds) its engine first."""
    import torch

    from mmfusion.config import RuntimeSpec
    from mmfusion.pipeline import build_graph
    from mmfusion.repository.exports import load_backend
    from mmfusion.repository.folder import read_config, resolve_model_dir

    runtime = RuntimeSpec(**{k: v for k, v in variant.runtime.items() if not (variant.dry_compile and k == "compile")})
    if runtime.backend == "tensorrt":
        from mmfusion.exporting import export_model

        export_model(model, "tensorrt", "fp16", batch_sizes=batch_sizes)
        return load_backend(resolve_model_dir(model), runtime, read_config(resolve_model_dir(model)).version)
    backend = load_backend(resolve_model_dir(model), runtime, 1, build_graph(model))
    if variant.dry_compile:
        backend._forward = torch.compile(backend.graph, backend="eager", dynamic=True)
    return backend


def cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Smallest per-row cosine between two (B, D) outputs."""
    a, b = reference.reshape(len(reference), -1), candidate.reshape(len(candidate), -1)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)).min())


def time_calls(call, items: int, seconds: float, warmup: int, least: int = 5, most: int = 500) -> dict:
    """items/s, p50 and p99 of `call()` handling `items` items (after warm-up calls that compile/capture/allocate)."""
    for _ in range(warmup):
        call()
    latencies = []
    started = time.perf_counter()
    while len(latencies) < least or (time.perf_counter() - started < seconds and len(latencies) < most):
        began = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - began)
    milliseconds = np.asarray(latencies) * 1000
    return {
        "images_per_second": items * len(latencies) / sum(latencies),
        "p50_ms": float(np.percentile(milliseconds, 50)),
        "p99_ms": float(np.percentile(milliseconds, 99)),
    }


def time_runner(runner, pixels: np.ndarray, seconds: float, warmup: int) -> dict:
    """images/s, p50 and p99 of one backend call at this batch."""
    return time_calls(lambda: runner.run({"image.pixels": pixels}), len(pixels), seconds, warmup)


def simulate_streams(
    runner, frame: np.ndarray, streams: int, fps: float, seconds: float, max_batch: int, fixed_batch: bool = False
) -> dict:
    """Cameras sending frames at `fps` each (phases staggered); whenever the backend is free it takes up to
    `max_batch` waiting frames, oldest first; a camera keeps at most 2 waiting frames (older ones are dropped,
    as serving/streams.py does). Returns achieved fps per stream (mean and worst) and frame latency p50/p99.

    `fixed_batch` pads every call to `max_batch` frames: a compiled graph (above all with CUDA graphs) is built
    per input shape, and on the H200 each new batch size cost about 38 s of compilation in the middle of the
    simulation (64 streams got 0 fps), so compiled variants run one shape, as a server for them should."""
    period = 1.0 / fps
    arrivals = sorted(
        (index * period / streams + k * period, index) for index in range(streams) for k in range(int(seconds * fps))
    )
    waiting: dict[int, deque[float]] = {index: deque() for index in range(streams)}
    served = [0] * streams
    latencies: list[float] = []
    dropped = 0
    start = time.perf_counter()
    next_arrival = 0
    while next_arrival < len(arrivals) or any(waiting.values()):
        now = time.perf_counter() - start
        while next_arrival < len(arrivals) and arrivals[next_arrival][0] <= now:
            at, camera = arrivals[next_arrival]
            waiting[camera].append(at)
            if len(waiting[camera]) > 2:
                waiting[camera].popleft()
                dropped += 1
            next_arrival += 1
        pending = sorted((at, camera) for camera, queue in waiting.items() for at in queue)[:max_batch]
        if not pending:
            time.sleep(max(0.0, arrivals[next_arrival][0] - now))
            continue
        for _, camera in pending:
            waiting[camera].popleft()
        runner.run({"image.pixels": np.repeat(frame[None], max_batch if fixed_batch else len(pending), axis=0)})
        done = time.perf_counter() - start
        for at, camera in pending:
            served[camera] += 1
            latencies.append(done - at)
    elapsed = time.perf_counter() - start
    rates = np.asarray(served) / max(elapsed, seconds)
    milliseconds = np.asarray(latencies) * 1000
    return {
        "streams": streams,
        "target_fps_per_stream": fps,
        "mean_fps_per_stream": float(rates.mean()),
        "worst_fps_per_stream": float(rates.min()),
        "p50_ms": float(np.percentile(milliseconds, 50)),
        "p99_ms": float(np.percentile(milliseconds, 99)),
        "dropped_frames": dropped,
    }


def detector_section(device: str, batch_sizes: tuple[int, ...], seconds: float, pairs_used: int = 16) -> list[dict]:
    """The shipped pcb-template detector (its test-time flips on) end to end on its calibration pairs (the first
    `pairs_used` of 16): pairs/s and p99 of `predict_batch` per precision and batch, and how its verdicts and boxes
    agree with torch FP32 on the CPU."""
    from mmfusion.config import RuntimeSpec
    from mmfusion.media import decode_image
    from mmfusion.pipeline import Pipeline
    from mmfusion.repository.auto_int8 import calibration_images, calibration_references, verdict_agreement
    from mmfusion.types import Inputs

    model = REPO / "models" / "pcb-template"
    images = calibration_images(model)[:pairs_used]
    pairs = [
        Inputs(image=decode_image(image), reference=decode_image(reference))
        for image, reference in zip(images, calibration_references(model, images), strict=True)
    ]
    cpu = Pipeline(model, backend=RuntimeSpec(backend="torch", device="cpu", precision="fp32"))
    reference = [p.outputs for p in cpu.predict_batch(pairs)]
    cpu.close()
    low = ("fp32", "fp16", "bf16") if device == "cuda" else ("fp32",)
    rows = []
    for precision in low:
        pipeline = Pipeline(model, backend=RuntimeSpec(backend="torch", device=device, precision=precision))
        agreement = verdict_agreement(reference, [p.outputs for p in pipeline.predict_batch(pairs)])
        for batch in batch_sizes:
            items = (pairs * (batch // len(pairs) + 1))[:batch]
            timed = time_calls(partial(pipeline.predict_batch, items), batch, seconds, 1, least=3, most=200)
            rows.append(
                {
                    "variant": f"pcb-template torch {precision}",
                    "batch": batch,
                    "pairs_per_second": timed["images_per_second"],
                    "p99_ms": timed["p99_ms"],
                    "verdicts_agreeing": f"{agreement['agreeing']}/{agreement['images']}",
                    "box_agreement": agreement["box_agreement"],
                }
            )
        pipeline.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--dry", action="store_true", help="tiny model, short timings (with --device cpu: a quick self-test)"
    )
    parser.add_argument(
        "--model", choices=sorted(ENCODERS), default=None, help="default effnet-lite0 (tiny with --dry)"
    )
    parser.add_argument("--batch-sizes", default=None, help="default 1,32 (1,2 dry); each size is compiled apart")
    parser.add_argument("--seconds", type=float, default=None, help="timing per variant and batch (default 2, 0.2 dry)")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--stream-seconds", type=float, default=None, help="default 10 (1 with --dry)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; variants past it are skipped")
    parser.add_argument("--no-detector", action="store_true", help="leave out the pcb-template detector rows")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch sees no CUDA GPU; use --device cpu --dry for the CPU self-test")
        return 2
    dry = args.dry
    batch_sizes = tuple(int(b) for b in (args.batch_sizes or ("1,2" if dry else "1,32")).split(","))
    seconds = args.seconds if args.seconds is not None else (0.2 if dry else 2.0)
    stream_seconds = args.stream_seconds if args.stream_seconds is not None else (1.0 if dry else 10.0)
    streams = args.streams if not dry else min(args.streams, 4)
    model_name = args.model or ("tiny" if dry else "effnet-lite0")
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="mmfusion-gpu-check-"))
    model = write_model(root, model_name)
    detector: list[dict] | str = "skipped: --no-detector"
    if not args.no_detector:  # first: a few seconds, and its rows survive a run stopped in a slow compile below
        try:
            batches, pairs = ((8,), 8) if dry else ((8, 32), 16)
            detector = detector_section(args.device, batches, 0.2 if dry else seconds, pairs)
            for row in detector:
                print(f"gpu_check: {row}", flush=True)
        except Exception as error:  # reported in the table; the encoder rows still count
            detector = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    found = variants(args.device, dry)
    reference_outputs: dict[int, np.ndarray] = {}
    rng = np.random.default_rng(0)
    pixels = None
    for variant in found:
        if variant.skipped:
            continue
        if time.perf_counter() - started > args.budget:
            variant.skipped = f"time budget of {args.budget:.0f} s spent"
            continue
        try:
            variant.runner = load_runner(model, variant, batch_sizes)
        except Exception as error:  # a variant that cannot load is reported, the others still run
            variant.skipped = f"failed to load: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
            continue
        if pixels is None:
            spec = next(s for s in variant.runner.input_specs() if s.name == "image.pixels")
            pixels = rng.standard_normal((max(batch_sizes), *spec.shape[1:])).astype(np.float32)
        try:
            for batch in batch_sizes:
                numbers = time_runner(variant.runner, pixels[:batch], seconds, warmup=1 if dry else 3)
                output = variant.runner.run({"image.pixels": pixels[:batch]})["embedding.embedding"]
                reference_outputs.setdefault(batch, output)
                numbers["cosine_vs_fp32"] = cosine(reference_outputs[batch], output)
                variant.results[batch] = numbers
                print(f"gpu_check: {variant.label} batch {batch}: {numbers}", flush=True)
        except Exception as error:  # e.g. torch.compile without a working triton: reported, the others still run
            variant.skipped = f"failed to run: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
            variant.results = {}
    ran = [v for v in found if v.results]
    if not ran:  # every variant skipped or failed: the table says why, there is nothing to stream on
        stream = {"variant": None, "skipped": "no variant ran"}
    else:
        best = max(ran, key=lambda v: v.results[max(batch_sizes)]["images_per_second"])
        compiled = bool(best.runtime.get("compile"))
        stream = simulate_streams(best.runner, pixels[0], streams, args.fps, stream_seconds, max(batch_sizes), compiled)
        stream["variant"] = best.label
    report = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "model": model_name,
        "dry": dry,
        "batch_sizes": list(batch_sizes),
        "variants": [{"label": v.label, "skipped": v.skipped, "results": v.results} for v in found],
        "streams": stream,
        "detector": detector,
        "seconds": time.perf_counter() - started,
    }
    print_table(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def print_table(report: dict) -> None:
    print(f"gpu_check on {report['device']}, model {report['model']}{' (dry run)' if report['dry'] else ''}")
    header = f"{'variant':24s} {'batch':>5s} {'img/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'cos vs fp32':>11s}"
    print(header)
    print("-" * len(header))
    for variant in report["variants"]:
        if variant["skipped"]:
            print(f"{variant['label']:24s} skipped: {variant['skipped']}")
            continue
        for batch, r in variant["results"].items():
            print(
                f"{variant['label']:24s} {batch:>5} {r['images_per_second']:9.1f} {r['p50_ms']:8.2f} "
                f"{r['p99_ms']:8.2f} {r['cosine_vs_fp32']:11.6f}"
            )
    s = report["streams"]
    if s.get("skipped"):
        print(f"streams: skipped: {s['skipped']}")
    else:
        print(
            f"{s['streams']} streams x {s['target_fps_per_stream']:.0f} fps on {s['variant']}: "
            f"mean {s['mean_fps_per_stream']:.1f} fps/stream, worst {s['worst_fps_per_stream']:.1f}, "
            f"p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
            f"dropped {s['dropped_frames']}"
        )
    detector = report["detector"]
    if isinstance(detector, str):
        print(f"pcb-template detector: {detector}")
    else:
        print(
            f"{'detector (end to end)':28s} {'batch':>5s} {'pairs/s':>9s} {'p99 ms':>8s} {'verdicts':>8s} {'boxes':>6s}"
        )
        for row in detector:
            print(
                f"{row['variant']:28s} {row['batch']:>5} {row['pairs_per_second']:9.1f} {row['p99_ms']:8.1f} "
                f"{row['verdicts_agreeing']:>8s} {row['box_agreement']:6.3f}"
            )
    print(f"total {report['seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
