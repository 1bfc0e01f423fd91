"""Several `mmfusion serve` replicas behind one nginx that balances gRPC per call (grpc_pass, least_conn).

`NginxBalancer` renders deploy/nginx/mmfusion-replicas.conf.template (kept identical to
BALANCER_TEMPLATE below, a test checks it) and runs nginx as a child, as NginxFront does for the TLS
front; `Replica` runs one `mmfusion serve` process, optionally pinned to one core (`taskset -c K`,
`--threads 1`). Used by benchmarks/scale_out.py and tests/deploy/test_replicas.py, and on one machine
with several cores to use them all with single-threaded replicas.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mmfusion.security.tls import NginxFront, _Placeholders, free_port, listen_host
from mmfusion.types import InputError

REPLICA_HEADER = "x-mmfusion-replica"
"""Response metadata naming the replica (host:port) that serves a call, when the balancer adds it."""
REPLICA_START_TIMEOUT_S = 120.0
REPLICA_STOP_TIMEOUT_S = 15.0
# Kept identical to deploy/nginx/mmfusion-replicas.conf.template below its comment header (a test checks it).
BALANCER_TEMPLATE = """\
worker_processes 1;
pid "${workdir}/nginx.pid";
error_log "${workdir}/error.log" warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    client_body_temp_path "${workdir}/client_body";
    proxy_temp_path "${workdir}/proxy";
    fastcgi_temp_path "${workdir}/fastcgi";
    uwsgi_temp_path "${workdir}/uwsgi";
    scgi_temp_path "${workdir}/scgi";
    client_max_body_size ${max_body_bytes};
    client_body_timeout 5m;
    send_timeout 5m;

    limit_req_zone $binary_remote_addr zone=mmfusion_calls:10m rate=${rate_per_s}r/s;
    limit_conn_zone $binary_remote_addr zone=mmfusion_open:10m;
    limit_req_status 429;
    limit_conn_status 429;

    upstream mmfusion_replicas {
        least_conn;
${servers}
        keepalive 64;
        keepalive_timeout 5m;
    }

    server {
        listen ${listen_address}:${listen_port} http2;
        http2_max_concurrent_streams 256;
        keepalive_timeout 5m;

        limit_req zone=mmfusion_calls burst=${burst} nodelay;
        limit_conn mmfusion_open ${max_calls};

        grpc_set_header X-Real-IP $remote_addr;
        grpc_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        grpc_connect_timeout 2s;
        grpc_next_upstream error timeout;
        grpc_next_upstream_tries 3;
        grpc_socket_keepalive on;
        ${replica_header}

        location / {
            grpc_pass grpc://mmfusion_replicas;
            grpc_read_timeout 10m;
            grpc_send_timeout 10m;
        }

        location ~ ^/mmfusion\\.v1\\.Inspection/(StreamInspect|StreamCall|AnalyzeAudio)$ {
            client_max_body_size 0;
            grpc_pass grpc://mmfusion_replicas;
            grpc_read_timeout 5m;
            grpc_send_timeout 5m;
        }
    }
}
"""


def render_balancer_config(
    listen_port: int,
    upstreams: Sequence[str],
    workdir: str | Path,
    listen_address: str = "127.0.0.1",
    max_body_bytes: int = 64 * 1024 * 1024,
    rate_per_s: int = 1000,
    burst: int = 2000,
    max_calls: int = 1000,
    replica_header: bool = False,
) -> Path:
    """Write workdir/nginx.conf: HTTP/2 on listen_address:listen_port, each call to one of `upstreams` (host:port)."""
    if not 0 < listen_port < 65536:
        raise InputError(f"listen_port {listen_port}: expected a TCP port in 1..65535")
    if not upstreams:
        raise InputError("upstreams: empty; expected at least one replica address host:port")
    for name, value in (("rate_per_s", rate_per_s), ("burst", burst), ("max_calls", max_calls)):
        if value < 1:
            raise InputError(f"{name} {value}: expected at least 1")
    servers = []
    for upstream in upstreams:
        host, _, port = upstream.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InputError(f"upstream {upstream!r}: expected host:port, e.g. 127.0.0.1:50061")
        servers.append(f"        server {listen_host(host)}:{port} max_fails=1 fail_timeout=5s;")
    workdir = Path(workdir)
    if any(character in str(workdir) for character in '"\\;{}$'):
        raise InputError(f'workdir {workdir}: contains one of " \\ ; {{ }} $; expected a plain path nginx can quote')
    workdir.mkdir(parents=True, exist_ok=True)
    config = _Placeholders(BALANCER_TEMPLATE).substitute(
        workdir=workdir.resolve(),
        listen_address=listen_host(listen_address),
        listen_port=listen_port,
        servers="\n".join(servers),
        max_body_bytes=max_body_bytes,
        rate_per_s=rate_per_s,
        burst=burst,
        max_calls=max_calls,
        replica_header=f"add_header {REPLICA_HEADER} $upstream_addr always;" if replica_header else "",
    )
    path = workdir / "nginx.conf"
    path.write_text(config)
    return path


class NginxBalancer(NginxFront):
    """nginx as a child process balancing gRPC calls over replicas; start/stop/reload as NginxFront's."""

    def __init__(
        self,
        upstreams: Sequence[str],
        listen_port: int = 0,
        workdir: str | Path | None = None,
        listen_address: str = "127.0.0.1",
        nginx: str | None = None,
        **limits,
    ) -> None:
        self._prepare(listen_port, workdir, listen_address, nginx, "mmfusion-balancer-")
        self.upstreams = list(upstreams)
        self.config = render_balancer_config(self.port, self.upstreams, self.workdir, self.listen_address, **limits)
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.listen_address}:{self.port}"


