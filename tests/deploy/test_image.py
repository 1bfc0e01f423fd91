"""The container images (Containerfile, `make image` / `make image-edge`), built and run for real.

`make image` builds only when the image's inputs changed (build.sh labels it with their hash), so a rerun reuses
it. `podman run` cannot start containers on these machines (setrlimit), so the image's file system is run
directly: `buildah from` + `buildah mount`, /proc and /dev mounted in, `chroot --userspec=10001:10001` with the
image's environment and entry point. The server listens on the host's loopback (a chroot shares the network),
and the host venv's InspectionClient talks to it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mmfusion.client import InspectionClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples"
TOOLS = ("buildah", "podman", "mmdebstrap", "chroot", "mount", "umount")
BUILD_SECONDS = 3600  # a first build on a fresh machine: base root file system, packages, exports
START_SECONDS = 600
EDGE_MODELS = ("pcb-template", "defect-anomaly")
EDGE_RSS_LIMIT = 1.5 * 1024**3  # issue 17 item 6: cameras + anomaly/template models in <= 1.5 GB
EDGE_SIZE_LIMIT = 3.0 * 1024**3  # the slim image; the full CPU image is about 3x as big (docs/deploy.md)
EXCLUDED_FROM_EDGE = ("peft", "matplotlib", "sklearn", "imagehash", "datasketch", "sacrebleu", "tensorrt")


def _require_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("the image tests run the image's file system with buildah mount + chroot: they need root")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}: `make system-deps` installs them (root, Debian)")


def _build(target: str) -> str:
    """`make TARGET` (a no-op when the image is up to date); the image's name (build.sh's last line)."""
    _require_tools()
    done = subprocess.run(
        ["make", "--no-print-directory", target], cwd=REPO, capture_output=True, text=True, timeout=BUILD_SECONDS
    )
    assert done.returncode == 0, f"make {target} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done.stdout.strip().splitlines()[-1]


def _inspect(image: str) -> dict:
    done = subprocess.run(["buildah", "inspect", "--type", "image", image], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _image_bytes(image: str) -> int:
    done = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Size}}", image], capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


@pytest.fixture(scope="module")
def image() -> str:
    return _build("image")


@pytest.fixture(scope="module")
def edge_image() -> str:
    return _build("image-edge")


@contextmanager
def _mounted(image: str) -> Iterator[Path]:
    """The image's file system in a working container, with /proc and /dev; everything undone after."""
    container = subprocess.run(
        ["buildah", "from", "--pull-never", image], capture_output=True, text=True, check=True
    ).stdout.strip()
    mounts: list[Path] = []
    try:
        root = Path(
            subprocess.run(["buildah", "mount", container], capture_output=True, text=True, check=True).stdout.strip()
        )
        subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
        mounts.append(root / "proc")
        subprocess.run(["mount", "--rbind", "/dev", str(root / "dev")], check=True)
        mounts.append(root / "dev")
        subprocess.run(["mount", "--make-rslave", str(root / "dev")], check=True)
        yield root
    finally:
        for path in reversed(mounts):
            if subprocess.run(["umount", "-R", str(path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-R", "-l", str(path)], capture_output=True)
        subprocess.run(["buildah", "umount", container], capture_output=True)
        subprocess.run(["buildah", "rm", container], capture_output=True)


def _chroot(root: Path, config: dict, argv: list[str]) -> list[str]:
    """`argv` in the image as its user, with its environment and working directory (none of the host's)."""
    user = config["User"]
    return [
        "chroot",
        f"--userspec={user}",
        f"--groups={user.split(':')[-1]}",
        str(root),
        "/usr/bin/env",
        "-i",
        *config["Env"],
        "/bin/sh",
        "-c",
        'cd "$0" && exec "$@"',
        config.get("WorkingDir") or "/",
        *argv,
    ]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@contextmanager
def _serving(root: Path, config: dict, models: tuple[str, ...], log: Path) -> Iterator[tuple[InspectionClient, int]]:
    """The image's entry point serving `models` on a free loopback port; a client once health says SERVING."""
    port = _free_port()
    argv = [*config["Entrypoint"], "--host", "127.0.0.1", "--port", str(port), *models]
    started = time.monotonic()
    with log.open("w") as output:
        server = subprocess.Popen(_chroot(root, config, argv), stdout=output, stderr=subprocess.STDOUT)
    client = InspectionClient(f"127.0.0.1:{port}", timeout=120)
    try:
        while True:
            assert server.poll() is None, f"serve exited ({server.returncode}):\n{log.read_text()[-4000:]}"
            assert time.monotonic() - started < START_SECONDS, f"not SERVING after {START_SECONDS} s"
            try:
                if client.health() == "SERVING":
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.5)
        print(f"{config['Labels'].get('org.mmfusion.profile')}: SERVING after {time.monotonic() - started:.1f} s")
        yield client, server.pid
    finally:
        client.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_image_runs_as_non_root_with_serve_as_entry_point(image):
    config = _inspect(image)["Docker"]["config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["mmfusion", "serve"]
    assert "healthcheck.py" in " ".join(config["Healthcheck"]["Test"])
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["MMFUSION_EXPORT_CACHE"] == "/opt/mmfusion/exports"
    assert env["MMFUSION_MODELS"] == "/opt/mmfusion/models"


def test_image_serves_health_and_inspect(image, tmp_path):
    config = _inspect(image)["Docker"]["config"]
    log = tmp_path / "serve.log"
    with _mounted(image) as root:
        # the image's file system: the user cannot write its exports, which serve reads as they are
        exports = root / "opt/mmfusion/exports"
        assert any(exports.rglob("export.json")), "no exports made at build time"
        with _serving(root, config, ("pcb-template", "defect-anomaly"), log) as (client, _pid):
            result = client.inspect(
                "pcb-template", image=SAMPLES / "pcb_tested.jpg", reference=SAMPLES / "pcb_template.jpg"
            )
            assert result.model == "pcb-template" and result.verdict
            anomaly = client.inspect("defect-anomaly", image=SAMPLES / "pcb_tested.jpg")
            assert anomaly.verdict
            # the image's health probe agrees (run inside the image, as its HEALTHCHECK runs it)
            port = client.target.rsplit(":", 1)[1]
            probe = subprocess.run(
                _chroot(root, config, [*config["Healthcheck"]["Test"][1:], port]), capture_output=True, text=True
            )
            assert probe.returncode == 0, probe.stderr
            assert "SERVING" in probe.stdout
    text = log.read_text()
    assert "falls back to torch" not in text, text[-3000:]  # the build-time export served, read-only


def test_edge_image_is_slim_and_serves_in_budget(edge_image, tmp_path):
    config = _inspect(edge_image)["Docker"]["config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["mmfusion", "serve"]
    size = _image_bytes(edge_image)
    print(f"edge image: {size / 1e9:.2f} GB")
    assert size <= EDGE_SIZE_LIMIT, f"edge image {size / 1e9:.2f} GB"
    log = tmp_path / "serve.log"
    with _mounted(edge_image) as root:
        check = "import importlib.util as u, sys; print(' '.join(n for n in sys.argv[1:] if u.find_spec(n)))"
        found = subprocess.run(
            _chroot(root, config, ["python", "-c", check, *EXCLUDED_FROM_EDGE]), capture_output=True, text=True
        )
        assert found.returncode == 0, found.stderr
        assert found.stdout.split() == [], f"the edge image carries {found.stdout.split()}"
        with _serving(root, config, EDGE_MODELS, log) as (client, pid):
            for _ in range(3):
                template = client.inspect(
                    "pcb-template", image=SAMPLES / "pcb_tested.jpg", reference=SAMPLES / "pcb_template.jpg"
                )
                anomaly = client.inspect("defect-anomaly", image=SAMPLES / "pcb_tested.jpg")
            assert template.verdict and anomaly.verdict
            rss = _rss_bytes(pid)
            print(f"edge serve {' + '.join(EDGE_MODELS)}: RSS {rss / 2**20:.0f} MiB")
            assert rss <= EDGE_RSS_LIMIT, f"RSS {rss / 2**20:.0f} MiB"
    assert "falls back to torch" not in log.read_text()
