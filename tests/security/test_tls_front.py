"""`mmfusion serve`: TLS through its own TLS-1.3 nginx front, no exposed plaintext without --insecure, metrics host."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mmfusion.security.tls import TlsFiles, channel_credentials, find_nginx, free_port, make_dev_certificates
from tests.security.conftest import API_KEYS, write_keys
from tests.security.test_tls import handshake

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_dev_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def served(monkeypatch):
    """Run `mmfusion ARGV` with serve() replaced: (exit code, the options serve got or None); stderr via capsys."""
    from mmfusion.cli.main import main
    from mmfusion.serving import server as server_module

    calls = []
    monkeypatch.setattr(server_module, "serve", lambda *args, **kwargs: calls.append((args, kwargs)) or 0)

    def run(argv: list[str]):
        before = len(calls)
        code = main(["serve", *argv])
        return code, (calls[-1] if len(calls) > before else None)

    return run


@pytest.mark.parametrize(
    ("flags", "missing"),
    [
        ([], "TLS (--tls-cert/--tls-key) and authentication (--api-keys, a JWT flag or --client-ca)"),
        (["--api-keys", "KEYS"], "TLS (--tls-cert/--tls-key)"),
        (["--tls-cert", "CERT", "--tls-key", "KEY"], "authentication (--api-keys, a JWT flag or --client-ca)"),
    ],
)
@pytest.mark.parametrize("host", ["[::]", "0.0.0.0", "192.0.2.10"])
def test_a_non_loopback_host_needs_tls_and_auth(served, capsys, certs, tmp_path, host, flags, missing):
    files = {"KEYS": str(write_keys(tmp_path / "keys.yaml", API_KEYS)), "CERT": str(certs.server_cert)}
    files["KEY"] = str(certs.server_key)
    code, call = served(["--host", host, *[files.get(flag, flag) for flag in flags]])
    err = capsys.readouterr().err
    assert code == 2 and call is None
    assert err == f"mmfusion: error: --host {host} is not loopback: it needs {missing}; or pass --insecure to " + (
        "serve it anyway\n"
    )


def test_insecure_serves_a_wide_host_with_a_warning_and_loopback_needs_nothing(served, capsys):
    code, (args, options) = served(["--host", "[::]", "--insecure"])
    err = capsys.readouterr().err
    assert code == 0 and options["host"] == "[::]" and options["tls"] is None
    assert "WARNING: --insecure: --host [::] is not loopback" in err and err.count("\n") == 1
    code, (args, options) = served(["--host", "127.0.0.1"])
    assert code == 0 and capsys.readouterr().err == ""


def test_tls_with_auth_or_mutual_tls_may_listen_widely(served, certs, tmp_path, capsys):
    keys = str(write_keys(tmp_path / "keys.yaml", API_KEYS))
    tls = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    code, (_, options) = served(["--host", "[::]", *tls, "--api-keys", keys, "--trusted-proxy", "10.0.0.0/8"])
    assert code == 0 and options["tls"] == TlsFiles(certs.server_cert, certs.server_key)
    assert options["trusted_proxies"] == ("10.0.0.0/8",) and "server_credentials" not in options
    code, (_, options) = served(["--host", "0.0.0.0", *tls, "--client-ca", str(certs.ca_cert)])
    assert code == 0 and options["tls"].client_ca == certs.ca_cert
    assert capsys.readouterr().err == ""


def test_metrics_have_their_own_loopback_host(served, capsys):
    code, (_, options) = served(["--metrics-port", "9100"])
    assert code == 0 and options["metrics_host"] == "127.0.0.1"
    code, call = served(["--metrics-port", "9100", "--metrics-host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert code == 2 and call is None and "--metrics-host 0.0.0.0 is not loopback: /metrics has no TLS" in err
    code, (_, options) = served(["--metrics-port", "9100", "--metrics-host", "0.0.0.0", "--insecure"])
    assert code == 0 and options["metrics_host"] == "0.0.0.0"


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Serving:
    """`python -m mmfusion serve ...` as a child process, its output lines read in a thread."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mmfusion", "serve", *argv],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)

    def expect(self, text: str, timeout: float = START_TIMEOUT_S) -> str:
        """The next output line containing text; fails with what was printed when none comes in time."""
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in {timeout}s: {''.join(seen)}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed (make system-deps, or apt-get nginx-light)")
def test_serve_with_tls_runs_a_tls13_front_reloads_it_on_sighup_and_stops_it(certs, tmp_path):
    new = make_dev_certificates(tmp_path / "new")
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(certs.server_cert, cert)
    shutil.copy(certs.server_key, key)
    port = free_port()
    serving = Serving(["--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key)])
    try:
        line = serving.expect("mmfusion.serving.server: serving ")
        assert f"on 127.0.0.1:{port} (TLS 1.3 only, nginx front; gRPC on 127.0.0.1:" in line
        grpc_port = int(line.rsplit(":", 1)[1].rstrip(")\n"))
        assert handshake(port, certs.ca_cert) == "TLSv1.3"
        with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
            handshake(port, certs.ca_cert, maximum=ssl.TLSVersion.TLSv1_2)
        with grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(certs.ca_cert)) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        shutil.copy(new.server_cert, cert)
        shutil.copy(new.server_key, key)
        serving.process.send_signal(signal.SIGHUP)
        serving.expect("the TLS front re-read its certificate files", timeout=20)
        assert handshake(port, new.ca_cert) == "TLSv1.3"
        serving.process.send_signal(signal.SIGTERM)
        serving.expect("mmfusion.serving.server: server stopped", timeout=30)
        assert serving.process.wait(timeout=20) == 0
        assert not accepts(port) and not accepts(grpc_port)  # nginx stopped with the server
    finally:
        serving.close()