class Replica:
    """One `mmfusion serve` process on a loopback port; `core` pins it (taskset -c) and gives it one thread."""

    def __init__(
        self,
        models: Sequence[str],
        port: int = 0,
        core: int | None = None,
        extra_args: Sequence[str] = (),
        log_path: str | Path | None = None,
        threads: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.core = core
        self.threads = threads if threads is not None else (1 if core is not None else None)
        command = [sys.executable, "-m", "mmfusion", "serve", *models, "--port", str(self.port)]
        if self.threads is not None:
            command += ["--threads", str(self.threads)]
        command += list(extra_args)
        if core is not None:
            taskset = shutil.which("taskset")
            if taskset is None:
                raise FileNotFoundError("taskset not found (util-linux); it pins each replica to its core")
            command = [taskset, "-c", str(core), *command]
        self.command = command
        self.log_path = Path(log_path) if log_path is not None else None
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Replica:
        """Start the process (its output to log_path, else discarded); wait_ready() waits until it serves."""
        env = dict(os.environ)
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)  # torch's and OpenMP's pools, beside the backends' own
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        output = open(self.log_path, "ab") if self.log_path is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(self.command, stdout=output, stderr=subprocess.STDOUT, env=env)
        finally:
            if self.log_path is not None:
                output.close()
        return self

    def wait_ready(self, timeout: float = REPLICA_START_TIMEOUT_S) -> Replica:
        """Block until grpc.health.v1 answers SERVING; RuntimeError (with its log) if the process exits or is late."""
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    raise RuntimeError(f"replica {self.address} exited: {self.log_tail()}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"replica {self.address} not serving after {timeout} s: {self.log_tail()}")

    def log_tail(self, size: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-size:]

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the replica dies at once, as on a crash or an OOM kill (no grace for its calls)."""
        if self.running():
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = REPLICA_STOP_TIMEOUT_S) -> None:
        """SIGTERM (graceful: open calls finish within serve's --grace), then SIGKILL if it lingers."""
        if not self.running():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> Replica:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
