"""TLS on real loopback servers: the TLS-1.3-only nginx front (alone and started by build_server), mutual TLS, certs."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
import subprocess
from contextlib import contextmanager
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mmfusion.client import image_message
from mmfusion.proto import inspection_pb2 as pb
from mmfusion.proto import inspection_pb2_grpc as pb_grpc
from mmfusion.security.tls import (
    NGINX_TEMPLATE,
    NginxFront,
    TlsFiles,
    channel_credentials,
    find_nginx,
    make_dev_certificates,
    render_nginx_config,
)
from mmfusion.serving import build_server
from mmfusion.types import InputError
from tests.test_pipeline import BLUE, RED, tiny_model

DEPLOY_TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "mmfusion-tls13.conf.template"
CALL_TIMEOUT_S = 20.0
needs_nginx = pytest.mark.skipif(
    find_nginx() is None,
    reason="nginx is not installed (run `make system-deps` as root, or apt-get install nginx-light)",
)
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")


def png(image) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


@contextmanager
def inspection_stub(port: int, credentials: grpc.ChannelCredentials):
    """An Inspection stub on a TLS channel to 127.0.0.1:port (the dev server cert names 127.0.0.1)."""
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        yield pb_grpc.InspectionStub(channel)


def inspect_red(stub) -> pb.InspectionResult:
    request = pb.InspectRequest(model="tiny", image=image_message(png(RED + 5)))
    return stub.Inspect(request, timeout=CALL_TIMEOUT_S)


def handshake(port: int, ca: Path, maximum: ssl.TLSVersion | None = None) -> str:
    """The TLS version Python's ssl negotiates with 127.0.0.1:port (ALPN h2, as gRPC clients offer)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    if maximum is not None:
        context.maximum_version = maximum
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.version()


def s_client(port: int, ca: Path, version_flag: str) -> subprocess.CompletedProcess:
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", version_flag, "-CAfile", str(ca)]
    return subprocess.run(command, input=b"", capture_output=True, timeout=20)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_dev_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory):
    """Certificates from a second, unrelated dev CA."""
    return make_dev_certificates(tmp_path_factory.mktemp("other-certs"), client_name="intruder")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def server(model):
    """The real service in plaintext on loopback: what the nginx front forwards to."""
    with build_server([model], port=0) as running:
        yield running


@pytest.fixture(scope="module")
def tls_server(model, certs):
    """The service with TLS (build_server's tls): gRPC on a loopback port, its own nginx front on `port`."""
    if find_nginx() is None:
        pytest.skip("nginx is not installed (run `make system-deps` as root, or apt-get install nginx-light)")
    with build_server([model], port=0, tls=TlsFiles.checked(certs.server_cert, certs.server_key)) as running:
        yield running


