"""Relayed paths (issue 11) without a network: the core's direct probes and relay-lost handling
over a fake OTR link, and the forwarder/Relays with a fake allocation."""

from __future__ import annotations

import asyncio
import random
from typing import Any, cast

from punchd.commands import (
    CloseSession,
    Command,
    PublishPath,
    Selected,
    SendParams,
    StartChecks,
    StartGather,
)
from punchd.core import PunchCore
from punchd.relay import LOOPBACK, Forwarder, Relays
from punchd.timers import Timers
from punchguard.messages import CandidateType, GuardStateKind, IceParams, NatKind, PunchStateKind
from tests.unit.test_punchd_core import ADDR_A, ADDR_B, KEY_A, KEY_B, gathered, of, ready_core

RELAYED = Selected(40500, LOOPBACK, 35562, CandidateType.RELAY, CandidateType.SRFLX, "t:3478")
DIRECT = Selected(40000, "198.51.100.20", 61000, CandidateType.HOST, CandidateType.SRFLX)
SYM, CONE = NatKind.ENDPOINT_DEPENDENT, NatKind.ENDPOINT_INDEPENDENT


def params_of(out: list[Command]) -> list[IceParams]:
    return [c.params for c in of(out, SendParams)]


def session(
    a: PunchCore, b: PunchCore, start: StartGather, now: float, pair: Selected | None,
    relay: bool = False,
) -> tuple[list[Command], list[Command]]:  # fmt: skip
    out_a = a.on_gathered(now, start.session, gathered(CONE, relay=relay))
    (offer,) = params_of(out_a)
    out_b = b.on_peer_params(now, offer)
    (start_b,) = of(out_b, StartGather)
    out_b += b.on_gathered(now, start_b.session, gathered(SYM, relay=relay))
    answer = next(p for p in params_of(out_b) if p.candidates)
    out_a += a.on_peer_params(now, answer)
    if pair is None:
        out_b += b.on_checks_failed(now + 3, start.session, "ICE failed")
        for p in params_of(out_b):
            if p.restart:
                out_a += a.on_peer_params(now + 3, p)
        return out_a, out_b
    out_b += b.on_checks_done(now + 0.1, start.session, pair)
    out_a += a.on_checks_done(now + 0.1, start.session, pair)
    for p in params_of(out_b):
        if p.connected:
            out_a += a.on_peer_params(now + 0.1, p)
    return out_a, out_b


def relayed_pair() -> tuple[PunchCore, PunchCore]:
    a, out_a = ready_core(ADDR_A, KEY_B)
    b, _ = ready_core(ADDR_B, KEY_A)
    (start,) = of(out_a, StartGather)
    assert not start.direct_only
    out_a, out_b = session(a, b, start, 0.0, RELAYED, relay=True)
    for core, out in ((a, out_a), (b, out_b)):
        assert core.state == PunchStateKind.CONNECTED and core.path is not None
        assert core.path.relayed
        assert [c.keep_relay for c in of(out, CloseSession)] == [True]
    assert "relayed via t:3478 (TURN); direct failed: no direct candidate pair" in b.reason
    assert "next direct try at" in a.reason
    a.on_guard(0.5, GuardStateKind.UP, a.path.generation if a.path else 0)
    return a, b


def test_relayed_path_probes_direct_with_backoff_and_keeps_the_path() -> None:
    a, b = relayed_pair()
    gen = a.path.generation if a.path else 0
    assert not of(a.on_tick(5.0), StartGather)  # probe_initial = 10 s
    (probe,) = of(a.on_tick(10.5), StartGather)
    assert probe.direct_only and a.probing
    out_a, out_b = session(a, b, probe, 10.5, None)
    # b saw a session without relay candidates under a relayed path: its own probe, no TURN
    assert [s.direct_only for s in of(out_b, StartGather)] == [True]
    for core in (a, b):
        assert core.state == PunchStateKind.CONNECTED and not core.probing
        assert core.path is not None and core.path.generation == gen  # the path never moved
        assert "direct failed: connectivity checks timed out" in core.reason
    assert not of(out_a, PublishPath) and not of(out_b, PublishPath)
    assert 13.5 + 18 <= a.probe_at <= 13.5 + 22  # 10 s doubled, +-10 %
    # the next probe succeeds directly: a new generation, a direct path on both sides
    (probe2,) = of(a.on_tick(a.probe_at), StartGather)
    out_a, out_b = session(a, b, probe2, a.probe_at, DIRECT)
    for core, out in ((a, out_a), (b, out_b)):
        (path,) = [c.path for c in of(out, PublishPath)]
        assert not path.relayed and path.generation == gen + 1
        assert core.reason.startswith("direct path") and core.direct_failed == ""


