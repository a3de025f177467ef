"""Liveness probes across the tunnel: ICMP echo to the peer's tunnel address (issue 9).

Why: without them a dead path is only noticed after ``dead_after`` = 15 s of silence, because
under one-way traffic the receiver answers only every 10 s (WireGuard's passive keepalive).
When nothing has been received for ``liveness.PROBE_AFTER`` s guardd sends an echo request
through the tunnel every ``liveness.PROBE_INTERVAL`` s; the peer's kernel answers at once, so on
a live path the silence ends within a round trip, and once the peer has been seen answering, a
few unanswered probes in a row mean the path is dead (``liveness.silence_limit``, applied by
``core.GuardCore._assess``).

The socket is a raw ICMP socket bound to the WireGuard interface (``SO_BINDTODEVICE``), so
probes only ever leave through the tunnel and only replies that came through it are seen; a
reply counts only if it comes from the peer's tunnel address with our identifier. IPv4 only (a
peer with an IPv6 tunnel address gets no probes and keeps the 15 s rule). RFC 792 for the
packet format.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import struct
from collections.abc import Callable

ECHO_REQUEST = 8
ECHO_REPLY = 0
PAYLOAD = b"punchguard-probe"


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
    csum = checksum(header + PAYLOAD)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, csum, ident, seq) + PAYLOAD


def parse_reply(packet: bytes, ident: int) -> int | None:
    """The sequence number of an echo reply with our identifier (``packet`` starts with the
    IPv4 header, as a raw socket delivers it), else None."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl : ihl + 8]
    if len(icmp) < 8:
        return None
    typ, _code, _csum, got_ident, seq = struct.unpack("!BBHHH", icmp)
    if typ != ECHO_REPLY or got_ident != ident:
        return None
    return int(seq)


class Prober:
    """One raw ICMP socket on the WireGuard interface; ``send()`` a probe, ``on_reply`` is
    called (in the event loop) for each answer from the peer."""

    def __init__(self, interface: str, peer_address: str, on_reply: Callable[[], None]) -> None:
        addr = ipaddress.ip_interface(peer_address).ip
        if addr.version != 4:
            raise OSError("probes are IPv4 only")
        self.peer = str(addr)
        self.ident = os.getpid() & 0xFFFF
        self.seq = 0
        self.on_reply = on_reply
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            self.sock.setblocking(False)
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)
        except BaseException:
            self.sock.close()
            raise

    def send(self) -> None:
        self.seq = (self.seq + 1) & 0xFFFF
        with contextlib.suppress(OSError):  # no route yet, buffer full: the next one
            self.sock.sendto(echo_request(self.ident, self.seq), (self.peer, 0))

    def _readable(self) -> None:
        for _ in range(64):
            try:
                packet, (src, _port) = self.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if src == self.peer and parse_reply(packet, self.ident) is not None:
                self.on_reply()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
