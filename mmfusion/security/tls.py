"""Transport security: the TLS-1.3-only nginx front, its certificate files, client credentials, dev certificates."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from mmfusion.security.files import check_private
from mmfusion.security.network import bare_host
from mmfusion.types import InputError

DEV_CERTIFICATE_DAYS = 30
NGINX_START_TIMEOUT_S = 10.0
NGINX_STOP_TIMEOUT_S = 5.0
# Kept identical to deploy/nginx/mmfusion-tls13.conf.template below its comment header (a test checks it).
NGINX_TEMPLATE = """\
worker_processes 1;
pid "${workdir}/nginx.pid";
error_log "${workdir}/error.log" warn;

events {
    worker_connections 1024;
}

http {
    access_log "${workdir}/access.log";
    client_body_temp_path "${workdir}/client_body";
    proxy_temp_path "${workdir}/proxy";
    fastcgi_temp_path "${workdir}/fastcgi";
    uwsgi_temp_path "${workdir}/uwsgi";
    scgi_temp_path "${workdir}/scgi";
    client_max_body_size ${max_body_bytes};

    server {
        listen ${listen_address}:${listen_port} ssl http2${listen_options};
        ssl_certificate "${cert}";
        ssl_certificate_key "${key}";
        ssl_protocols TLSv1.3;
        ssl_session_tickets off;
${client_auth}
        location / {
            grpc_pass grpc://127.0.0.1:${upstream_port};
            grpc_set_header X-Real-IP $remote_addr;
            grpc_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            grpc_read_timeout 1h;
            grpc_send_timeout 1h;
        }

        # client_max_body_size counts a whole HTTP/2 call's request body: a stream's frames would reach it
        # within minutes (nginx answers 413), so streams (StreamInspect, StreamCall, ModelStreamInfer)
        # have no limit here; serve checks each message's size.
        location ~ ^/(mmfusion\\.v1\\.Inspection/Stream|inference\\.GRPCInferenceService/ModelStreamInfer) {
            client_max_body_size 0;
            grpc_pass grpc://127.0.0.1:${upstream_port};
            grpc_set_header X-Real-IP $remote_addr;
            grpc_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            grpc_read_timeout 1h;
            grpc_send_timeout 1h;
        }
    }
}
"""
CLIENT_AUTH_BLOCK = """\
        ssl_client_certificate "${client_ca}";
        ssl_verify_client on;
        ssl_verify_depth 2;
"""
HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


class _Placeholders(string.Template):
    """string.Template that fills only ${name}: nginx's own $variables pass through untouched."""

    pattern = r"\$(?:(?P<escaped>(?!))|(?P<named>(?!))|\{(?P<braced>[a-z_]+)\}|(?P<invalid>(?!)))"


def _read_pem(path: str | Path, field: str) -> bytes:
    """The bytes of a PEM file, or InputError naming the flag when it is missing, not PEM, or an exposed key."""
    path = Path(path)
    if field.endswith("-key"):
        check_private(path, field)  # a private key that other users can read or replace is refused
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"{field} {path}: cannot read ({error.strerror}); expected a PEM file") from None
    if b"-----BEGIN " not in data:
        raise InputError(f"{field} {path}: not a PEM file; expected '-----BEGIN ...' blocks")
    return data


def _check_key_matches(cert_pem: bytes, key_pem: bytes) -> None:
    """InputError unless the private key belongs to the first certificate of the chain."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise InputError(f"--tls-cert/--tls-key: cannot parse ({error}); expected an unencrypted PEM pair") from None
    public = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(*public) != private_key.public_key().public_bytes(*public):
        raise InputError("--tls-key: does not belong to the first certificate in --tls-cert; expected its key")


@dataclass(frozen=True)
class TlsFiles:
    """The server's certificate chain, its private key and an optional client CA (PEM), served by the nginx front."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @classmethod
    def checked(cls, cert: str | Path, key: str | Path, client_ca: str | Path | None = None) -> TlsFiles:
        """The files, once they read as PEM and the key belongs to the first certificate; InputError naming the flag."""
        cert_pem, key_pem = _read_pem(cert, "--tls-cert"), _read_pem(key, "--tls-key")
        _check_key_matches(cert_pem, key_pem)
        if client_ca is not None:
            _read_pem(client_ca, "--client-ca")
        return cls(Path(cert), Path(key), Path(client_ca) if client_ca is not None else None)


def channel_credentials(
    ca: str | Path, cert: str | Path | None = None, key: str | Path | None = None
) -> grpc.ChannelCredentials:
    """Client-side credentials: trust `ca`; present `cert`/`key` for mutual TLS when given."""
    if (cert is None) != (key is None):
        raise InputError("client cert and key: give both or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(ca, "--tls-ca"),
        private_key=_read_pem(key, "--tls-client-key") if key is not None else None,
        certificate_chain=_read_pem(cert, "--tls-client-cert") if cert is not None else None,
    )


