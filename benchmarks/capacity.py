"""Capacity figures for operators: CPU seconds per inference, images/s, and the memory of a slim camera deployment.

1. Per shipped image model (pcb-inspect, pcb-template, defect-anomaly) on `--backend auto`: a real
   `mmfusion serve` process on a real port (result cache off), a fixed load of --requests Inspect calls from
   --concurrency client threads; the figures come from the server's own /metrics before and after:
   CPU seconds per inference = delta mmfusion_inference_cpu_seconds_total / delta nv_inference_count (and the
   process's whole CPU per inference beside it), images/s, the scheduler's busy share.
2. Memory: one server process with pcb-template + defect-anomaly (auto: INT8 where its check passes) and one
   `mmfusion cameras` process reading 4 looped video files (2 cameras per model, 15 fps each) for --camera-s
   seconds; the peak RSS (VmHWM of /proc/PID/status) of each process, and their sum against the 1.5 GB target.

Prints a table, the CPU kind (VNNI or AVX2) and the load average, and writes benchmarks/results/capacity.json.
Run: `.venv/bin/python benchmarks/capacity.py` (exports are built into the export cache on first use).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import av
import cv2
import numpy as np
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mmfusion.client import InspectionClient  # noqa: E402
from mmfusion.proto import inspection_pb2 as pb  # noqa: E402

FRAMES = REPO / "samples" / "frames"
BOARDS = ["13000002", "44000064", "50600002", "77000002"]
MODELS = ("pcb-inspect", "pcb-template", "defect-anomaly")
CAMERA_MODELS = ("pcb-template", "defect-anomaly")
TARGET_RSS_BYTES = 1.5e9
RESULTS = REPO / "benchmarks" / "results" / "capacity.json"
MMFUSION = [sys.executable, "-m", "mmfusion"]


def cpu_kind() -> str:
    """'VNNI (avx512_vnni)', 'VNNI (avx_vnni)', 'AMX', 'AVX2' or 'other': what decides INT8 on this CPU."""
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return platform.processor() or "unknown"
    for flag, kind in (("amx_int8", "AMX"), ("avx512_vnni", "VNNI (avx512_vnni)"), ("avx_vnni", "VNNI (avx_vnni)")):
        if flag in flags:
            return kind
    return "AVX2" if "avx2" in flags else "other"


def cpu_model() -> str:
    try:
        return next(line for line in open("/proc/cpuinfo") if line.startswith("model name")).split(":")[1].strip()
    except (OSError, StopIteration):
        return platform.processor()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def board(index: int, kind: str) -> Path:
    """The index-th DeepPCB board of samples/frames: kind 'temp' (template) or 'test' (tested)."""
    return next(FRAMES.glob(f"*_{BOARDS[index % len(BOARDS)]}_{kind}.jpg"))


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a /metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all((key, want) in sample_labels for key, want in labels.items())
    )


def peak_rss(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of a process in bytes (0 when it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    fields = {line.split(":")[0]: line.split()[1] for line in status.splitlines() if line.startswith("Vm")}
    return int(fields.get("VmHWM", 0)) * 1024, int(fields.get("VmRSS", 0)) * 1024


class Server:
    """`mmfusion serve MODELS --backend auto` in a process of its own, on free ports."""

    def __init__(self, models: list[str], log: Path, cache_mb: int = 0) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        command = [*MMFUSION, "serve", *models, "--backend", "auto", "--port", str(self.port)]
        command += ["--metrics-port", str(self.metrics_port), "--cache-mb", str(cache_mb), "--log-level", "warning"]
        self.log = log
        self.process = subprocess.Popen(command, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.models = models

    def wait_ready(self, timeout: float) -> InspectionClient:
        client = InspectionClient(f"127.0.0.1:{self.port}", timeout=120)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited {self.process.returncode}: {self.log.read_text()[-3000:]}")
            try:
                client.wait_ready(5)
                if all(client.get_model(name).state == pb.MODEL_STATE_LOADED for name in self.models):
                    return client
            except Exception:
                if time.monotonic() > deadline:
                    raise
            time.sleep(1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def auto_choice(model: str) -> str:
    """What `backend: auto` settles on for a model and why, in a process of its own (builds absent exports)."""
    code = (
        "from mmfusion.pipeline import Pipeline; "
        f"p = Pipeline({str(REPO / 'models' / model)!r}, backend='auto'); print(p.backend_choice); p.close()"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{model}: loading it on backend auto failed: {done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def request_for(model: str, index: int) -> dict:
    """Inspect keyword arguments of the index-th request (JPEG bytes, as a camera sends them)."""
    tested = board(index, "test").read_bytes()
    if model == "pcb-template":
        return {"image": tested, "reference": board(index, "temp").read_bytes()}
    return {"image": tested}


def load_model(model: str, requests: int, concurrency: int, workdir: Path) -> dict:
    """The fixed load on one model's own server; its figures from /metrics."""
    choice = auto_choice(model)
    server = Server([model], workdir / f"serve-{model}.log")
    try:
        client = server.wait_ready(1800)
        for index in range(4):  # warm up: first-call allocations, ORT's arena
            client.inspect(model, **request_for(model, index))
        before, started = scrape(server.metrics_port), time.monotonic()
        errors: list[BaseException] = []
        counter = iter(range(requests))
        lock = threading.Lock()

        def worker() -> None:
            with InspectionClient(f"127.0.0.1:{server.port}", timeout=120) as own:
                while True:
                    with lock:
                        index = next(counter, None)
                    if index is None:
                        return
                    try:
                        own.inspect(model, **request_for(model, index))
                    except Exception as error:  # counted, reported
                        errors.append(error)

        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
        after = scrape(server.metrics_port)
        hwm, _ = peak_rss(server.process.pid)
        client.close()
    finally:
        server.stop()

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    inferences = moved("nv_inference_count", model=model)
    return {
        "model": model,
        "backend": " ".join(choice.split()[:2]),  # onnxruntime int8 | onnxruntime fp32 | torch
        "backend_choice": choice,
        "requests": requests,
        "concurrency": concurrency,
        "errors": len(errors),
        "inferences": inferences,
        "wall_s": round(wall, 3),
        "images_per_s": round(inferences / wall, 2),
        "cpu_s_per_inference": round(moved("mmfusion_inference_cpu_seconds_total", model=model) / inferences, 4),
        "process_cpu_s_per_inference": round(moved("process_cpu_seconds_total") / inferences, 4),
        "mean_batch": round(inferences / max(moved("nv_inference_exec_count", model=model), 1), 2),
        "busy_share": round(moved("mmfusion_scheduler_busy_seconds_total", model=model) / wall, 3),
        "server_peak_rss_mib": round(hwm / 2**20, 1),
    }