def test_probe_that_only_finds_a_relay_counts_as_failed() -> None:
    a, b = relayed_pair()
    (probe,) = of(a.on_tick(11.0), StartGather)
    out_a, _ = session(a, b, probe, 11.0, RELAYED)
    assert a.state == PunchStateKind.CONNECTED and a.counters["probe_failed"] >= 1
    assert not of(out_a, PublishPath)


def test_tunnel_down_during_a_probe_is_a_real_failure() -> None:
    a, _ = relayed_pair()
    (probe,) = of(a.on_tick(11.0), StartGather)
    gen = a.path.generation if a.path else 0
    out = a.on_guard(12.0, GuardStateKind.DOWN, gen)
    assert not a.probing
    (again,) = of(out, StartGather)  # punched again at once, TURN allowed
    assert not again.direct_only and again.session != probe.session


def test_probe_waits_for_otr_and_says_so() -> None:
    a, _ = relayed_pair()
    a.on_otr(5.0, False)  # on-demand policy: Tox offline while the tunnel is up
    assert not of(a.on_tick(11.0), StartGather)
    assert "as soon as OTR is secure" in a.reason
    (probe,) = of(a.on_otr(20.0, True) + a.on_tick(20.2), StartGather)
    assert probe.direct_only


def test_relay_lost_repunches_now_or_asks_the_controlling_side() -> None:
    a, b = relayed_pair()
    (again,) = of(a.on_relay_lost(3.0), StartGather)
    assert not again.direct_only and a.counters["relay_lost"] == 1
    # a restarted controlled punchd does not know the path's session: it asks with session 0
    a2, b2 = relayed_pair()
    fresh = PunchCore(Timers(), random.Random(2), now=5.0)
    fresh.on_keys(5.0, ADDR_B, KEY_A)
    fresh.on_otr(5.0, True)
    (ask,) = params_of(fresh.on_relay_lost(5.0))
    assert ask.restart and ask.session == 0
    (again2,) = of(a2.on_peer_params(5.1, ask), StartGather)
    assert not again2.direct_only
    del b, b2


# -- the forwarder and Relays with a fake allocation -------------------------------------------


class FakeAllocation:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.on_data: Any = None
        self.on_lost: Any = None
        self.alive = True
        self.closed = False
        self.binds = 0
        self.server = ("198.51.100.2", 3478)
        self.relayed = ("198.51.100.2", 50000)

    def set_receiver(self, on_data: Any, on_lost: Any) -> None:
        self.on_data, self.on_lost = on_data, on_lost

    def send(self, data: bytes, peer: tuple[str, int]) -> bool:
        self.sent.append((data, peer))
        return True

    async def bind(self, peer: tuple[str, int]) -> None:
        self.binds += 1

    async def close(self) -> None:
        self.closed = True


class Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[tuple[bytes, tuple[str, int]]] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.append((data, addr))


