"""Addresses: loopback hosts, gRPC peer strings, and the client address a trusted proxy forwards."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import unquote

from mmfusion.types import InputError

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")
FORWARDED_FOR_KEY = "x-forwarded-for"
REAL_IP_KEY = "x-real-ip"


def bare_host(host: str) -> str:
    """A host without the brackets of an IPv6 literal ('[::1]' -> '::1')."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(host: str) -> bool:
    """Whether a listen host reaches this machine only: 'localhost', 127.0.0.0/8 or ::1 (wildcards are not)."""
    host = bare_host(host.strip())
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a DNS name may resolve to anything


def parse_ip(text: str) -> IpAddress | None:
    """An IP address (IPv4-mapped IPv6 as IPv4, brackets and a zone allowed); None when text is not one."""
    try:
        address = ipaddress.ip_address(bare_host(text.strip()).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def peer_address(peer: str) -> IpAddress | None:
    """The IP address of a gRPC peer ('ipv4:1.2.3.4:5', 'ipv6:%5B::1%5D:5'); None for unix sockets and the like."""
    scheme, _, rest = peer.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return None
    return parse_ip(unquote(rest).rpartition(":")[0])


def address_key(address: IpAddress) -> str:
    """The limit key of an address, spelt like a gRPC peer's host: 'ipv4:1.2.3.4' or 'ipv6:[2001:db8::1]'."""
    return f"ipv4:{address}" if address.version == 4 else f"ipv6:[{address}]"


def peer_key(peer: str) -> str:
    """The limit key of a gRPC peer: its host without the port (the peer string itself when it has no IP)."""
    address = peer_address(peer)
    return address_key(address) if address is not None else peer.rpartition(":")[0] or peer


def parse_networks(specs: Iterable[str], field: str = "--trusted-proxy") -> tuple[IpNetwork, ...]:
    """IP networks from addresses or CIDRs ('10.0.0.0/8', '::1'); InputError naming the bad one."""
    networks = []
    for spec in specs:
        try:
            networks.append(ipaddress.ip_network(bare_host(spec.strip()), strict=False))
        except ValueError:
            example = "e.g. 10.0.0.5 or 10.0.0.0/8"
            raise InputError(f"{field} {spec!r}: expected an IP address or network, {example}") from None
    return tuple(networks)


class TrustedProxies:
    """Peers whose forwarded-client headers are believed: listed proxies, plus loopback behind serve's own front.

    `proxies` (--trusted-proxy): load balancers or proxies that connect to the server, or that may
    appear in x-forwarded-for before the client; `front`: the server sits behind the nginx front that
    serve started, which connects from loopback. The client is the right-most x-forwarded-for entry
    that is not a listed proxy (nginx appends the address it saw, so a client cannot choose it), else
    x-real-ip, else the peer itself. Headers from any other peer are ignored.
    """

    def __init__(self, proxies: Iterable[str] = (), front: bool = False) -> None:
        self.chain = parse_networks(proxies)
        self.peers = self.chain + (parse_networks(LOOPBACK_NETWORKS) if front else ())

    def __bool__(self) -> bool:
        return bool(self.peers)

    @staticmethod
    def _within(address: IpAddress, networks: tuple[IpNetwork, ...]) -> bool:
        return any(address.version == network.version and address in network for network in networks)

    def trusts(self, address: IpAddress | None) -> bool:
        """Whether a peer address belongs to a trusted proxy."""
        return address is not None and self._within(address, self.peers)

    def client_key(self, peer: str, metadata: Iterable[tuple[str, object]] = ()) -> str:
        """The limit key of a call: the forwarded client of a trusted proxy, else the peer's host."""
        if not self.trusts(peer_address(peer)):
            return peer_key(peer)
        forwarded: list[str] = []
        real_ip = None
        for key, value in metadata:
            if not isinstance(value, str):
                continue
            if key == FORWARDED_FOR_KEY:
                forwarded.extend(part.strip() for part in value.split(","))
            elif key == REAL_IP_KEY:
                real_ip = parse_ip(value)
        client = None
        for entry in reversed(forwarded):
            address = parse_ip(entry)
            if address is None:
                break  # a malformed entry: nothing left of it can be believed
            client = address
            if not self._within(address, self.chain):
                break
        client = client or real_ip
        return address_key(client) if client is not None else peer_key(peer)
