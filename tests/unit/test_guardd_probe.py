"""guardd's liveness probes (issue 9): the ICMP codec and the core's probing rules."""

from __future__ import annotations

import struct

from guardd.core import GuardCore, Identity, Phase
from guardd.device import DeviceSample, PeerSample
from guardd.liveness import PROBE_AFTER, PROBE_DEAD, dead_after
from guardd.probe import ECHO_REPLY, checksum, echo_request, parse_reply
from punchguard.messages import Path, Role

PRIV = "0" * 43 + "="
MINE = "A" * 43 + "="
PEER = "B" * 43 + "="
IDENT = Identity("pg0", "wireguard-go", PRIV, MINE, PEER, ("10.99.0.2/32",), keepalive=5)


def test_echo_request_has_a_valid_checksum_and_a_reply_parses() -> None:
    pkt = echo_request(0x1234, 7)
    assert checksum(pkt) == 0  # a correct Internet checksum sums to zero
    ip = bytes([0x45]) + bytes(19)
    reply = struct.pack("!BBHHH", ECHO_REPLY, 0, 0, 0x1234, 7) + pkt[8:]
    assert parse_reply(ip + reply, 0x1234) == 7
    assert parse_reply(ip + reply, 0x4321) is None  # someone else's ping
    assert parse_reply(ip + pkt, 0x1234) is None  # a request, not a reply
    assert parse_reply(b"\x45\x00", 0x1234) is None  # garbage: no crash


def phase(core: GuardCore) -> Phase:
    return core.phase


def up_core() -> tuple[GuardCore, float]:
    """A core that is UP at t=10 (rx last changed at t=10)."""
    core = GuardCore(IDENT)
    core.on_sample(DeviceSample(PRIV, 0, (PeerSample(PEER),)), 0.0, 1000.0)
    core.on_message("punchd", Path(40123, "198.51.100.20", 61002, Role.CONTROLLING), 0.0)
    peer = PeerSample(PEER, None, ("10.99.0.2/32",), 5, last_handshake=1009.0, rx_bytes=92)
    core.on_sample(DeviceSample(PRIV, 40123, (peer,)), 10.0, 1010.0)
    assert phase(core) is Phase.UP
    return core, 10.0


def silent(core: GuardCore, at: float) -> None:
    peer = PeerSample(PEER, None, ("10.99.0.2/32",), 5, last_handshake=1009.0, rx_bytes=92)
    core.on_sample(DeviceSample(PRIV, 40123, (peer,)), at, 1000.0 + at)


def test_a_first_probe_learns_whether_the_peer_answers() -> None:
    core, t = up_core()
    assert core.probe_due(t)  # never answered yet: probe at once
    core.on_probe_sent(t)
    assert not core.probe_due(t + 1)  # once per 5 s until an answer
    assert core.probe_due(t + 5)


def test_probes_only_after_silence_then_fast_down() -> None:
    core, t = up_core()
    core.on_probe_sent(t)
    core.on_probe_reply()
    assert not core.probe_due(t + PROBE_AFTER - 0.1)
    assert core.probe_due(t + PROBE_AFTER)
    core.on_probe_sent(t + PROBE_AFTER)
    assert not core.probe_due(t + PROBE_AFTER + 0.2)
    silent(core, t + PROBE_AFTER + PROBE_DEAD - 0.1)
    assert phase(core) is Phase.UP
    silent(core, t + PROBE_AFTER + PROBE_DEAD)
    assert phase(core) is Phase.DOWN
    assert core.reason == f"no answer to probes for {PROBE_AFTER + PROBE_DEAD:.0f} s"
    assert not core.probe_due(t + 20)  # not while DOWN (WireGuard keeps trying by itself)


def test_a_peer_that_never_answers_keeps_the_slow_rule() -> None:
    core, t = up_core()
    silent(core, t + PROBE_AFTER + PROBE_DEAD + 1)
    assert phase(core) is Phase.UP
    silent(core, t + dead_after(5))
    assert phase(core) is Phase.DOWN
    assert core.reason == "no bytes received for 15 s"