@dataclass(frozen=True)
class DevCertificates:
    """PEM files of a self-signed dev CA and the server and client certificates it signed."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _subject_alt_names(hostnames: Sequence[str]):
    """DNS names and IP addresses as x509 SubjectAlternativeName entries."""
    from cryptography import x509

    names = []
    for hostname in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(hostname)))
        except ValueError:
            names.append(x509.DNSName(hostname))
    return names


def _write_pair(folder: Path, stem: str, certificate, private_key) -> tuple[Path, Path]:
    """Write stem.pem and stem.key (owner-only) and return their paths."""
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_bytes = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(key_bytes)
    return cert_path, key_path


def make_dev_certificates(
    folder: str | Path,
    hostnames: Sequence[str] = ("localhost", "127.0.0.1"),
    client_name: str = "mmfusion-dev-client",
    days: int = DEV_CERTIFICATE_DAYS,
) -> DevCertificates:
    """Write a self-signed CA, a server cert for `hostnames` and a client cert (CN=client_name); dev/tests only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hostnames:
        raise InputError("hostnames: empty; expected at least one DNS name or IP address for the server cert")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    def name(common_name: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mmfusion dev"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )

    def issue(subject: x509.Name, key, issuer: x509.Name, issuer_key, is_ca: bool, extensions) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(issuer_key, hashes.SHA256())

    def usage(cert_sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=not cert_sign,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=cert_sign,
            crl_sign=cert_sign,
            encipher_only=False,
            decipher_only=False,
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("mmfusion dev CA")
    ca_cert = issue(ca_name, ca_key, ca_name, ca_key, True, [(usage(True), True)])
    authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_extensions = [
        (usage(False), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectAlternativeName(_subject_alt_names(hostnames)), False),
        (authority, False),
    ]
    server_cert = issue(name(hostnames[0]), server_key, ca_name, ca_key, False, server_extensions)

    client_key = ec.generate_private_key(ec.SECP256R1())
    client_extensions = [
        (usage(False), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        (authority, False),
    ]
    client_cert = issue(name(client_name), client_key, ca_name, ca_key, False, client_extensions)

    ca_paths = _write_pair(folder, "ca", ca_cert, ca_key)
    server_paths = _write_pair(folder, "server", server_cert, server_key)
    client_paths = _write_pair(folder, "client", client_cert, client_key)
    return DevCertificates(*ca_paths, *server_paths, *client_paths)


def listen_host(address: str) -> str:
    """An address as nginx's listen wants it ('::' -> '[::]'); InputError unless it is an IP address or host name."""
    host = bare_host(address.strip())
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if HOST_NAME.fullmatch(host):
            return host
        raise InputError(f"--host {address!r}: expected an IP address (127.0.0.1, [::]) or a host name") from None
    return f"[{ip}]" if ip.version == 6 else str(ip)


def render_nginx_config(
    listen_port: int,
    upstream_port: int,
    cert: str | Path,
    key: str | Path,
    client_ca: str | Path | None = None,
    workdir: str | Path | None = None,
    listen_address: str = "127.0.0.1",
    max_body_bytes: int = 64 * 1024 * 1024,
) -> Path:
    """Write workdir/nginx.conf: TLS 1.3 only on listen_address:listen_port, gRPC to 127.0.0.1:upstream_port."""
    for field, port in (("listen_port", listen_port), ("upstream_port", upstream_port)):
        if not 0 < port < 65536:
            raise InputError(f"{field} {port}: expected a TCP port in 1..65535")
    files = {"--tls-cert": cert, "--tls-key": key} | ({"--client-ca": client_ca} if client_ca is not None else {})
    for field, path in files.items():
        _read_pem(path, field)  # fail here with the flag's name, not in nginx's error log
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="mmfusion-nginx-"))
    for field, path in [*files.items(), ("workdir", workdir)]:
        if any(character in str(path) for character in '"\\;{}$'):
            raise InputError(f'{field} {path}: contains one of " \\ ; {{ }} $; expected a plain path nginx can quote')
    host = listen_host(listen_address)
    workdir.mkdir(parents=True, exist_ok=True)
    client_auth = ""
    if client_ca is not None:
        client_auth = _Placeholders(CLIENT_AUTH_BLOCK).substitute(client_ca=Path(client_ca).resolve())
    config = _Placeholders(NGINX_TEMPLATE).substitute(
        workdir=workdir.resolve(),
        listen_address=host,
        listen_options=" ipv6only=off" if host == "[::]" else "",  # [::] takes IPv4 too, as gRPC's [::] does
        listen_port=listen_port,
        upstream_port=upstream_port,
        cert=Path(cert).resolve(),
        key=Path(key).resolve(),
        client_auth=client_auth,
        max_body_bytes=max_body_bytes,
    )
    config_path = workdir / "nginx.conf"
    config_path.write_text(config)
    return config_path


def find_nginx() -> str | None:
    """Path of the nginx binary (PATH, then the sbin folders a non-root PATH often lacks), or None."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on host (nginx cannot pick one itself); IPv6 hosts with or without brackets."""
    host = bare_host(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def dial_host(listen_address: str) -> str:
    """Where to connect to reach a listener on listen_address: loopback for the wildcards, else the host itself."""
    host = bare_host(listen_address)
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


class NginxFront:
    """nginx as a child process terminating TLS 1.3 (optionally mutual) in front of a local gRPC port."""

    def __init__(
        self,
        listen_port: int,
        upstream_port: int,
        cert: str | Path,
        key: str | Path,
        client_ca: str | Path | None = None,
        workdir: str | Path | None = None,
        listen_address: str = "127.0.0.1",
        nginx: str | None = None,
        max_body_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._prepare(listen_port, workdir, listen_address, nginx, "mmfusion-nginx-")
        self.config = render_nginx_config(
            self.port, upstream_port, cert, key, client_ca, self.workdir, self.listen_address, max_body_bytes
        )
        self.process: subprocess.Popen | None = None

    def _prepare(
        self, listen_port: int, workdir: str | Path | None, listen_address: str, nginx: str | None, prefix: str
    ) -> None:
        """Listen address and port (0: a free one), the nginx binary (refused when missing) and the work dir."""
        self.listen_address = listen_host(listen_address)
        self.port = listen_port or free_port(self.listen_address)
        self.nginx = nginx or find_nginx()
        if self.nginx is None:
            raise FileNotFoundError(
                "nginx not found; install it (Debian: apt-get install nginx-light, or make system-deps)"
            )
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix=prefix))

    def command(self) -> list[str]:
        """The nginx command line: foreground, prefix and error log inside workdir."""
        error_log = str(self.workdir.resolve() / "error.log")
        return [
            self.nginx,
            "-p",
            str(self.workdir.resolve()),
            "-e",
            error_log,
            "-c",
            str(self.config.resolve()),
            "-g",
            "daemon off;",
        ]

    def error_log(self) -> str:
        """What nginx wrote to its error log and stderr so far."""
        paths = (self.workdir / "error.log", self.workdir / "stderr.log")
        return "".join(path.read_text(errors="replace") for path in paths if path.exists())

    def start(self, timeout: float = NGINX_START_TIMEOUT_S) -> NginxFront:
        """Start nginx and wait until it accepts connections; RuntimeError with its log if it does not."""
        pid_file = self.workdir / "nginx.pid"
        pid_file.unlink(missing_ok=True)
        # stderr goes to a file, so a chatty nginx never blocks on a full pipe
        with open(self.workdir / "stderr.log", "wb") as stderr:
            self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}: {self.error_log()}".strip())
            if self._listening(pid_file):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"nginx did not listen on {self.listen_address}:{self.port} within {timeout}s: {self.error_log()}"
        )

    def _listening(self, pid_file: Path) -> bool:
        """nginx wrote its pid (it does so once its sockets are bound) and the port accepts connections."""
        if not pid_file.exists() or pid_file.read_text().strip() != str(self.process.pid):
            return False  # the port alone may be someone else's socket while nginx still retries bind()
        try:
            with socket.create_connection((dial_host(self.listen_address), self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def running(self) -> bool:
        """Whether the nginx master process is alive."""
        return self.process is not None and self.process.poll() is None

    def reload(self, timeout: float = NGINX_STOP_TIMEOUT_S) -> None:
        """Re-read the config and the cert/key files (SIGHUP) and wait until only new workers accept."""
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError("nginx is not running; start() it first")
        old_workers = self.workers()
        self.process.send_signal(signal.SIGHUP)
        # old workers keep accepting until the master tells them to quit; wait for them so that every
        # new connection after reload() returns gets the new certificate (open connections may keep one longer)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.workers()
            if current and not current & old_workers:
                return
            time.sleep(0.05)

    def workers(self) -> set[int]:
        """Process ids of the master's current worker processes (empty where /proc is unavailable)."""
        if self.process is None:
            return set()
        workers = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
            except (OSError, IndexError):
                continue  # the process exited while we looked
            if fields[0] != "Z" and int(fields[1]) == self.process.pid:
                workers.add(int(stat.parent.name))
        return workers

    def stop(self) -> None:
        """Fast shutdown (SIGTERM), then SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(NGINX_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> NginxFront:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
