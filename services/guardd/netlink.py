"""The pyroute2 boundary: links, addresses and routes of this network namespace.

Synchronous calls (each takes well under a millisecond); the runner calls them through
``asyncio.to_thread`` because pyroute2 0.9's synchronous API runs an event loop of its own.
The address and the peer's host route are ensured idempotently: adopting an interface that
already has them changes nothing.
"""

from __future__ import annotations

import errno
import ipaddress
from typing import Any

from pyroute2 import IPRoute, NetlinkError


class NetlinkFailure(Exception):
    pass


def link_index(ifname: str) -> int | None:
    with IPRoute() as ipr:
        found: list[int] = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def link_kind(ifname: str) -> str | None:
    """``"wireguard"`` for a kernel interface, ``"tun"`` for wireguard-go's, None if absent."""
    with IPRoute() as ipr:
        links: list[Any] = ipr.get_links(ifname=ifname) if link_index(ifname) else []
    for link in links:
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        return str(kind) if kind else "tun"
    return None


def delete_link(ifname: str) -> bool:
    idx = link_index(ifname)
    if idx is None:
        return False
    with IPRoute() as ipr:
        try:
            ipr.link("del", index=idx)
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise NetlinkFailure(f"deleting {ifname}: {e}") from None
    return True


def create_kernel_link(ifname: str) -> None:
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=ifname, kind="wireguard")
        except NetlinkError as e:
            raise NetlinkFailure(f"creating kernel WireGuard {ifname}: {e}") from None


def kernel_wireguard_available() -> bool:
    """True if this kernel can create WireGuard links (the module is loaded or loadable)."""
    probe = "pgprobe" + str(abs(hash(object())) % 100000)
    try:
        create_kernel_link(probe[:15])
    except NetlinkFailure:
        return False
    delete_link(probe[:15])
    return True


def ensure_address(ifname: str, address_cidr: str, peer_host_cidr: str) -> list[str]:
    """Bring ``ifname`` up with ``address_cidr`` and a route to the peer; returns what changed."""
    iface = ipaddress.ip_interface(address_cidr)
    peer = ipaddress.ip_network(peer_host_cidr)
    changed: list[str] = []
    idx = link_index(ifname)
    if idx is None:
        raise NetlinkFailure(f"no interface {ifname} in this namespace")
    with IPRoute() as ipr:
        try:
            have = {
                (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                for a in ipr.get_addr(index=idx, family=_family(iface.version))
            }
            if (str(iface.ip), iface.network.prefixlen) not in have:
                ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
                changed.append(f"address {iface}")
            link = ipr.get_links(idx)[0]
            if link["flags"] & 1 == 0:  # IFF_UP
                ipr.link("set", index=idx, state="up")
                changed.append("link up")
            if not peer.subnet_of(iface.network):  # type: ignore[arg-type]  # same family
                ipr.route("replace", dst=str(peer), oif=idx)
                changed.append(f"route {peer}")
        except NetlinkError as e:
            raise NetlinkFailure(f"configuring {ifname}: {e}") from None
    return changed


def _family(version: int) -> int:
    import socket

    return socket.AF_INET if version == 4 else socket.AF_INET6
