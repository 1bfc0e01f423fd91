"""Camera-stream throughput: 1, 4 and 16 concurrent StreamInspect streams vs raw backend vs naive eager.

Prints a table, writes JSON, and reports ratios measured in the same run (these machines are shared
and noisy, so only ratios are compared), then Health.Check latency with idle streams open and whether
a fresh stream still gets answers. Run: `.venv/bin/python benchmarks/stream_fps.py [--backend onnxruntime]`.
"""

from __future__ import annotations

import argparse
import json
import re
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
from mmfusion.runtime.quantize import cpu_int8_dot_product
from mmfusion.types import Inputs

REPO = Path(__file__).resolve().parent.parent
FRAMES = sorted((REPO / "samples" / "frames").glob("*.jpg"))


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def naive_fps(pipeline: Pipeline, images: list[bytes], seconds: float) -> float:
    """PyTorch eager, one JPEG at a time (decode included, as the service must), no batching."""
    pipeline.predict(image=images[0])  # warm-up, not timed
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        pipeline.predict(image=images[done % len(images)])
        done += 1
    return done / (time.perf_counter() - started)


def raw_backend_fps(pipeline: Pipeline, images: list[bytes], batch_size: int, seconds: float) -> float:
    """The same model on the same JPEGs in batches of `batch_size` (Pipeline.predict_batch): no gRPC, no queueing."""
    batch = [Inputs(image=images[i % len(images)]) for i in range(batch_size)]
    pipeline.predict_batch(batch)  # warm-up, not timed
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        pipeline.predict_batch(batch)
        done += batch_size
    return done / (time.perf_counter() - started)


