"""Scale out: camera streams through nginx (grpc_pass) over 1, then 2 `mmfusion serve` replicas, and a replica killed.

Each replica is pinned to its own core (`taskset -c K`) with one backend thread (`serve --threads 1`);
nginx and this load generator are not pinned (on a 2-core machine they share the replicas' cores, so a
heavier model keeps their share small). K streams send real sample frames (samples/frames/*_test.jpg),
each `--in-flight` frames ahead of its answers, for `--seconds`; frames/s and latency count the answers
after `--warmup`. Then the kill phase: two replicas, the same streams plus unary Inspect callers, and
`kill -9` of one replica halfway: which calls failed (only those the killed replica held should), and
the failed streams calling again through nginx to the survivor (as the camera client does).

Run: `.venv/bin/python benchmarks/scale_out.py [--model defect-anomaly] [--streams 8] [--seconds 20]`.
Writes benchmarks/results/scale_out.json. The machine's load average is printed at start: measure on a
quiet machine (these figures are only comparable within one run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.proto import inspection_pb2_grpc as pb_grpc
from mmfusion.runtime.quantize import cpu_int8_dot_product
from mmfusion.serving.balancer import REPLICA_HEADER, NginxBalancer, Replica

REPO = Path(__file__).resolve().parent.parent
FRAMES = sorted((REPO / "samples" / "frames").glob("*_test.jpg"))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def served_by(call) -> str | None:
    """The replica that serves a call: the last address nginx tried (`dead:port, live:port` after a retry)."""
    tried = dict(call.initial_metadata()).get(REPLICA_HEADER)
    return tried.split(", ")[-1] if tried else None


class Camera:
    """One stream: frames as fast as the replica answers (`in_flight` ahead), until `stop_at`; again after a failure."""

    def __init__(self, stub, model: str, index: int, in_flight: int, stop_at: float, reconnect: bool) -> None:
        self.stub, self.model, self.name = stub, model, f"cam-{index}"
        self.payload = FRAMES[index % len(FRAMES)].read_bytes()
        self.in_flight, self.stop_at, self.reconnect = in_flight, stop_at, reconnect
        self.answers: list[tuple[float, float]] = []  # (answered at, latency s)
        self.dropped = 0
        self.calls: list[dict] = []  # replica, status, answers, ended at
        self.sequence = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def frames(self, window: threading.Semaphore, sent_at: dict[int, float]):
        first = True
        while time.perf_counter() < self.stop_at:
            if not window.acquire(timeout=0.5):
                continue
            frame = pb.Frame(stream_id=self.name, sequence_number=self.sequence, image=pb.Image(data=self.payload))
            if first:
                frame.model, first = self.model, False
            sent_at[self.sequence] = time.perf_counter()
            self.sequence += 1
            yield frame

    def run(self) -> None:
        while time.perf_counter() < self.stop_at:
            window, sent_at = threading.Semaphore(self.in_flight), {}
            call = self.stub.StreamInspect(self.frames(window, sent_at))
            record = {"replica": None, "status": "OK", "answers": 0}
            try:
                record["replica"] = served_by(call)
                for answer in call:
                    now = time.perf_counter()
                    self.answers.append((now, now - sent_at.pop(answer.sequence_number)))
                    self.dropped += len(answer.skipped_sequence_numbers)
                    record["answers"] += 1
                    for _ in range(1 + len(answer.skipped_sequence_numbers)):
                        window.release()
            except grpc.RpcError as error:
                record["status"] = error.code().name
                call.cancel()
            record["ended_at"] = time.perf_counter()
            self.calls.append(record)
            if record["status"] == "OK" or not self.reconnect:
                return
            time.sleep(0.1)  # the camera client's first backoff


def drive(address: str, model: str, streams: int, seconds: float, in_flight: int, reconnect: bool = True):
    """K cameras through `address` for `seconds`; returns them once all have ended."""
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    stub = pb_grpc.InspectionStub(channel)
    stop_at = time.perf_counter() + seconds
    cameras = [Camera(stub, model, index, in_flight, stop_at, reconnect) for index in range(streams)]
    for camera in cameras:
        camera.thread.start()
    return channel, stub, cameras


def summarise(cameras: list[Camera], start: float, end: float) -> dict:
    """Frames/s and latency of the answers within [start, end]."""
    window = [(at, latency) for camera in cameras for at, latency in camera.answers if start <= at <= end]
    latencies = [latency for _, latency in window]
    return {
        "frames_per_s": len(window) / (end - start),
        "answers": len(window),
        "p50_ms": float(np.percentile(latencies, 50) * 1000) if latencies else float("nan"),
        "p95_ms": float(np.percentile(latencies, 95) * 1000) if latencies else float("nan"),
        "dropped": sum(camera.dropped for camera in cameras),
    }


def start_replicas(count: int, model: str, workdir: Path, extra: list[str]) -> list[Replica]:
    cores = sorted(os.sched_getaffinity(0))
    replicas = [
        Replica([model], core=cores[index % len(cores)], log_path=workdir / f"replica-{index}.log", extra_args=extra)
        for index in range(count)
    ]
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.wait_ready()
    return replicas


def throughput(count: int, args, workdir: Path) -> dict:
    """`count` replicas behind nginx, `args.streams` cameras for `args.seconds`."""
    replicas = start_replicas(count, args.model, workdir / f"{count}-replicas", args.serve_args)
    try:
        with NginxBalancer(
            [r.address for r in replicas], workdir=workdir / f"nginx-{count}", replica_header=True
        ) as lb:
            channel, _, cameras = drive(
                lb.address, args.model, args.streams, args.seconds + args.warmup, args.in_flight
            )
            began = time.perf_counter()
            for camera in cameras:
                camera.thread.join()
            channel.close()
    finally:
        for replica in replicas:
            replica.stop()
    row = summarise(cameras, began + args.warmup, began + args.warmup + args.seconds)
    per_replica: dict[str, int] = {}
    for camera in cameras:
        for call in camera.calls:
            per_replica[call["replica"]] = per_replica.get(call["replica"], 0) + 1
    failed = sum(call["status"] != "OK" for camera in cameras for call in camera.calls)
    return {"replicas": count, "streams": args.streams, **row, "streams_per_replica": per_replica, "failed": failed}


def kill_phase(args, workdir: Path) -> dict:
    """Two replicas, the cameras and `args.unary` Inspect callers; replica 0 is killed halfway."""
    replicas = start_replicas(2, args.model, workdir / "kill", args.serve_args)
    victim, survivor = replicas
    unary: list[dict] = []
    try:
        with NginxBalancer([r.address for r in replicas], workdir=workdir / "nginx-kill", replica_header=True) as lb:
            channel, stub, cameras = drive(lb.address, args.model, args.streams, args.seconds, args.in_flight)
            stop_at = time.perf_counter() + args.seconds
            request = pb.InspectRequest(model=args.model, image=pb.Image(data=FRAMES[0].read_bytes()))

            def inspect_loop() -> None:
                while time.perf_counter() < stop_at:
                    time.sleep(args.unary_interval)  # other callers' occasional calls, not a flood of cache hits
                    started = time.perf_counter()
                    try:
                        call = stub.Inspect.with_call(request, timeout=30)[1]
                        tried = dict(call.initial_metadata()).get(REPLICA_HEADER, "")
                        unary.append({"at": started, "status": "OK", "replica": tried.split(", ")[-1]})
                    except grpc.RpcError as error:
                        unary.append({"at": started, "status": error.code().name, "ended": time.perf_counter()})

            callers = [threading.Thread(target=inspect_loop, daemon=True) for _ in range(args.unary)]
            for caller in callers:
                caller.start()
            time.sleep(args.seconds / 2)
            killed_at = time.perf_counter()
            victim.kill()  # returns once the process is gone
            dead_at = time.perf_counter()
            for thread in [*callers, *(camera.thread for camera in cameras)]:
                thread.join()
            channel.close()
    finally:
        for replica in replicas:
            replica.stop()
    first = {camera.name: camera.calls[0] for camera in cameras}
    held = [name for name, call in first.items() if call["replica"] == victim.address]
    kept = [name for name, call in first.items() if call["replica"] == survivor.address]
    by_name = {camera.name: camera for camera in cameras}
    failed_streams = [name for name in first if by_name[name].calls[0]["status"] != "OK"]
    unary_failed = [call for call in unary if call["status"] != "OK"]
    return {
        "streams": args.streams,
        "streams_on_killed": len(held),
        "streams_on_survivor": len(kept),
        "failed_streams": len(failed_streams),
        "failed_streams_not_on_killed": len([name for name in failed_streams if name not in held]),
        "failure_statuses": sorted({by_name[name].calls[0]["status"] for name in failed_streams}),
        "reconnected_and_served": len(
            [n for n in held if len(by_name[n].calls) > 1 and by_name[n].calls[-1]["replica"] == survivor.address]
        ),
        "answers_after_reconnect": sum(call["answers"] for n in held for call in by_name[n].calls[1:]),
        "survivor_streams_failed": len([n for n in kept if any(c["status"] != "OK" for c in by_name[n].calls)]),
        "unary_calls": len(unary),
        "unary_failed": len(unary_failed),
        "unary_failed_in_flight_at_kill": len(
            [c for c in unary_failed if c["at"] <= dead_at and c["ended"] >= killed_at]
        ),
        "unary_failed_after_kill": len([c for c in unary_failed if c["at"] > dead_at]),
        "unary_after_kill_ok": len([c for c in unary if c["status"] == "OK" and c["at"] > dead_at]),
        "frames_per_s_after_kill": summarise(cameras, killed_at + 1.0, killed_at + args.seconds / 2)["frames_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="defect-anomaly", help="a heavier model keeps nginx's and the client's share small"
    )
    parser.add_argument("--streams", type=int, default=8, help="concurrent camera streams")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per row (and of the kill phase)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of streaming before measuring")
    parser.add_argument("--in-flight", type=int, default=2, help="frames a camera sends ahead of its answers")
    parser.add_argument("--unary", type=int, default=2, help="Inspect callers during the kill phase")
    parser.add_argument("--unary-interval", type=float, default=0.1, help="seconds between a caller's Inspect calls")
    parser.add_argument("--rounds", type=int, default=1, help="1-then-2-replica rounds (the ratio is of their sums)")
    parser.add_argument("--serve-arg", dest="serve_args", action="append", default=[], help="extra serve flag (repeat)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scale_out.json"))
    args = parser.parse_args()
    args.serve_args = ["--log-level", "warning", "--max-open-streams", "256", *args.serve_args]

    int8 = cpu_int8_dot_product()
    load = os.getloadavg()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; int8 dot-product: {', '.join(int8) or 'none (AVX2 or older)'}")
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"model {args.model}; {args.streams} streams, {args.in_flight} frames in flight each, {args.seconds:.0f} s")
    workdir = Path(tempfile.mkdtemp(prefix="mmfusion-scale-out-"))
    rows = [throughput(count, args, workdir) for _ in range(args.rounds) for count in (1, 2)]
    fps = {count: sum(row["frames_per_s"] for row in rows if row["replicas"] == count) for count in (1, 2)}
    ratio = fps[2] / fps[1]  # each round's two rows run back to back: a load that drifts hits both alike
    print(f"{'replicas':>8} {'streams':>7} {'frames/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'dropped':>7} {'failed':>6}")
    for row in rows:
        print(
            f"{row['replicas']:>8} {row['streams']:>7} {row['frames_per_s']:>8.1f} {row['p50_ms']:>7.0f} "
            f"{row['p95_ms']:>7.0f} {row['dropped']:>7} {row['failed']:>6}"
        )
    print(f"2 replicas / 1 replica: {ratio:.2f}x ({'PASS' if ratio >= 1.8 else 'FAIL'} >= 1.8x)")
    kill = kill_phase(args, workdir)
    print(
        f"kill -9 of one of 2 replicas halfway: {kill['streams_on_killed']} streams on it, "
        f"{kill['streams_on_survivor']} on the survivor; failed streams {kill['failed_streams']} "
        f"({kill['failed_streams_not_on_killed']} not on the killed replica; {', '.join(kill['failure_statuses'])}), "
        f"{kill['reconnected_and_served']} called again and served by the survivor; "
        f"survivor's streams failed {kill['survivor_streams_failed']}"
    )
    print(
        f"unary Inspect: {kill['unary_calls']} calls, {kill['unary_failed']} failed "
        f"({kill['unary_failed_in_flight_at_kill']} in flight at the kill, {kill['unary_failed_after_kill']} started "
        f"after it); {kill['unary_after_kill_ok']} served after the kill; "
        f"{kill['frames_per_s_after_kill']:.1f} frames/s on the survivor"
    )
    held = kill["failed_streams_not_on_killed"] == 0 and kill["unary_failed_after_kill"] == 0
    held = held and kill["survivor_streams_failed"] == 0
    print(f"{'PASS' if held else 'FAIL'} killing one replica fails no call but those it held")
    result = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "cpu_int8_dot_product": int8,
        "load_average_at_start": load,
        "model": args.model,
        "in_flight": args.in_flight,
        "seconds": args.seconds,
        "rows": rows,
        "ratio_2_vs_1": ratio,
        "kill": kill,
        "targets": {"2 replicas >= 1.8x one": ratio >= 1.8, "kill fails only the calls it held": held},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
