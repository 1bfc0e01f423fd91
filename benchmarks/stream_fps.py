"""Camera-stream throughput: 1, 4 and 16 concurrent StreamInspect streams vs raw backend vs naive eager.

Prints a table, writes JSON, and reports ratios measured in the same run (these machines are shared
and noisy, so only ratios are compared). Run: `.venv/bin/python benchmarks/stream_fps.py`.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from mmfusion.client import InspectionClient, image_message
from mmfusion.pipeline import Pipeline
from mmfusion.proto import inspection_pb2 as pb
from mmfusion.types import Inputs

REPO = Path(__file__).resolve().parent.parent
FRAMES = sorted((REPO / "samples" / "frames").glob("*.jpg"))


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def naive_fps(pipeline: Pipeline, images: list[bytes], seconds: float) -> float:
    """PyTorch eager, one JPEG at a time (decode included, as the service must), no batching."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        pipeline.predict(image=images[done % len(images)])
        done += 1
    return done / (time.perf_counter() - started)


def raw_backend_fps(pipeline: Pipeline, images: list[bytes], batch_size: int, seconds: float) -> float:
    """The same model on the same JPEGs in batches of `batch_size` (Pipeline.predict_batch): no gRPC, no queueing."""
    batch = [Inputs(image=images[i % len(images)]) for i in range(batch_size)]
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        pipeline.predict_batch(batch)
        done += batch_size
    return done / (time.perf_counter() - started)


def run_stream(address: str, model: str, stream_id: str, payloads: list[bytes], seconds: float, stats: dict) -> None:
    """One camera sending as fast as the server lets it (2 frames pending at most), for `seconds`."""
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    answered = dropped = 0
    stop_at = time.perf_counter() + seconds
    window = threading.Semaphore(4)  # frames in flight from this camera

    def frames():
        sequence = 0
        while time.perf_counter() < stop_at:
            window.acquire()
            frame = pb.Frame(stream_id=stream_id, sequence_number=sequence)
            frame.image.CopyFrom(image_message(payloads[sequence % len(payloads)]))
            if sequence == 0:
                frame.model = model
            sent_at[sequence] = time.perf_counter()
            yield frame
            sequence += 1

    started = time.perf_counter()
    with InspectionClient(address) as client:
        for result in client.stream(frames()):
            now = time.perf_counter()
            answered += 1
            dropped += len(result.skipped_sequence_numbers)
            for _ in range(1 + len(result.skipped_sequence_numbers)):
                window.release()
            latencies.append(now - sent_at.pop(result.sequence_number))
    elapsed = time.perf_counter() - started
    stats[stream_id] = {"answered": answered, "dropped": dropped, "seconds": elapsed, "latencies": latencies}


def run_streams(address: str, model: str, count: int, payloads: list[bytes], seconds: float) -> dict:
    stats: dict = {}
    threads = [
        threading.Thread(target=run_stream, args=(address, model, f"cam-{i}", payloads, seconds, stats))
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies = [value for s in stats.values() for value in s["latencies"]]
    total = sum(s["answered"] for s in stats.values())
    elapsed = max(s["seconds"] for s in stats.values())
    per_stream = [s["answered"] / s["seconds"] for s in stats.values()]
    return {
        "streams": count,
        "total_fps": total / elapsed,
        "per_stream_fps_min": min(per_stream),
        "per_stream_fps_mean": float(np.mean(per_stream)),
        "p50_ms": percentile_ms(latencies, 50),
        "p95_ms": percentile_ms(latencies, 95),
        "p99_ms": percentile_ms(latencies, 99),
        "dropped": sum(s["dropped"] for s in stats.values()),
    }


def start_server(model: str, max_batch_size: int) -> tuple[subprocess.Popen, str, str]:
    """`mmfusion serve` in its own process (as deployed: no GIL shared with the cameras); its addresses."""
    command = [
        sys.executable,
        "-m",
        "mmfusion",
        "serve",
        model,
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--max-batch-size",
        str(max_batch_size),
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    address = metrics_url = None
    for line in server.stdout:
        if " on " in line and "serving" in line:
            address = line.rsplit(" ", 1)[1].strip()
        if "metrics on" in line:
            metrics_url = line.rsplit(" ", 1)[1].strip()
        if address and metrics_url:
            break
    if not (address and metrics_url):
        raise RuntimeError(f"the server did not start: {' '.join(command)}")
    return server, address, metrics_url


def batch_histogram(metrics_text: str) -> dict[str, float]:
    """Cumulative batch-size bucket counts from the Prometheus text."""
    buckets = {}
    for line in metrics_text.splitlines():
        if line.startswith("mmfusion_batch_size_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets[le] = float(line.rsplit(" ", 1)[1])
    return buckets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pcb-inspect")
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--streams", default="1,4,16")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "stream_fps.json"))
    args = parser.parse_args()

    payloads = [path.read_bytes() for path in FRAMES]
    pipeline = Pipeline(args.model)
    naive = naive_fps(pipeline, payloads, args.seconds)
    raw = raw_backend_fps(pipeline, payloads, args.max_batch_size, args.seconds)
    pipeline.close()

    server, address, metrics_url = start_server(args.model, args.max_batch_size)
    rows = []
    try:
        for count in (int(n) for n in args.streams.split(",")):
            rows.append(run_streams(address, args.model, count, payloads, args.seconds))
        metrics_text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

    print(
        f"model {args.model}; naive eager (1 at a time) {naive:.1f} fps; raw backend (batch {args.max_batch_size}) "
        f"{raw:.1f} fps"
    )
    header = (
        f"{'streams':>7} {'total fps':>9} {'min/stream':>10} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
        f"{'dropped':>7} {'vs raw':>6} {'vs naive':>8}"
    )
    print(header)
    for row in rows:
        row["vs_raw"] = row["total_fps"] / raw
        row["vs_naive"] = row["total_fps"] / naive
        print(
            f"{row['streams']:>7} {row['total_fps']:>9.1f} {row['per_stream_fps_min']:>10.1f} {row['p50_ms']:>7.0f} "
            f"{row['p95_ms']:>7.0f} {row['p99_ms']:>7.0f} {row['dropped']:>7} {row['vs_raw']:>6.2f} "
            f"{row['vs_naive']:>8.2f}"
        )
    histogram = batch_histogram(metrics_text)
    print("batch sizes (cumulative counts by upper bound):", histogram)
    result = {
        "model": args.model,
        "naive_fps": naive,
        "raw_backend_fps": raw,
        "rows": rows,
        "batch_size_buckets": histogram,
        "targets": {"vs_raw": 0.9, "vs_naive_at_4_streams": 2.0},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
