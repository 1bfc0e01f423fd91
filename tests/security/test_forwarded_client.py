"""Rate limits without auth key on the client a trusted proxy forwards (x-forwarded-for), never on the proxy."""

from __future__ import annotations

import grpc
import pytest

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.proto import inspection_pb2_grpc as pb_grpc
from mmfusion.security.limits import RateLimit
from mmfusion.security.network import TrustedProxies, is_loopback, peer_key
from mmfusion.security.tls import NginxFront, TlsFiles, channel_credentials, find_nginx, make_dev_certificates
from mmfusion.serving import build_server
from mmfusion.types import InputError
from tests.security.conftest import status_of

needs_nginx = pytest.mark.skipif(
    find_nginx() is None,
    reason="nginx is not installed (run `make system-deps` as root, or apt-get install nginx-light)",
)
ONE_CALL = RateLimit(rate=0.01, burst=1)  # one call per client, then RESOURCE_EXHAUSTED for a long while
FRONT_PEER = "ipv4:127.0.0.1:41234"  # how the nginx front looks to the server


def forwarded(*addresses: str, real_ip: str | None = None) -> tuple[tuple[str, str], ...]:
    metadata = [("x-forwarded-for", ", ".join(addresses))] if addresses else []
    return tuple(metadata + ([("x-real-ip", real_ip)] if real_ip else []))


def test_the_front_forwards_the_address_it_saw_not_the_one_a_client_claims():
    behind_front = TrustedProxies(front=True)
    # nginx appends the address it saw: the right-most entry; whatever the client sent stands left of it
    assert behind_front.client_key(FRONT_PEER, forwarded("6.6.6.6", "203.0.113.7")) == "ipv4:203.0.113.7"
    assert behind_front.client_key(FRONT_PEER, forwarded("203.0.113.7")) == "ipv4:203.0.113.7"
    assert behind_front.client_key(FRONT_PEER, forwarded(real_ip="198.51.100.9")) == "ipv4:198.51.100.9"
    assert behind_front.client_key(FRONT_PEER) == "ipv4:127.0.0.1"  # no header: the peer, as before
    assert behind_front.client_key(FRONT_PEER, forwarded("not-an-address")) == "ipv4:127.0.0.1"
    six = behind_front.client_key("ipv6:%5B::1%5D:5000", forwarded("2001:db8::7", "::ffff:192.0.2.1"))
    assert six == "ipv4:192.0.2.1"  # an IPv4-mapped address is the IPv4 client
    assert behind_front.client_key("ipv6:%5B::1%5D:5000", forwarded("2001:db8::7")) == "ipv6:[2001:db8::7]"


def test_headers_of_an_untrusted_peer_are_ignored():
    claimed = forwarded("203.0.113.7", real_ip="203.0.113.7")
    assert TrustedProxies().client_key(FRONT_PEER, claimed) == "ipv4:127.0.0.1"  # no front, no list: nobody
    assert TrustedProxies(front=True).client_key("ipv4:192.0.2.50:6000", claimed) == "ipv4:192.0.2.50"
    assert TrustedProxies(["10.0.0.0/8"]).client_key("ipv6:%5B2001:db8::9%5D:1", claimed) == "ipv6:[2001:db8::9]"
    assert peer_key("unix:/run/mmfusion.sock") == "unix"


def test_a_listed_proxy_chain_is_walked_to_the_first_untrusted_address():
    proxies = TrustedProxies(["10.0.0.0/8", "192.0.2.10"])
    peer = "ipv4:10.1.2.3:7000"  # a load balancer connects to the server directly
    assert proxies.client_key(peer, forwarded("6.6.6.6", "203.0.113.7", "192.0.2.10", "10.9.9.9")) == (
        "ipv4:203.0.113.7"
    )
    assert proxies.client_key(peer, forwarded("10.0.0.1", "10.0.0.2")) == "ipv4:10.0.0.1"  # all trusted: left-most
    with pytest.raises(InputError, match="--trusted-proxy 'lb.example': expected an IP address or network"):
        TrustedProxies(["lb.example"])


def test_loopback_hosts():
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["[::]", "::", "0.0.0.0", "192.0.2.1", "example.com", ""]))


def list_models(port: int, metadata, credentials: grpc.ChannelCredentials | None = None):
    """ListModels on 127.0.0.1:port; (status code, details)."""
    target = f"127.0.0.1:{port}"
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        stub = pb_grpc.InspectionStub(channel)
        return status_of(lambda: stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=10))


def test_each_forwarded_client_gets_its_own_bucket_behind_a_trusted_proxy():
    with build_server([], rate_limit=ONE_CALL, trusted_proxies=["127.0.0.1"]) as server:
        first = list_models(server.port, forwarded("203.0.113.7"))
        other = list_models(server.port, forwarded("198.51.100.9"))  # before: the same bucket as the first
        again = list_models(server.port, forwarded("203.0.113.7"))
    assert first == other == (grpc.StatusCode.OK, "")
    assert again[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "reached for ipv4:203.0.113.7;" in again[1]


def test_forwarded_headers_are_ignored_without_a_trusted_proxy():
    with build_server([], rate_limit=ONE_CALL) as server:
        assert list_models(server.port, forwarded("203.0.113.7"))[0] == grpc.StatusCode.OK
        code, details = list_models(server.port, forwarded("198.51.100.9"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "reached for ipv4:127.0.0.1;" in details


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_dev_certificates(tmp_path_factory.mktemp("certs"))


@needs_nginx
def test_through_the_front_the_client_address_nginx_saw_is_the_key(certs):
    tls = TlsFiles.checked(certs.server_cert, certs.server_key)
    ca = channel_credentials(certs.ca_cert)
    # the test client reaches nginx from 127.0.0.1; spoofed headers must not give it a fresh bucket
    with build_server([], rate_limit=ONE_CALL, tls=tls) as server:
        assert list_models(server.port, forwarded("203.0.113.7", real_ip="203.0.113.7"), ca)[0] == grpc.StatusCode.OK
        code, details = list_models(server.port, forwarded("198.51.100.9", real_ip="198.51.100.9"), ca)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "reached for ipv4:127.0.0.1;" in details


@needs_nginx
def test_through_the_front_a_listed_outer_proxy_forwards_each_client(certs):
    tls = TlsFiles.checked(certs.server_cert, certs.server_key)
    ca = channel_credentials(certs.ca_cert)
    # here the test client plays a load balancer on 127.0.0.1 in front of nginx, listed as trusted
    with build_server([], rate_limit=ONE_CALL, tls=tls, trusted_proxies=["127.0.0.1"]) as server:
        assert isinstance(server.front, NginxFront) and server.front.running()
        first = list_models(server.port, forwarded("203.0.113.7"), ca)
        other = list_models(server.port, forwarded("198.51.100.9"), ca)
        again = list_models(server.port, forwarded("203.0.113.7"), ca)
    assert first == other == (grpc.StatusCode.OK, "")
    assert again[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "reached for ipv4:203.0.113.7;" in again[1]
