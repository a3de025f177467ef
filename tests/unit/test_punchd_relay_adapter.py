"""Pins the aioice TURN internals relay_adapter.py relies on (see its docstring), against a real
coturn on loopback (skipped without ``turnserver``), plus the STUN/WireGuard demultiplexing."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aioice
import aioice.ice
import aioice.turn
import pytest

from punchd.relay import Forwarder
from punchd.relay_adapter import TurnAllocation, detach_relay, is_stun

USER, PASSWORD, REALM = "punch", "guard", "test.punchguard"


def test_aioice_turn_internals_are_where_we_expect() -> None:
    assert aioice.__version__ == "0.13.0"  # re-check relay_adapter.py before moving on
    mixin = aioice.turn.TurnClientMixin
    for name in ("channel_bind", "send_data", "delete", "refresh", "connect"):
        assert callable(getattr(mixin, name, None)), name
    for cls in (aioice.turn.TurnClientUdpProtocol, aioice.turn.TurnClientTcpProtocol):
        assert callable(getattr(cls, "_send", None)), cls
    inner = aioice.turn.TurnClientUdpProtocol(("127.0.0.1", 3478), "u", "p", 600, 500)
    for attr in ("peer_to_channel", "channel_to_peer", "channel_refresh_at", "receiver",
                 "refresh_task", "channel_refresh_time", "server"):  # fmt: skip
        assert hasattr(inner, attr), attr
    outer = aioice.turn.TurnTransport(inner)
    assert outer._TurnTransport__inner_protocol is inner  # type: ignore[attr-defined]  # name-mangled private we rely on
    conn = aioice.Connection(ice_controlling=True)
    assert conn._nominated == {} and conn._protocols == []


def test_is_stun_tells_stun_from_wireguard() -> None:
    binding = bytes(aioice.stun.Message(aioice.stun.Method.BINDING, aioice.stun.Class.REQUEST))
    assert is_stun(binding)
    wg_initiation = b"\x01\x00\x00\x00" + bytes(144)
    wg_data = b"\x04\x00\x00\x00" + bytes(60)
    assert not is_stun(wg_initiation) and not is_stun(wg_data) and not is_stun(b"")


@pytest.fixture
def coturn() -> Iterator[tuple[str, int]]:
    if shutil.which("turnserver") is None:
        pytest.skip("coturn (turnserver) is not installed")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="pgturn") as d:
        argv = ["turnserver", "-n", "--no-tls", "--no-dtls", "--no-cli", "--listening-ip=127.0.0.1",
                f"--listening-port={port}", "--relay-ip=127.0.0.1", f"--pidfile={d}/t.pid",
                f"--userdb={d}/t.db", "--log-file=stdout", "--lt-cred-mech",
                f"--user={USER}:{PASSWORD}", f"--realm={REALM}", "--allow-loopback-peers",
                "--min-port=40000", "--max-port=60000"]  # fmt: skip
        log = open(Path(d) / "log", "wb")  # noqa: SIM115  # closed below
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 10
            while (
                f"127.0.0.1:{port} "
                not in subprocess.run(["ss", "-Hlun"], capture_output=True, text=True).stdout
            ):
                assert proc.poll() is None and time.monotonic() < deadline, "coturn did not start"
                time.sleep(0.05)
            yield "127.0.0.1", port
        finally:
            proc.terminate()
            proc.wait(5)
            log.close()


class _Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.put_nowait((data, addr))


async def _forward_through_real_turn(server: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    # the "peer": a plain UDP socket (as a non-relayed WireGuard would be)
    peer_t, peer = await loop.create_datagram_endpoint(_Sink, local_addr=("127.0.0.1", 0))
    peer_addr = peer_t.get_extra_info("sockname")[:2]
    # "WireGuard": a plain UDP socket on the port the forwarder sends to
    wg_t, wg = await loop.create_datagram_endpoint(_Sink, local_addr=("127.0.0.1", 0))
    wg_port = wg_t.get_extra_info("sockname")[1]
    outer, proto = await aioice.turn.create_turn_endpoint(
        asyncio.DatagramProtocol, server_addr=server, username=USER, password=PASSWORD
    )
    inner = outer._TurnTransport__inner_protocol  # type: ignore[attr-defined]  # pinned above
    relayed = outer.get_extra_info("sockname")
    alloc = TurnAllocation(inner, relayed, server)
    fwd = Forwarder(wg_port, refresh_every=0.3)
    try:
        await fwd.open()
        await alloc.bind(peer_addr)  # the channel (and permission) ICE's checks would have made
        assert alloc.channel(peer_addr) is not None
        fwd.attach(alloc, peer_addr)
        # WireGuard -> forwarder -> TURN -> peer, arriving from the relayed address
        wg_t.sendto(b"\x04\x00\x00\x00hello", ("127.0.0.1", fwd.port))
        data, src = await asyncio.wait_for(peer.got.get(), 5)
        if data == b"":  # the empty datagram of bind()'s first channel binding
            data, src = await asyncio.wait_for(peer.got.get(), 5)
        assert data == b"\x04\x00\x00\x00hello" and src == tuple(relayed)
        # peer -> relayed address -> TURN -> forwarder -> WireGuard
        peer_t.sendto(b"\x04\x00\x00\x00back", tuple(relayed))
        data, src = await asyncio.wait_for(wg.got.get(), 5)
        assert data == b"\x04\x00\x00\x00back" and src == ("127.0.0.1", fwd.port)
        # anyone else on loopback is not WireGuard: dropped
        peer_t.sendto(b"\x04\x00\x00\x00spoof", ("127.0.0.1", fwd.port))
        await asyncio.sleep(0.2)
        assert fwd.counters["drop_not_wireguard"] == 1 and peer.got.empty()
        # the channel/permission refresh runs (a real ChannelBind transaction)
        await asyncio.sleep(1.0)
        assert fwd.counters["refreshes"] >= 1 and fwd.counters["refresh_errors"] == 0
        assert alloc.alive
    finally:
        await fwd.close()
        peer_t.close()
        wg_t.close()
    assert not alloc.alive  # deleted and closed
    del proto


def test_forwarder_through_a_real_coturn(coturn: tuple[str, int]) -> None:
    asyncio.run(_forward_through_real_turn(coturn))


async def _detach(server: tuple[str, int]) -> None:
    # two agents, one with TURN, checks between host candidates would win: force the relay by
    # offering only the relay candidate to the peer and only the peer's host candidate to it
    a = aioice.Connection(
        ice_controlling=True, components=1, turn_server=server, turn_username=USER,
        turn_password=PASSWORD,
    )  # fmt: skip
    b = aioice.Connection(ice_controlling=False, components=1)
    try:
        await asyncio.gather(a.gather_candidates(), b.gather_candidates())
        for p in [p for p in a._protocols if p.local_candidate.type != "relay"]:
            a._protocols.remove(p)  # a may only use its relay (else host <-> host wins)
            await p.close()
        relay = [c for c in a.local_candidates if c.type == "relay"]
        assert relay, "no relay candidate from coturn"
        host_b = [c for c in b.local_candidates if c.host == "127.0.0.1"] or b.local_candidates
        a.remote_username, a.remote_password = b.local_username, b.local_password
        b.remote_username, b.remote_password = a.local_username, a.local_password
        for c in host_b:
            await a.add_remote_candidate(c)
        await a.add_remote_candidate(None)
        await b.add_remote_candidate(relay[0])
        await b.add_remote_candidate(None)
        await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), 20)
        assert a._nominated[1].local_candidate.type == "relay"
        alloc = detach_relay(a)
        assert alloc is not None and alloc.relayed == (relay[0].host, relay[0].port)
        await a.close()  # must not delete the detached allocation
        assert alloc.alive
        assert detach_relay(b) is None  # b's local candidate is a host one
        await alloc.close()
        assert not alloc.alive
    finally:
        await a.close()
        await b.close()


def test_detach_relay_keeps_the_allocation_past_close(coturn: tuple[str, int]) -> None:
    asyncio.run(_detach(coturn))