@pytest.fixture(scope="module")
def mtls_server(model, certs):
    """The service with mutual TLS through its own front: clients need a certificate the CA signed."""
    if find_nginx() is None:
        pytest.skip("nginx is not installed (run `make system-deps` as root, or apt-get install nginx-light)")
    tls = TlsFiles.checked(certs.server_cert, certs.server_key, certs.ca_cert)
    with build_server([model], port=0, tls=tls) as running:
        yield running


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on port (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # little-endian words
                ip = ipaddress.ip_address(words)
                found.add(str(getattr(ip, "ipv4_mapped", None) or ip))  # grpc binds IPv4 as ::ffff:a.b.c.d
    return found


@pytest.fixture(scope="module")
def front(server, certs, tmp_path_factory):
    with NginxFront(
        0, server.port, certs.server_cert, certs.server_key, workdir=tmp_path_factory.mktemp("nginx")
    ) as nginx:
        yield nginx


@pytest.fixture(scope="module")
def mtls_front(server, certs, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("nginx-mtls")
    with NginxFront(0, server.port, certs.server_cert, certs.server_key, certs.ca_cert, workdir) as nginx:
        yield nginx


def test_deploy_template_is_the_rendered_template():
    lines = DEPLOY_TEMPLATE.read_text().splitlines(keepends=True)
    body = "".join(line for line in lines if not line.startswith("#"))
    assert lines[0].startswith("# mmfusion TLS 1.3 front") and body == NGINX_TEMPLATE


def test_render_nginx_config_is_tls13_only_and_keeps_files_in_workdir(certs, tmp_path):
    config = render_nginx_config(8443, 50051, certs.server_cert, certs.server_key, workdir=tmp_path / "front")
    text = config.read_text()
    assert config == tmp_path / "front" / "nginx.conf"
    assert [line.strip() for line in text.splitlines() if "ssl_protocols" in line] == ["ssl_protocols TLSv1.3;"]
    assert "listen 127.0.0.1:8443 ssl http2;" in text and "grpc_pass grpc://127.0.0.1:50051;" in text
    assert "ssl_verify_client" not in text and "${" not in text
    for directive in ("pid", "error_log", "access_log", "client_body_temp_path", "proxy_temp_path"):
        line = next(line.strip() for line in text.splitlines() if line.strip().startswith(directive + " "))
        assert f'"{(tmp_path / "front").resolve()}/' in line, line
    mutual = render_nginx_config(8443, 50051, certs.server_cert, certs.server_key, certs.ca_cert, tmp_path / "m")
    assert f'ssl_client_certificate "{certs.ca_cert.resolve()}";' in mutual.read_text()
    assert "ssl_verify_client on;" in mutual.read_text()


def test_bad_inputs_name_the_flag(certs, tmp_path):
    with pytest.raises(InputError, match="listen_port 0: expected a TCP port"):
        render_nginx_config(0, 50051, certs.server_cert, certs.server_key, workdir=tmp_path)
    with pytest.raises(InputError, match="--tls-key .*missing.key: cannot read"):
        TlsFiles.checked(certs.server_cert, tmp_path / "missing.key")
    (tmp_path / "notes.txt").write_text("not a certificate")
    with pytest.raises(InputError, match="--client-ca .*notes.txt: not a PEM file"):
        render_nginx_config(8443, 50051, certs.server_cert, certs.server_key, tmp_path / "notes.txt", tmp_path)
    with pytest.raises(InputError, match="workdir .*: contains one of"):
        render_nginx_config(8443, 50051, certs.server_cert, certs.server_key, workdir=tmp_path / "a;b")
    with pytest.raises(InputError, match="give both or neither"):
        channel_credentials(certs.ca_cert, cert=certs.client_cert)


def test_dev_certificates_chain_to_their_ca(certs):
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    client = x509.load_pem_x509_certificate(certs.client_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf, usage in ((server, ExtendedKeyUsageOID.SERVER_AUTH), (client, ExtendedKeyUsageOID.CLIENT_AUTH)):
        assert leaf.issuer == ca.subject
        ca.public_key().verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm))
        assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "mmfusion-dev-client"
    for key in (certs.ca_key, certs.server_key, certs.client_key):
        assert key.stat().st_mode & 0o777 == 0o600


@needs_nginx
def test_inspect_through_the_tls13_front(front, certs):
    with inspection_stub(front.port, channel_credentials(certs.ca_cert)) as stub:
        red = inspect_red(stub)
        blue = stub.Inspect(pb.InspectRequest(model="tiny", image=image_message(png(BLUE + 5))), timeout=CALL_TIMEOUT_S)
    assert (red.verdict, blue.verdict) == ("red", "blue") and red.model == "tiny"
    assert set(red.scores) == {"red", "blue"}
    assert handshake(front.port, certs.ca_cert) == "TLSv1.3"


@needs_nginx
def test_front_refuses_a_client_that_does_not_trust_the_server(front, other_certs):
    with inspection_stub(front.port, channel_credentials(other_certs.ca_cert)) as stub:
        with pytest.raises(grpc.RpcError) as failure:
            inspect_red(stub)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


@needs_nginx
@needs_openssl
def test_openssl_negotiates_tls13_and_tls12_is_refused(front, certs):
    modern = s_client(front.port, certs.ca_cert, "-tls1_3")
    assert modern.returncode == 0, modern.stderr.decode()
    assert "New, TLSv1.3, Cipher is TLS_" in modern.stdout.decode()
    assert "Verify return code: 0 (ok)" in modern.stdout.decode()
    legacy = s_client(front.port, certs.ca_cert, "-tls1_2")
    assert legacy.returncode != 0
    assert "New, (NONE), Cipher is (NONE)" in legacy.stdout.decode()
    assert "alert protocol version" in legacy.stderr.decode()
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
        handshake(front.port, certs.ca_cert, maximum=ssl.TLSVersion.TLSv1_2)


@needs_nginx
def test_mutual_tls_front_requires_a_client_cert_from_the_ca(mtls_front, certs, other_certs):
    with inspection_stub(mtls_front.port, channel_credentials(certs.ca_cert)) as stub:
        with pytest.raises(grpc.RpcError) as anonymous:
            inspect_red(stub)
    foreign = channel_credentials(certs.ca_cert, other_certs.client_cert, other_certs.client_key)
    with inspection_stub(mtls_front.port, foreign) as stub:
        with pytest.raises(grpc.RpcError) as intruder:
            inspect_red(stub)
    assert anonymous.value.code() != grpc.StatusCode.OK and intruder.value.code() != grpc.StatusCode.OK
    with inspection_stub(
        mtls_front.port, channel_credentials(certs.ca_cert, certs.client_cert, certs.client_key)
    ) as stub:
        assert inspect_red(stub).verdict == "red"


@needs_nginx
def test_reload_serves_a_rotated_certificate(server, tmp_path):
    old = make_dev_certificates(tmp_path / "old")
    new = make_dev_certificates(tmp_path / "new")
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(old.server_cert, live_cert)
    shutil.copy(old.server_key, live_key)
    with NginxFront(0, server.port, live_cert, live_key, workdir=tmp_path / "front") as nginx:
        with inspection_stub(nginx.port, channel_credentials(old.ca_cert)) as stub:
            assert inspect_red(stub).verdict == "red"
        shutil.copy(new.server_cert, live_cert)
        shutil.copy(new.server_key, live_key)
        workers_before = nginx.workers()
        nginx.reload()  # returns once the old workers are gone
        assert workers_before and nginx.workers() and not nginx.workers() & workers_before
        assert handshake(nginx.port, new.ca_cert) == "TLSv1.3"
        with inspection_stub(nginx.port, channel_credentials(new.ca_cert)) as stub:
            assert inspect_red(stub).verdict == "red"
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(nginx.port, old.ca_cert)


@needs_nginx
def test_front_that_cannot_listen_reports_nginx_error(server, certs, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        front = NginxFront(taken.getsockname()[1], server.port, certs.server_cert, certs.server_key, workdir=tmp_path)
        with pytest.raises(RuntimeError, match="nginx exited with 1: .*bind\\(\\) to 127.0.0.1:.* failed"):
            try:
                front.start()
            finally:
                front.stop()


def test_tls_server_is_tls13_only_and_grpc_stays_on_loopback(tls_server, certs):
    assert tls_server.front is not None and tls_server.port == tls_server.front.port != tls_server.grpc_port
    assert listening_addresses(tls_server.grpc_port) == {"127.0.0.1"}  # plaintext gRPC only behind the front
    with inspection_stub(tls_server.port, channel_credentials(certs.ca_cert)) as stub:
        assert inspect_red(stub).verdict == "red"
    assert handshake(tls_server.port, certs.ca_cert) == "TLSv1.3"
    # grpcio's own TLS would accept this client (it has no minimum version); the front refuses it
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
        handshake(tls_server.port, certs.ca_cert, maximum=ssl.TLSVersion.TLSv1_2)


@needs_openssl
def test_tls_server_refuses_openssl_tls12(tls_server, certs):
    legacy = s_client(tls_server.port, certs.ca_cert, "-tls1_2")
    assert legacy.returncode != 0 and "alert protocol version" in legacy.stderr.decode()
    assert s_client(tls_server.port, certs.ca_cert, "-tls1_3").returncode == 0


def test_tls_server_stops_its_front(model, certs):
    if find_nginx() is None:
        pytest.skip("nginx is not installed (run `make system-deps` as root, or apt-get install nginx-light)")
    server = build_server([model], port=0, tls=TlsFiles.checked(certs.server_cert, certs.server_key)).start()
    front = server.front
    assert front.running() and listening_addresses(server.port)
    server.stop(grace=0)
    assert not front.running() and not listening_addresses(server.port)


def test_mutual_tls_server_requires_a_client_cert(mtls_server, certs, other_certs):
    with inspection_stub(mtls_server.port, channel_credentials(certs.ca_cert)) as stub:
        with pytest.raises(grpc.RpcError) as anonymous:
            inspect_red(stub)
    foreign = channel_credentials(certs.ca_cert, other_certs.client_cert, other_certs.client_key)
    with inspection_stub(mtls_server.port, foreign) as stub:
        with pytest.raises(grpc.RpcError) as intruder:
            inspect_red(stub)
    assert anonymous.value.code() != grpc.StatusCode.OK and intruder.value.code() != grpc.StatusCode.OK
    with inspection_stub(
        mtls_server.port, channel_credentials(certs.ca_cert, certs.client_cert, certs.client_key)
    ) as stub:
        assert inspect_red(stub).verdict == "red"


def test_tls_without_nginx_is_refused_not_served_in_process(model, certs, monkeypatch):
    from mmfusion.serving import server as server_module

    monkeypatch.setattr(server_module, "find_nginx", lambda: None)
    with pytest.raises(OSError, match="TLS needs nginx for its TLS-1.3-only front .*apt-get install nginx-light"):
        build_server([model], port=0, tls=TlsFiles.checked(certs.server_cert, certs.server_key))


def test_front_config_listens_on_ipv6_wildcards_and_forwards_the_client(certs, tmp_path):
    text = render_nginx_config(8443, 50051, certs.server_cert, certs.server_key, None, tmp_path, "[::]").read_text()
    assert "listen [::]:8443 ssl http2 ipv6only=off;" in text
    assert "grpc_set_header X-Real-IP $remote_addr;" in text
    assert "grpc_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in text
    assert (
        "listen [::1]:8443 ssl http2;"
        in render_nginx_config(8443, 50051, certs.server_cert, certs.server_key, None, tmp_path, "::1").read_text()
    )
    injected = "127.0.0.1:1; include /etc/passwd"
    with pytest.raises(InputError, match=f"--host '{injected}': expected an IP address"):
        render_nginx_config(8443, 50051, certs.server_cert, certs.server_key, None, tmp_path, injected)


def test_tls_files_refuse_a_key_of_another_cert(certs, other_certs):
    with pytest.raises(InputError, match="--tls-key: does not belong to the first certificate in --tls-cert"):
        TlsFiles.checked(certs.server_cert, other_certs.server_key)


@needs_nginx
def test_streams_outlast_the_front_body_limit_which_still_bounds_unary_calls(server, certs, tmp_path):
    """nginx counts a whole HTTP/2 call's request body against client_max_body_size: a camera stream through the
    front must not end when its frames add up to the limit, while one oversized Inspect is still refused."""
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    frame_bytes = png(noise)  # about 49 KB: 12 frames are about 6x the limit below
    limit = 100_000
    with NginxFront(
        0, server.port, certs.server_cert, certs.server_key, workdir=tmp_path, max_body_bytes=limit
    ) as nginx:
        with inspection_stub(nginx.port, channel_credentials(certs.ca_cert)) as stub:
            frames = [
                pb.Frame(
                    stream_id="line-1",
                    sequence_number=n,
                    image=image_message(frame_bytes),
                    model="tiny" if n == 1 else "",
                )
                for n in range(1, 13)
            ]
            answers = list(stub.StreamInspect(iter(frames), timeout=CALL_TIMEOUT_S))
            large = pb.InspectRequest(model="tiny", image=image_message(png(np.tile(noise, (2, 2, 1)))))
            with pytest.raises(grpc.RpcError) as refused:
                stub.Inspect(large, timeout=CALL_TIMEOUT_S)
    assert len(frame_bytes) * len(frames) > 5 * limit
    answered = [answer.sequence_number for answer in answers]
    skipped = [n for answer in answers for n in answer.skipped_sequence_numbers]  # the server keeps the newest
    assert answered[-1] == 12 and sorted(answered + skipped) == list(range(1, 13))
    assert not any(answer.HasField("error") for answer in answers)
    assert refused.value.code() != grpc.StatusCode.OK and len(large.image.data) > limit
