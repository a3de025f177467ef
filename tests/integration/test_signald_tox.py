"""signald with real libtoxcore on a private Tox network (tox-bootstrapd on loopback).

Two signald processes pair through their config, exchange payloads both ways through their buses,
ignore a third identity's friend requests, and survive ``kill -9``; the on-demand policy takes Tox
offline and back as guardd's and punchd's wishes change, with signald running as ``punchguard``.
Timeouts allow for Tox's 7-10 s floor (design 4.1); nothing here asserts timing.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import stat
from collections.abc import Iterator

import pytest

from punchguard.messages import (
    GuardState,
    GuardStateKind,
    SignalPolicy,
    SignalStateKind,
    Transport,
)
from signald import core, savedata, toxcore
from tests.integration.signald_lab import BootstrapNode, BusProbe, SignaldProcess

pytestmark = pytest.mark.root  # runs processes as the punchguard user
TIMEOUT = 60.0
K = SignalStateKind


@pytest.fixture
def node() -> Iterator[BootstrapNode]:
    with BootstrapNode() as n:
        yield n


def peer_online(p: BusProbe) -> bool:
    return p.state is not None and p.state.state == K.PEER_ONLINE


async def deliver(src: BusProbe, dst: BusProbe, payload: bytes, what: str) -> None:
    """Send until ``dst`` receives ``payload`` (a peer just restarted may miss the first ones)."""
    for _ in range(int(TIMEOUT)):
        src.send(payload)
        try:
            await dst.wait_for(lambda: any(p == payload for _, p in dst.received), 1.0, what)
            return
        except TimeoutError:
            continue
    raise TimeoutError(f"{what}: not delivered in {TIMEOUT} s (errors: {src.errors[-3:]})")


async def test_pair_exchange_ignore_stranger_restart(node: BootstrapNode) -> None:
    a = SignaldProcess("sa", node)
    b = SignaldProcess("sb", node)
    stranger: toxcore.Tox | None = None
    try:
        a_addr, b_addr = a.address_offline(), b.address_offline()
        assert a_addr != b_addr and len(a_addr) == core.ADDRESS_HEX
        # the third identity; slip it into a's friend list behind signald's back
        stranger = toxcore.Tox(toxcore.ToxOptions(start_port=0, end_port=0))
        save = savedata.path_in(a.state_dir)
        with toxcore.Tox(toxcore.ToxOptions(udp=False, savedata=save.read_bytes())) as t:
            t.friend_add_norequest(stranger.public_key())
            savedata.write_atomic(save, t.savedata())
        a.peer_address, b.peer_address = b_addr, a_addr
        a.start()
        b.start()
        async with BusProbe(a.runtime_dir) as pa, BusProbe(b.runtime_dir) as pb:
            await pa.wait_for(lambda: peer_online(pa), TIMEOUT, "a: peer online")
            await pb.wait_for(lambda: peer_online(pb), TIMEOUT, "b: peer online")
            assert pa.state is not None and pa.state.address == a_addr
            assert pa.state.peer_public_key == b_addr[:64]
            assert pa.state.peer_conn in (Transport.TCP, Transport.UDP)
            assert pa.state.max_payload == core.MAX_PAYLOAD

            # payloads both ways, binary and at the limit; larger is refused, not truncated
            big = bytes(range(256)) * 5 + b"\x00" * (core.MAX_PAYLOAD - 1280)
            await deliver(pa, pb, big, "a -> b")
            await deliver(pb, pa, b"\x00pong\x00", "b -> a")
            pa.send(big + b"!")
            await pa.wait_for(lambda: pa.errors, 10, "error for an oversized payload")
            assert pa.errors[-1].code == "payload_too_large"
            assert all(len(p) <= core.MAX_PAYLOAD for _, p in pb.received)

            # signald removed the stranger from its friend list when it started
            assert a.log_text().count("friend.removed_stranger") == 1

            # the third identity: its friend requests are ignored and counted
            key = bytes.fromhex(node.public_key)
            stranger.bootstrap("127.0.0.1", node.port, key)
            stranger.add_tcp_relay("127.0.0.1", node.tcp_port, key)
            stranger.friend_add(bytes.fromhex(a_addr), b"let me in")
            stranger.friend_add(bytes.fromhex(b_addr), b"let me in")
            strange = stranger

            def requests_ignored() -> bool:
                strange.iterate()
                return all(p.state is not None and p.state.ignored_requests >= 1 for p in (pa, pb))

            await pa.wait_for(requests_ignored, TIMEOUT, "stranger's requests ignored")
            assert peer_online(pa) and peer_online(pb)
            stranger.kill()

            # the savedata: 0600, our identity, the peer as the only friend
            mode = stat.S_IMODE(os.stat(savedata.path_in(a.state_dir)).st_mode)
            assert mode == 0o600

            # kill -9 a, start it again: same address, friendship intact, payloads flow
            a.kill9()
            pa.state = None
            a.start()
            await pa.wait_for(lambda: peer_online(pa), TIMEOUT, "a restarted: peer online")
            assert pa.state is not None and pa.state.address == a_addr
            assert a.log_text().count("friend.removed_stranger") == 1  # none this time
            await deliver(pa, pb, b"after restart a->b", "a -> b after restart")
            await deliver(pb, pa, b"after restart b->a", "b -> a after restart")

            # a clean stop: exit code 0, the peer sees it go at once
            assert a.stop() == 0
            await pb.wait_for(lambda: not peer_online(pb), 20, "b: peer offline")
    finally:
        if stranger is not None:
            stranger.kill()
        a.close()
        b.close()


async def test_on_demand_policy_as_service_user(node: BootstrapNode) -> None:
    user = "punchguard"
    try:
        pwd.getpwnam(user)
    except KeyError:
        pytest.skip("no punchguard user")
    s = SignaldProcess("sp", node, mode="on-demand", user=user)
    try:
        s.start()
        async with BusProbe(s.runtime_dir, group=user) as p:
            await p.wait_for(
                lambda: p.state is not None and p.state.state in (K.BOOTSTRAPPING, K.ONLINE),
                TIMEOUT,
                "Tox running",
            )
            assert p.state is not None and p.state.address
            path = savedata.path_in(s.state_dir)
            st = os.stat(path)
            assert stat.S_IMODE(st.st_mode) == 0o600
            assert st.st_uid == pwd.getpwnam(user).pw_uid

            def offline() -> bool:
                return p.state is not None and p.state.state == K.OFFLINE

            # guardd says the tunnel is UP: Tox goes offline (level-triggered: repeat it)
            async def guard(kind: GuardStateKind, until: object) -> None:
                for _ in range(int(TIMEOUT * 10)):
                    p.guardd.publish(GuardState(kind))
                    await asyncio.sleep(0.1)
                    if until == offline() and p.state is not None:
                        return
                raise TimeoutError(f"no reaction to guard {kind.name}")

            await guard(GuardStateKind.UP, True)
            assert p.state is not None and not p.state.want_online
            await guard(GuardStateKind.DOWN, False)
            assert p.state is not None and p.state.want_online

            # punchd asks for offline: honoured while punchd is alive
            for _ in range(int(TIMEOUT * 10)):
                p.punchd.publish(SignalPolicy(False, "test"))
                await asyncio.sleep(0.1)
                if offline():
                    break
            assert offline()
            address = p.state.address
            for _ in range(int(TIMEOUT * 10)):
                p.punchd.publish(SignalPolicy(True, "test"))
                await asyncio.sleep(0.1)
                if not offline():
                    break
            assert not offline() and p.state.address == address  # same identity
        assert s.stop() == 0
    finally:
        s.close()


async def test_bootstraps_again_when_the_node_comes_back(node: BootstrapNode) -> None:
    node.stop()  # the network is away when signald starts: its first bootstrap goes nowhere
    s = SignaldProcess("sn", node)
    try:
        s.start()
        async with BusProbe(s.runtime_dir) as p:
            await p.wait_for(
                lambda: p.state is not None and p.state.state == K.BOOTSTRAPPING,
                TIMEOUT,
                "bootstrapping",
            )
            await asyncio.sleep(1.0)  # let the first bootstrap go out and be lost
            node.start()  # same keys, same ports
            await p.wait_for(
                lambda: p.state is not None and p.state.state == K.ONLINE, TIMEOUT, "online"
            )
        assert "tox.rebootstrap" in s.log_text()
    finally:
        s.close()
