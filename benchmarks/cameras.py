"""Cameras end to end: 4 RTSP cameras (H.264, 15 fps) -> readers -> StreamInspect -> verdicts -> live page.

Each camera is GStreamer's RTSP server (tests/cameras/rtsp_camera.py under the system Python) serving a
DeepPCB tested board, every frame stamped with its index in its pixels and its push time logged, so the
glass-to-verdict latency is measured from the moment the frame left the "camera" to the moment its
verdict came back. By default (`--encoding loop`) each camera encodes 10 s of stamped frames once at start
and sends that H.264 in a loop, as an IP camera's own encoder would; `--encoding live` encodes every
frame with x264 on this machine's cores (about 9 ms of CPU per judged frame taken from the measured side).
The cameras run through `mmfusion.cameras` as `mmfusion cameras` runs them (`mmfusion serve` in its own
process by default, the shipped model on its configured backend), and one MJPEG client per tile
counts how often the live page's picture changes.

Issue 18's targets: no camera below 14 fps, glass-to-verdict p95 <= 300 ms, >= 5 page updates/s per tile.
Prints a table and writes JSON. Run: `.venv/bin/python benchmarks/cameras.py [--models pcb-template]`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the RTSP test camera lives with the tests

from mmfusion.cameras.config import parse_cameras  # noqa: E402
from mmfusion.cameras.stream import CameraResult  # noqa: E402
from mmfusion.cameras.system import CameraSystem  # noqa: E402
from mmfusion.cameras.view.app import LiveView  # noqa: E402
from mmfusion.cameras.view.server import ViewServer  # noqa: E402
from mmfusion.client import InspectionClient  # noqa: E402
from mmfusion.media import decode_image  # noqa: E402
from mmfusion.runtime.quantize import cpu_int8_dot_product  # noqa: E402
from mmfusion.serving.memory import keep_heap_warm  # noqa: E402
from tests.cameras.rtsp import RtspCamera, read_stamp, rtsp_unavailable  # noqa: E402

FRAMES = REPO / "samples" / "frames"
BOARDS = ["13000002", "44000064", "50600002", "77000002", "92000002", "00041002"]
TARGETS = {"min_fps": 14.0, "p95_ms": 300.0, "page_updates_per_s": 5.0}
LOOP_SECONDS = 10  # --encoding loop: each camera sends 10 s of H.264 encoded once at start, over and over


def auto_choice(model: str) -> str:
    """The backend the server will run a shipped model on and why, in a process of its own (builds absent exports,
    so the server's load does not eat the warm-up)."""
    code = (
        "from mmfusion.pipeline import Pipeline; "
        f"p = Pipeline({str(REPO / 'models' / model)!r}); print(p.backend_choice); p.close()"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{model}: loading it failed: {done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def board_files(index: int) -> tuple[Path, Path]:
    """(template, tested) of the index-th DeepPCB pair in samples/frames."""
    board = BOARDS[index % len(BOARDS)]
    return next(FRAMES.glob(f"*_{board}_temp.jpg")), next(FRAMES.glob(f"*_{board}_test.jpg"))


class Timeline:
    """Every judged frame's glass-to-verdict and decode-to-verdict latency, per camera, in the measured window.

    Looping cameras reuse their stamps every `loop_s` seconds: a stamp names its latest push, and a match
    older than half a loop (its newer push not logged yet) counts as unmatched.
    """

    def __init__(self, cameras: dict[str, RtspCamera], loop_s: float = float("inf")) -> None:
        self.cameras = cameras
        self.loop_s = loop_s
        self.measuring = threading.Event()
        self.glass: dict[str, list[float]] = {name: [] for name in cameras}
        self.decoded: dict[str, list[float]] = {name: [] for name in cameras}
        self.unmatched = 0

    def __call__(self, result: CameraResult) -> None:
        if not self.measuring.is_set() or result.answer.HasField("error"):
            return
        received = result.captured_wall + result.latency_s
        pushed = self.cameras[result.camera].pushes["/cam0"].get(read_stamp(result.image))
        if pushed is None or received - pushed > self.loop_s / 2:
            self.unmatched += 1
            return
        self.glass[result.camera].append(received - pushed)
        self.decoded[result.camera].append(result.latency_s)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_page_updates(url: str, stop: threading.Event, counts: list[int]) -> None:
    """Read a tile's MJPEG stream, counting the parts (each a changed picture) while `stop` is unset.

    Each part's picture is read whole by its Content-Length, as a browser does, not scanned line by line.
    """
    with urllib.request.urlopen(url, timeout=30) as response:
        while not stop.is_set():
            line = response.readline()
            if not line:
                return
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
                while response.readline() not in (b"\r\n", b"\n", b""):  # the part's other headers
                    pass
                response.read(length)
                counts[0] += 1


class ServeProcess:
    """`mmfusion serve MODEL` in a process of its own on a free loopback port (as an operator runs it)."""

    def __init__(self, model: str, log: Path, threads: int | None = None) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        command = [sys.executable, "-m", "mmfusion", "serve", model, "--port", str(self.port), "--log-level", "warning"]
        command += [] if threads is None else ["--threads", str(threads)]
        self.log = log
        self.process = subprocess.Popen(command, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def start(self) -> ServeProcess:
        client = InspectionClient(f"127.0.0.1:{self.port}", timeout=30)
        deadline = time.monotonic() + 600
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mmfusion serve exited {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                client.wait_ready(5)
                return self
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self, grace: float = 1.0) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=grace + 10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def run_model(
    model: str,
    cameras: int,
    fps: int,
    seconds: float,
    warmup: float,
    work: Path,
    server_mode: str = "process",
    encoding: str = "loop",
    serve_threads: int | None = None,
    max_pending: int = 1,
) -> dict:
    """One run of `cameras` RTSP cameras through `model`; per-camera numbers."""
    loop = LOOP_SECONDS * fps if encoding == "loop" else 0
    sources: dict[str, RtspCamera] = {}
    specs = []
    for index in range(cameras):
        template, tested = board_files(index)
        name = f"cam{index}"
        frames = [decode_image(tested)]
        sources[name] = RtspCamera(frames, work / f"{name}.rgb", mounts=1, fps=fps, encoded_loop=loop).start()
        spec = {"name": name, "url": sources[name].url(0), "model": model, "fps": fps}
        spec["max_pending_frames"] = max_pending
        if model == "pcb-template":
            spec["reference"] = str(template)
        specs.append(spec)
    config = parse_cameras({"cameras": specs, "record": {"folder": str(work / "records")}}, "benchmark", REPO)
    if server_mode == "process":
        server = ServeProcess(model, work / "serve.log", serve_threads).start()
    else:
        from mmfusion.serving import build_server  # torch in this process only when the server is in it

        server = build_server([model], port=0).start()
    target = f"127.0.0.1:{server.port}"
    timeline = Timeline(sources, LOOP_SECONDS if loop else float("inf"))
    system = CameraSystem(config, lambda: InspectionClient(target, timeout=None), listeners=[timeline]).start()
    view = ViewServer(LiveView(system.board, max_fps=config.view.max_fps)).start()
    stop_pages = threading.Event()
    page_counts = {name: [0] for name in sources}
    try:
        time.sleep(warmup)  # connections, first keyframes, model warm-up
        readers = [
            threading.Thread(
                target=count_page_updates,
                args=(f"{view.url}/cameras/{name}/live.mjpg", stop_pages, page_counts[name]),
                daemon=True,
            )
            for name in sources
        ]
        for reader in readers:
            reader.start()
        time.sleep(0.5)
        before = {name: (camera.stream.stats.answered, page_counts[name][0]) for name, camera in system.cameras.items()}
        drops_before = {name: camera.reader.latest.dropped for name, camera in system.cameras.items()}
        read_before = {name: camera.reader.stats.frames for name, camera in system.cameras.items()}
        server_drops_before = {name: camera.stream.stats.server_dropped for name, camera in system.cameras.items()}
        processes = {"cameras + page": os.getpid(), "RTSP cameras": [c._process.pid for c in sources.values()]}
        if server_mode == "process":
            processes["server"] = server.process.pid

        def cpu_now() -> dict[str, float]:
            return {
                name: sum(cpu_seconds(pid) for pid in (pids if isinstance(pids, list) else [pids]))
                for name, pids in processes.items()
            }

        cpu_before = cpu_now()
        timeline.measuring.set()
        started = time.perf_counter()
        time.sleep(seconds)
        elapsed = time.perf_counter() - started
        timeline.measuring.clear()
        cpu_used = {name: used - cpu_before[name] for name, used in cpu_now().items()}
        rows = {}
        for name, camera in system.cameras.items():
            answered = camera.stream.stats.answered - before[name][0]
            glass = timeline.glass[name]
            rows[name] = {
                "fps": round(answered / elapsed, 2),
                "glass_to_verdict_p50_ms": round(float(np.percentile(glass, 50)) * 1000, 1) if glass else None,
                "glass_to_verdict_p95_ms": round(float(np.percentile(glass, 95)) * 1000, 1) if glass else None,
                "decode_to_verdict_p95_ms": round(float(np.percentile(timeline.decoded[name], 95)) * 1000, 1)
                if glass
                else None,
                "page_updates_per_s": round((page_counts[name][0] - before[name][1]) / elapsed, 2),
                "frames_read_per_s": round((camera.reader.stats.frames - read_before[name]) / elapsed, 2),
                "dropped_at_camera": camera.reader.latest.dropped - drops_before[name],
                "dropped_by_server": camera.stream.stats.server_dropped - server_drops_before[name],
                "reconnects": camera.reader.stats.reconnects,
                "stream_calls": camera.stream.stats.calls,
                "last_error": camera.stream.stats.last_error or camera.reader.stats.last_error,
                "frame_errors": camera.stream.stats.errors,
            }
        judged = sum(camera.stream.stats.answered - before[name][0] for name, camera in system.cameras.items())
        cpu = {
            name: {"cores": round(used / elapsed, 2), "ms_per_judged_frame": round(1000 * used / max(judged, 1), 1)}
            for name, used in cpu_used.items()
        }
        return {"seconds": round(elapsed, 1), "unmatched_stamps": timeline.unmatched, "cameras": rows, "cpu": cpu}
    finally:
        stop_pages.set()
        view.stop()
        system.stop()
        server.stop(grace=1.0)
        for source in sources.values():
            source.stop()


def verdicts(rows: dict) -> dict:
    """Each target, held or not, over all cameras of a run."""
    cameras = rows["cameras"].values()
    p95 = [row["glass_to_verdict_p95_ms"] for row in cameras if row["glass_to_verdict_p95_ms"] is not None]
    return {
        "no camera below 14 fps": all(row["fps"] >= TARGETS["min_fps"] for row in cameras),
        "glass-to-verdict p95 <= 300 ms": bool(p95) and max(p95) <= TARGETS["p95_ms"],
        ">= 5 page updates/s per tile": all(
            row["page_updates_per_s"] >= TARGETS["page_updates_per_s"] for row in cameras
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="pcb-template,defect-anomaly", help="comma-separated shipped models")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument(
        "--server",
        choices=["process", "in-process"],
        default="process",
        help="process: `mmfusion serve` on its own (its own interpreter lock); in-process: beside the cameras",
    )
    parser.add_argument(
        "--encoding",
        choices=["loop", "live"],
        default="loop",
        help="loop: the test cameras encode once and loop the H.264 (like a camera's own encoder, no CPU here); "
        "live: they encode every frame with x264 on this machine's CPUs",
    )
    parser.add_argument("--max-pending", type=int, default=1, help="each camera's max_pending_frames")
    parser.add_argument("--serve-threads", type=int, help="`mmfusion serve --threads N` (default: serve's own)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cameras.json"))
    args = parser.parse_args()
    reason = rtsp_unavailable()
    if reason:
        sys.exit(f"benchmarks/cameras.py: {reason}")
    keep_heap_warm()  # as `mmfusion cameras` does
    int8 = cpu_int8_dot_product()
    print(f"CPU: {os.cpu_count()} cores, int8 dot-product instructions: {', '.join(int8) or 'none (AVX2 or older)'}")
    result = {
        "cpus": os.cpu_count(),
        "cpu_int8_dot_product": int8,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "cameras": args.cameras,
        "camera_fps": args.fps,
        "server": args.server,
        "camera_encoding": args.encoding,
        "serve_threads": args.serve_threads,
        "max_pending_frames": args.max_pending,
        "targets": TARGETS,
        "runs": {},
    }
    header = f"{'model':15s} {'camera':7s} {'fps':>6s} {'glass p50':>10s} {'glass p95':>10s} {'page/s':>7s}"
    header += f" {'read/s':>7s} {'drop cam':>9s} {'drop srv':>9s}"
    lines = [header]
    for model in args.models.split(","):
        choice = auto_choice(model)
        print(f"{model}: {choice}", flush=True)
        with tempfile.TemporaryDirectory() as work:
            run = run_model(
                model,
                args.cameras,
                args.fps,
                args.seconds,
                args.warmup,
                Path(work),
                args.server,
                args.encoding,
                args.serve_threads,
                args.max_pending,
            )
        run["targets_held"] = verdicts(run)
        run["backend_choice"] = choice
        result["runs"][model] = run
        for name, row in run["cameras"].items():
            glass50 = row["glass_to_verdict_p50_ms"]
            glass95 = row["glass_to_verdict_p95_ms"]
            lines.append(
                f"{model:15s} {name:7s} {row['fps']:6.2f} {glass50 if glass50 is not None else '-':>10} "
                f"{glass95 if glass95 is not None else '-':>10} {row['page_updates_per_s']:7.2f} "
                f"{row['frames_read_per_s']:7.2f} "
                f"{row['dropped_at_camera']:9d} {row['dropped_by_server']:9d}"
            )
        print("\n".join(lines[-len(run["cameras"]) :]), flush=True)
        for name, used in run["cpu"].items():
            per_frame = used["ms_per_judged_frame"]
            lines.append(f"{model:15s} CPU of {name}: {used['cores']:.2f} cores, {per_frame} ms per judged frame")
            print(lines[-1], flush=True)
    print()
    print("\n".join(lines))
    for model, run in result["runs"].items():
        print(f"{model}: {run['backend_choice'].split(';')[0]}")
        held = ", ".join(f"{target}: {'held' if ok else 'MISSED'}" for target, ok in run["targets_held"].items())
        print(f"{model}: {held}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
