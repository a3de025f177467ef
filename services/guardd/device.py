"""The WireGuard device as guardd sees it: what it has, what we want, and the difference.

Pure (no I/O). A backend adapter (``backend.py``: wireguard-go's UAPI or the kernel) reads the
interface into a ``DeviceSample`` and applies a ``DeviceChange``; the core says what it wants as a
``DeviceWant`` (design 4.4, style 5). ``diff(want, have)`` returns only the difference: an empty
change means "nothing to do", so a repeated path is a no-op, and a field the core has no opinion
on (``None``) is left as the interface has it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[IPAddress, int]


def format_endpoint(ep: Endpoint) -> str:
    addr, port = ep
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def parse_endpoint(text: str) -> Endpoint | None:
    """``host:port`` / ``[v6]:port`` as WireGuard prints it, or None (also for garbage)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]), int(port)
    except ValueError:
        return None


@dataclass(frozen=True)
class PeerSample:
    public_key: str  # base64
    endpoint: Endpoint | None = None
    allowed_ips: tuple[str, ...] = ()  # canonical CIDRs
    keepalive: int = 0
    last_handshake: float = 0.0  # unix time, 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass(frozen=True)
class DeviceSample:
    """What the interface has now (read through a backend adapter)."""

    private_key: str | None = None  # base64
    listen_port: int = 0
    peers: tuple[PeerSample, ...] = ()

    def peer(self, public_key: str) -> PeerSample | None:
        for p in self.peers:
            if p.public_key == public_key:
                return p
        return None


@dataclass(frozen=True)
class DeviceWant:
    """The whole desired device. ``None`` = no opinion: leave what the interface has."""

    private_key: str
    peer_public_key: str
    allowed_ips: tuple[str, ...]
    listen_port: int | None = None
    endpoint: Endpoint | None = None
    keepalive: int | None = None


@dataclass(frozen=True)
class PeerChange:
    public_key: str
    create: bool = False
    endpoint: Endpoint | None = None
    keepalive: int | None = None
    allowed_ips: tuple[str, ...] | None = None  # replace the list with this


@dataclass(frozen=True)
class DeviceChange:
    """Only the difference to apply; ``bool(change)`` is False when there is nothing to do."""

    private_key: str | None = None
    listen_port: int | None = None
    remove_peers: tuple[str, ...] = ()
    peer: PeerChange | None = None

    def __bool__(self) -> bool:
        return bool(
            self.private_key is not None
            or self.listen_port is not None
            or self.remove_peers
            or self.peer is not None
        )


def canonical_cidr(text: str) -> str:
    return str(ipaddress.ip_network(text, strict=False))


def host_cidr(address_cidr: str) -> str:
    """The host route (/32 or /128) of an interface address such as ``10.99.0.2/24``."""
    iface = ipaddress.ip_interface(address_cidr)
    return f"{iface.ip}/{iface.max_prefixlen}"


def diff(want: DeviceWant, have: DeviceSample) -> DeviceChange:
    """The change that turns ``have`` into ``want``, touching nothing else."""
    private_key = want.private_key if have.private_key != want.private_key else None
    listen_port = (
        want.listen_port
        if want.listen_port is not None and want.listen_port != have.listen_port
        else None
    )
    remove = tuple(p.public_key for p in have.peers if p.public_key != want.peer_public_key)
    current = have.peer(want.peer_public_key)
    wanted_ips = tuple(sorted(canonical_cidr(c) for c in want.allowed_ips))
    peer: PeerChange | None
    if current is None:
        peer = PeerChange(
            want.peer_public_key,
            create=True,
            endpoint=want.endpoint,
            keepalive=want.keepalive or None,
            allowed_ips=wanted_ips,
        )
    else:
        changes = PeerChange(
            want.peer_public_key,
            endpoint=want.endpoint
            if want.endpoint is not None and want.endpoint != current.endpoint
            else None,
            keepalive=want.keepalive
            if want.keepalive is not None and want.keepalive != current.keepalive
            else None,
            allowed_ips=wanted_ips
            if tuple(sorted(canonical_cidr(c) for c in current.allowed_ips)) != wanted_ips
            else None,
        )
        empty = PeerChange(want.peer_public_key)
        peer = None if changes == empty else changes
    return DeviceChange(private_key, listen_port, remove, peer)
