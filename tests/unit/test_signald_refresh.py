"""signald restarts Tox when the tunnel dies under a direct Tox connection (issue 9)."""

from __future__ import annotations

import structlog

from punchguard.config import ToxNode
from punchguard.messages import GuardStateKind, Transport
from signald import core
from signald.core import SignalCore, StartTox, StopTox

PEER_KEY = bytes(range(32))
NOSPAM = b"\x01\x02\x03\x04"
PEER_ADDRESS = (PEER_KEY + NOSPAM + core.address_checksum(PEER_KEY + NOSPAM)).hex()
NODES = (ToxNode("127.0.0.1", 33445, "00" * 32, 33445),)


def peer_over(transport: Transport, mode: str = "always") -> SignalCore:
    c = SignalCore(peer_address=PEER_ADDRESS, nodes=NODES, mode=mode, log=structlog.get_logger())
    assert StartTox() in c.start(0.0)
    c.tox_started(1.0, bytes([0xAA] * 38), {0: PEER_KEY})
    c.self_connection(2.0, Transport.TCP)
    c.friend_connection(3.0, 0, transport)
    c.guard_state(4.0, GuardStateKind.UP)
    return c


def restarts(cmds: list[core.Command]) -> bool:
    return cmds[:2] == [StopTox(), StartTox()]


def test_tunnel_down_with_peer_over_udp_restarts_tox_at_most_every_10_s() -> None:
    c = peer_over(Transport.UDP)
    assert restarts(c.guard_state(10.0, GuardStateKind.DOWN))
    assert not restarts(c.guard_state(10.5, GuardStateKind.DOWN))  # a transition, not a level
    c.tox_stopped(10.0)
    c.tox_started(10.0, bytes([0xAA] * 38), {0: PEER_KEY})
    c.friend_connection(12.0, 0, Transport.UDP)
    c.guard_state(13.0, GuardStateKind.UP)
    assert not restarts(c.guard_state(15.0, GuardStateKind.DOWN))  # within 10 s: no
    c.guard_state(19.0, GuardStateKind.UP)
    assert restarts(c.guard_state(21.0, GuardStateKind.DOWN))


def test_no_restart_over_tcp_from_handshaking_or_when_offline() -> None:
    c = peer_over(Transport.TCP)
    assert not restarts(c.guard_state(10.0, GuardStateKind.DOWN))
    c = peer_over(Transport.UDP)
    c.guard_state(5.0, GuardStateKind.HANDSHAKING)
    assert not restarts(c.guard_state(10.0, GuardStateKind.DOWN))
    c = peer_over(Transport.UDP, mode="on-demand")  # UP took it offline: DOWN just starts it
    c.tox_stopped(4.0)
    cmds = c.guard_state(10.0, GuardStateKind.DOWN)
    assert StopTox() not in cmds and StartTox() in cmds
