"""Screening the peer's ICE candidates before aioice sees them (pure: no aioice, no I/O).

The peer is authenticated (its candidates arrive inside a verified OTR session), but its
punchd may be broken or compromised, and every candidate we accept makes us send STUN checks
to that address. So a candidate is kept only if it is one we could really use (RFC 8839
section 5.1 grammar, RFC 8445 section 5.1.1 types):

    <foundation> <component-id=1> <transport=UDP> <priority> <IP literal> <port 1..65535>
    typ <host|srflx|relay> [extensions...]

Refused, each under its own counter reason: malformed lines (``bad_candidate``), a component
other than 1 or a transport other than UDP (``unsupported_candidate``), host names (mDNS
``.local`` names included: resolving one would send multicast queries on the peer's say),
port 0 (``bad_port``), and addresses no peer can be reached at (``bad_address``): unspecified,
multicast, broadcast, loopback (the peer's own loopback is not ours), link-local, reserved.
At most ``MAX_CANDIDATES`` are kept (``too_many`` counts the rest); a line longer than
``MAX_LINE`` is malformed.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Sequence

MAX_CANDIDATES = 32  # a peer has a handful (host, srflx, relay per interface)
MAX_LINE = 256  # an RFC 8839 candidate line is well under this
TYPES = frozenset({"host", "srflx", "relay"})  # what aioice accepts from a peer


class BadCandidate(Exception):
    """A candidate we will not check; ``reason`` is the counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def check_address(host: str) -> None:
    """``BadCandidate`` unless ``host`` is an IP literal a remote peer may be reached at."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise BadCandidate("bad_address", "not an IP literal") from None
    if isinstance(addr, ipaddress.IPv6Address) and (
        addr.scope_id is not None or addr.ipv4_mapped is not None
    ):
        raise BadCandidate("bad_address", "scoped or IPv4-mapped IPv6")
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr.is_link_local:
        raise BadCandidate("bad_address", "unspecified, multicast, loopback or link-local")
    if isinstance(addr, ipaddress.IPv4Address) and (
        addr == ipaddress.IPv4Address("255.255.255.255") or addr.packed[0] == 0
    ):
        raise BadCandidate("bad_address", "broadcast or this-network")
    if addr.is_reserved:
        raise BadCandidate("bad_address", "reserved")


def check_candidate(text: object) -> str:
    """``text`` if it is a usable remote candidate line, else ``BadCandidate``."""
    if not isinstance(text, str) or len(text) > MAX_LINE or not text.isascii():
        raise BadCandidate("bad_candidate", "not a short ASCII string")
    bits = text.split()
    if len(bits) < 8 or bits[6] != "typ":
        raise BadCandidate("bad_candidate", "not <foundation> <component> ... typ <type>")
    if not (bits[1].isdigit() and bits[3].isdigit() and bits[5].isdigit()):
        raise BadCandidate("bad_candidate", "component, priority and port are numbers")
    if int(bits[1]) != 1 or bits[2].lower() != "udp":
        raise BadCandidate("unsupported_candidate", "component 1 over UDP only")
    if int(bits[3]) >= 2**32:
        raise BadCandidate("bad_candidate", "priority out of range")
    if not 1 <= int(bits[5]) <= 65535:
        raise BadCandidate("bad_port", bits[5][:8])
    if bits[7] not in TYPES:
        raise BadCandidate("unsupported_candidate", f"type {bits[7][:16]!r}")
    check_address(bits[4])
    return text


def screen(candidates: Sequence[object]) -> tuple[tuple[str, ...], Counter[str]]:
    """The usable candidates (at most ``MAX_CANDIDATES``) and what was refused, by reason."""
    kept: list[str] = []
    refused: Counter[str] = Counter()
    for text in candidates:
        if len(kept) >= MAX_CANDIDATES:
            refused["too_many"] += 1
            continue
        try:
            kept.append(check_candidate(text))
        except BadCandidate as e:
            refused[e.reason] += 1
    return tuple(kept), refused