def write_video(path: Path, image_file: Path, frames: int, fps: int) -> None:
    """A looped-camera video of one board, each frame's corner stamped so no two frames are alike."""
    image = cv2.cvtColor(cv2.imread(str(image_file)), cv2.COLOR_BGR2RGB)
    height, width = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 4_000_000
        for index in range(frames):
            frame = np.ascontiguousarray(image[:height, :width])
            frame[:16, :16] = (index * 37) % 256
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def camera_memory(seconds: float, fps: int, workdir: Path) -> dict:
    """Peak RSS of a pcb-template + defect-anomaly server and a 4-camera `mmfusion cameras` process."""
    cameras = []
    for index in range(4):
        model = CAMERA_MODELS[index % 2]
        video = workdir / f"cam-{index}.mp4"
        write_video(video, board(index, "test"), frames=fps * 8, fps=fps)
        camera = {"name": f"cam-{index}", "url": str(video), "model": model, "fps": fps, "loop": True}
        if model == "pcb-template":
            camera["reference"] = str(board(index, "temp"))
        cameras.append(camera)
    config = workdir / "cameras.yaml"
    config.write_text(yaml.safe_dump({"cameras": cameras}))
    backends = {model: auto_choice(model) for model in CAMERA_MODELS}
    server = Server(list(CAMERA_MODELS), workdir / "serve-cameras.log")
    camera_process = None
    peaks = {"server": 0, "cameras": 0}
    try:
        client = server.wait_ready(1800)
        client.close()
        loaded_rss = peak_rss(server.process.pid)[1]
        camera_metrics = free_port()
        command = [*MMFUSION, "cameras", str(config), "--server", f"127.0.0.1:{server.port}", "--no-view"]
        command += ["--no-record", "--duration", str(seconds), "--metrics-port", str(camera_metrics)]
        camera_log = workdir / "cameras.log"
        camera_process = subprocess.Popen(command, cwd=REPO, stdout=camera_log.open("w"), stderr=subprocess.STDOUT)
        time.sleep(min(15.0, seconds / 3))  # the cameras open and the first frames are judged
        before, started = scrape(server.metrics_port), time.monotonic()
        cameras_before = scrape(camera_metrics)
        while camera_process.poll() is None and time.monotonic() - started < seconds - 20:
            time.sleep(1)
            for name, pid in (("server", server.process.pid), ("cameras", camera_process.pid)):
                peaks[name] = max(peaks[name], peak_rss(pid)[0])
        wall = time.monotonic() - started
        after, cameras_after = scrape(server.metrics_port), scrape(camera_metrics)
        for name, pid in (("server", server.process.pid), ("cameras", camera_process.pid)):
            peaks[name] = max(peaks[name], peak_rss(pid)[0])
        camera_process.wait(seconds + 60)
        if camera_process.returncode != 0:
            raise RuntimeError(f"mmfusion cameras exited {camera_process.returncode}: {camera_log.read_text()[-3000:]}")
    finally:
        if camera_process is not None and camera_process.poll() is None:
            camera_process.kill()
        server.stop()
    per_model = {}
    for model in CAMERA_MODELS:
        inferences = total(after, "nv_inference_count", model=model) - total(before, "nv_inference_count", model=model)
        cpu = total(after, "mmfusion_inference_cpu_seconds_total", model=model) - total(
            before, "mmfusion_inference_cpu_seconds_total", model=model
        )
        per_model[model] = {
            "backend": " ".join(backends[model].split()[:2]),
            "images_per_s": round(inferences / wall, 2),
            "cpu_s_per_inference": round(cpu / max(inferences, 1), 4),
        }
    judged = {
        camera["name"]: round(
            (
                total(cameras_after, "mmfusion_camera_frames_sent_total", camera=camera["name"])
                - total(cameras_before, "mmfusion_camera_frames_sent_total", camera=camera["name"])
            )
            / wall,
            2,
        )
        for camera in cameras
    }
    process_cpu = total(after, "process_cpu_seconds_total") - total(before, "process_cpu_seconds_total")
    combined = peaks["server"] + peaks["cameras"]
    return {
        "cameras": len(cameras),
        "camera_fps_asked": fps,
        "measured_s": round(wall, 1),
        "models": per_model,
        "frames_sent_per_s": judged,
        "server_cpu_cores_used": round(process_cpu / wall, 2),
        "server_rss_after_load_mib": round(loaded_rss / 2**20, 1),
        "server_peak_rss_mib": round(peaks["server"] / 2**20, 1),
        "cameras_peak_rss_mib": round(peaks["cameras"] / 2**20, 1),
        "combined_peak_rss_mib": round(combined / 2**20, 1),
        "target_mib": round(TARGET_RSS_BYTES / 2**20, 1),
        "within_target": combined <= TARGET_RSS_BYTES,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), help="models of the CPU-per-inference part")
    parser.add_argument("--requests", type=int, default=64, help="Inspect calls per model")
    parser.add_argument("--concurrency", type=int, default=2, help="client threads sending them")
    parser.add_argument("--camera-s", type=float, default=60.0, help="seconds the 4 cameras run (0: skip)")
    parser.add_argument("--camera-fps", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_before = os.getloadavg()
    report = {
        "cpu": cpu_model(),
        "cpu_kind": cpu_kind(),
        "cores": len(os.sched_getaffinity(0)),
        "load_average_before": [round(value, 2) for value in load_before],
        "models": [],
    }
    print(f"CPU: {report['cpu']} ({report['cpu_kind']}), {report['cores']} cores; load average {load_before}")
    with tempfile.TemporaryDirectory(prefix="mmfusion-capacity-") as folder:
        workdir = Path(folder)
        for model in args.models:
            figures = load_model(model, args.requests, args.concurrency, workdir)
            report["models"].append(figures)
            print(json.dumps(figures))
        if args.camera_s > 0:
            report["camera_memory"] = camera_memory(args.camera_s, args.camera_fps, workdir)
            print(json.dumps(report["camera_memory"]))
    report["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    print()
    print(f"{'model':16} {'backend':22} {'CPU s/inf':>10} {'proc CPU s/inf':>15} {'images/s':>9} {'busy':>6}")
    for row in report["models"]:
        print(
            f"{row['model']:16} {row['backend']:22} {row['cpu_s_per_inference']:>10.4f}"
            f" {row['process_cpu_s_per_inference']:>15.4f} {row['images_per_s']:>9.2f} {row['busy_share']:>6.2f}"
        )
    if "camera_memory" in report:
        memory = report["camera_memory"]
        print(
            f"4 cameras on {', '.join(CAMERA_MODELS)}: server peak RSS {memory['server_peak_rss_mib']} MiB +"
            f" cameras {memory['cameras_peak_rss_mib']} MiB = {memory['combined_peak_rss_mib']} MiB"
            f" (target {memory['target_mib']} MiB: {'met' if memory['within_target'] else 'NOT met'})"
        )
    print(f"CPU kind {report['cpu_kind']}; load average before {load_before}, after {report['load_average_after']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