async def _forwarder() -> None:
    loop = asyncio.get_running_loop()
    wg_t, wg = await loop.create_datagram_endpoint(Sink, local_addr=(LOOPBACK, 0))
    other_t, _ = await loop.create_datagram_endpoint(Sink, local_addr=(LOOPBACK, 0))
    fwd = Forwarder(wg_t.get_extra_info("sockname")[1], refresh_every=0.05)
    alloc = FakeAllocation()
    peer = ("198.51.100.10", 4000)
    try:
        await fwd.open()
        wg_t.sendto(b"early", (LOOPBACK, fwd.port))
        await asyncio.sleep(0.05)
        assert fwd.counters["drop_not_attached"] == 1
        fwd.attach(alloc, peer)  # type: ignore[arg-type]  # a fake TurnAllocation
        wg_t.sendto(b"\x04\x00\x00\x00x", (LOOPBACK, fwd.port))
        other_t.sendto(b"\x04\x00\x00\x00y", (LOOPBACK, fwd.port))
        await asyncio.sleep(0.05)
        assert alloc.sent == [(b"\x04\x00\x00\x00x", peer)]
        assert fwd.counters["drop_not_wireguard"] == 1
        alloc.on_data(b"\x04\x00\x00\x00in", peer)
        alloc.on_data(b"\x04\x00\x00\x00bad", ("203.0.113.9", 4000))  # not the peer's IP
        stun = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12)
        alloc.on_data(stun, peer)
        alloc.on_data(b"\x04\x00\x00\x00moved", ("198.51.100.10", 4001))  # NAT moved the port
        await asyncio.sleep(0.1)
        assert [d for d, _ in wg.got] == [b"\x04\x00\x00\x00in", b"\x04\x00\x00\x00moved"]
        assert all(src == (LOOPBACK, fwd.port) for _, src in wg.got)
        assert fwd.counters["drop_wrong_peer"] == 1 and fwd.counters["drop_stun"] == 1
        assert fwd.peer == ("198.51.100.10", 4001) and alloc.binds >= 1
        alloc.on_lost()
        assert fwd.lost
    finally:
        await fwd.close()
        wg_t.close()
        other_t.close()
    assert alloc.closed


def test_forwarder_moves_only_wireguard_and_peer_datagrams() -> None:
    asyncio.run(_forwarder())


class Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.events.append(event)


async def _relays(monkeypatch: Any) -> None:
    import punchd.relay as relay

    allocs: list[FakeAllocation] = []

    def detach(conn: Any) -> FakeAllocation:
        allocs.append(FakeAllocation())
        return allocs[-1]

    monkeypatch.setattr(relay, "detach_relay", detach)
    relays = Relays(Log(), grace=0.05)
    try:
        first = await relays.prepare(1, ("198.51.100.10", 4000))
        assert not relays.orphaned(f"{LOOPBACK}:{first.port}")  # prepared: ours
        relays.adopt(1, object())
        assert relays.current is first and first.allocation is cast(Any, allocs[0])
        assert not relays.orphaned(f"{LOOPBACK}:{first.port}")
        assert relays.orphaned(f"{LOOPBACK}:1")  # not ours: reported once
        assert not relays.orphaned(f"{LOOPBACK}:1")
        assert not relays.orphaned("198.51.100.2:50000")  # not a forwarder address
        await relays.prepare(2, ("198.51.100.10", 4000))
        await relays.discard(2)
        assert 2 not in relays.prepared
        relays.adopt(3, object())  # a direct path replaces the relayed one: retired after grace
        assert relays.current is None
        assert not relays.orphaned(f"{LOOPBACK}:{first.port}")  # in its grace period
        await asyncio.sleep(0.2)
        assert allocs[0].closed
        assert not relays.lost()
    finally:
        await relays.close()


def test_relays_prepare_adopt_retire_orphaned(monkeypatch: Any) -> None:
    asyncio.run(_relays(monkeypatch))


def test_start_checks_uses_the_session() -> None:
    # the controlled side's probe still runs its checks like any session
    a, b = relayed_pair()
    (probe,) = of(a.on_tick(11.0), StartGather)
    out_a = a.on_gathered(11.0, probe.session, gathered(CONE))
    out_b = b.on_peer_params(11.1, params_of(out_a)[0])
    (start_b,) = of(out_b, StartGather)
    assert of(b.on_gathered(11.2, start_b.session, gathered(SYM)), StartChecks)