def idle_streams(address: str, model: str, count: int, payloads: list[bytes], fresh_seconds: float) -> dict:
    """Open `count` streams that send one frame each and then idle; Health.Check p99 and a fresh stream meanwhile."""
    release = threading.Event()
    answered = threading.Semaphore(0)
    clients = [InspectionClient(address) for _ in range(count)]

    def one_frame(index: int):
        frame = pb.Frame(stream_id=f"idle-{index}", sequence_number=0, model=model)
        frame.image.CopyFrom(image_message(payloads[index % len(payloads)]))
        yield frame
        release.wait()

    def hold(index: int) -> None:
        try:
            for _ in clients[index].stream(one_frame(index)):
                answered.release()
        except Exception:  # noqa: BLE001 - the call ends when the benchmark lets go of it
            pass

    threads = [threading.Thread(target=hold, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    opened = sum(answered.acquire(timeout=60) for _ in range(count))
    health: list[float] = []
    with InspectionClient(address) as client:
        for _ in range(200):
            started = time.perf_counter()
            client.health()
            health.append(time.perf_counter() - started)
    fresh = run_streams(address, model, 1, payloads, fresh_seconds)
    release.set()
    for client in clients:
        client.close()
    return {
        "idle_streams": count,
        "idle_streams_answered": opened,
        "health_p50_ms": percentile_ms(health, 50),
        "health_p99_ms": percentile_ms(health, 99),
        "fresh_stream_fps": fresh["total_fps"],
        "fresh_stream_p99_ms": fresh["p99_ms"],
    }


def run_stream(
    address: str, model: str, stream_id: str, payloads: list[bytes], seconds: float, stats: dict, in_flight: int = 2
) -> None:
    """One camera sending as fast as the server lets it (`in_flight` frames ahead of its answers), for `seconds`."""
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    answered = dropped = 0
    stop_at = time.perf_counter() + seconds
    window = threading.Semaphore(in_flight)  # frames in flight from this camera: the server's max_pending_frames

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


def run_streams(
    address: str, model: str, count: int, payloads: list[bytes], seconds: float, in_flight: int = 2
) -> dict:
    stats: dict = {}
    threads = [
        threading.Thread(target=run_stream, args=(address, model, f"cam-{i}", payloads, seconds, stats, in_flight))
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


def start_server(
    model: str, max_batch_size: int, backend: str | None, open_streams: int
) -> tuple[subprocess.Popen, str, str]:
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
        "--max-open-streams",
        str(open_streams),
        "--first-message-timeout",
        "600",
        "--stream-idle-timeout",
        "600",
    ] + (["--backend", backend] if backend else [])
    # its addresses come as printed lines or as log lines on stderr: both are read, and drained after start
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    address = metrics_url = None
    for line in server.stdout:
        found = re.search(r"serving .* on (\S+)", line)
        address = address or (found.group(1) if found and "metrics" not in line else None)
        found = re.search(r"metrics on (http\S+)", line)
        metrics_url = metrics_url or (found.group(1) if found else None)
        if address and metrics_url:
            break
    if not (address and metrics_url):
        raise RuntimeError(f"the server did not start: {' '.join(command)}")
    threading.Thread(target=server.stdout.read, daemon=True).start()  # a full pipe would stop the server
    return server, address, metrics_url


def batch_histogram(metrics_text: str) -> dict[str, float]:
    """Cumulative batch-size bucket counts from the Prometheus text."""
    buckets = {}
    for line in metrics_text.splitlines():
        if line.startswith("mmfusion_batch_size_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets[le] = float(line.rsplit(" ", 1)[1])
    return buckets


def check_targets(rows: list[dict], idle: dict) -> dict[str, bool]:
    """Issue 16's targets, each held or not in this run (rows missing a stream count are left out)."""
    by_count = {row["streams"]: row for row in rows}
    targets = {}
    if 4 in by_count:
        targets["4 streams >= 3x naive eager"] = by_count[4]["vs_naive"] >= 3.0
        targets["4 streams p99 <= 250 ms"] = by_count[4]["p99_ms"] <= 250
    for count in (4, 16):
        if count in by_count:
            targets[f"{count} streams >= 0.9x raw backend"] = by_count[count]["vs_raw"] >= 0.9
    targets[f"{idle['idle_streams']} idle streams: Health p99 <= 50 ms"] = idle["health_p99_ms"] <= 50
    targets["a fresh stream gets answers"] = idle["fresh_stream_fps"] > 0
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pcb-inspect")
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--streams", default="1,4,16")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--backend", default=None, help="the server's and the raw run's backend (default: runtime:)")
    parser.add_argument("--in-flight", type=int, default=2, help="frames a camera sends ahead of its answers")
    parser.add_argument("--idle-streams", type=int, default=64, help="streams held open for the Health check")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "stream_fps.json"))
    args = parser.parse_args()

    payloads = [path.read_bytes() for path in FRAMES]
    eager = Pipeline(args.model, backend="torch")
    name = eager.name
    pipeline = Pipeline(args.model, backend=args.backend)
    backend = f"{pipeline.backend.registry_name} {pipeline.backend.precision}"  # the service loads the same choice

    def references() -> tuple[float, float]:
        """Naive eager and raw backend fps now (the load on a shared machine drifts: taken around every row)."""
        half = args.seconds / 2
        return naive_fps(eager, payloads, half), raw_backend_fps(pipeline, payloads, args.max_batch_size, half)

    measured = [references()]

    counts = [int(n) for n in args.streams.split(",")]
    open_streams = max(counts) + args.idle_streams + 16
    server, address, metrics_url = start_server(args.model, args.max_batch_size, args.backend, open_streams)
    rows = []
    try:
        for count in counts:
            rows.append(run_streams(address, name, count, payloads, args.seconds, args.in_flight))
            measured.append(references())
        idle = idle_streams(address, name, args.idle_streams, payloads, min(args.seconds, 4.0))
        metrics_text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        eager.close()
        pipeline.close()

    for index, row in enumerate(rows):  # each row against the references measured just before and after it
        row["naive_fps"] = (measured[index][0] + measured[index + 1][0]) / 2
        row["raw_fps"] = (measured[index][1] + measured[index + 1][1]) / 2
    naive, raw = float(np.mean([m[0] for m in measured])), float(np.mean([m[1] for m in measured]))
    int8 = cpu_int8_dot_product()
    print(f"CPU int8 dot-product instructions: {', '.join(int8) or 'none (INT8 runs on 7-bit weights)'}")
    print(f"backend: {pipeline.backend_choice}")
    print(
        f"model {name} on {backend}; naive eager (torch, 1 at a time) {naive:.1f} fps; raw backend "
        f"(batch {args.max_batch_size}) {raw:.1f} fps (means; each row is compared with those measured around it)"
    )
    header = (
        f"{'streams':>7} {'total fps':>9} {'min/stream':>10} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
        f"{'dropped':>7} {'raw fps':>7} {'naive':>6} {'vs raw':>6} {'vs naive':>8}"
    )
    print(header)
    for row in rows:
        row["vs_raw"] = row["total_fps"] / row["raw_fps"]
        row["vs_naive"] = row["total_fps"] / row["naive_fps"]
        print(
            f"{row['streams']:>7} {row['total_fps']:>9.1f} {row['per_stream_fps_min']:>10.1f} {row['p50_ms']:>7.0f} "
            f"{row['p95_ms']:>7.0f} {row['p99_ms']:>7.0f} {row['dropped']:>7} {row['raw_fps']:>7.1f} "
            f"{row['naive_fps']:>6.1f} {row['vs_raw']:>6.2f} "
            f"{row['vs_naive']:>8.2f}"
        )
    histogram = batch_histogram(metrics_text)
    print("batch sizes (cumulative counts by upper bound):", histogram)
    print(
        f"{idle['idle_streams']} idle streams open ({idle['idle_streams_answered']} answered their frame): "
        f"Health.Check p50 {idle['health_p50_ms']:.1f} ms, p99 {idle['health_p99_ms']:.1f} ms; a fresh stream "
        f"{idle['fresh_stream_fps']:.1f} fps, p99 {idle['fresh_stream_p99_ms']:.0f} ms"
    )
    targets = check_targets(rows, idle)
    for target, held in targets.items():
        print(f"{'PASS' if held else 'FAIL'} {target}")
    result = {
        "model": name,
        "backend": backend,
        "backend_choice": pipeline.backend_choice,
        "cpu_int8_dot_product": int8,
        "naive_fps": naive,
        "raw_backend_fps": raw,
        "rows": rows,
        "idle": idle,
        "batch_size_buckets": histogram,
        "targets": targets,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
