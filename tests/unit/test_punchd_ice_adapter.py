"""Pins the aioice internals punchd's adapter relies on (services/punchd/ice_adapter.py).

If one of these fails after an aioice upgrade, the adapter must be revisited: the hand-off to
WireGuard depends on exactly these attributes and behaviours (design 4.3).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import aioice
import aioice.ice
import aioice.stun
import ifaddr
import pytest

from punchd import ice_adapter
from punchd.ice_adapter import IceFailed, IceSession, StunAnswer, classify_nat, parse_server
from punchguard.messages import NatKind


@pytest.fixture
def fast_timers() -> Iterator[None]:
    old = (aioice.stun.RETRY_RTO, aioice.stun.RETRY_MAX)
    ice_adapter.set_timers(0.05, 3)
    yield
    aioice.stun.RETRY_RTO, aioice.stun.RETRY_MAX = old


def test_internals_exist() -> None:
    assert aioice.__version__ == "0.13.0", "new aioice: re-check the pinned internals below"
    conn = aioice.Connection(ice_controlling=True, use_ipv6=False)
    assert conn._nominated == {}
    assert conn._protocols == []
    assert isinstance(aioice.stun.RETRY_RTO, float)
    assert isinstance(aioice.stun.RETRY_MAX, int)
    assert callable(aioice.ice.server_reflexive_candidate)
    for attr in ("local_candidate", "remote_addr"):
        assert hasattr(aioice.ice.CandidatePair, attr)


async def test_timers_are_read_when_a_transaction_starts(fast_timers: None) -> None:
    msg = aioice.stun.Message(aioice.stun.Method.BINDING, aioice.stun.Class.REQUEST)
    tx = aioice.stun.Transaction(msg, ("127.0.0.1", 9), protocol=None)  # type: ignore[arg-type]  # never sent
    assert vars(tx)["_Transaction__tries_max"] == 1 + 3
    assert vars(tx)["_Transaction__timeout_delay"] == 0.05


def test_parse_server() -> None:
    assert parse_server("198.51.100.2:3478") == ("198.51.100.2", 3478)
    assert parse_server("stun.example.org") == ("stun.example.org", 3478)
    assert parse_server("[2001:db8::1]:19302") == ("2001:db8::1", 19302)
    with pytest.raises(ValueError, match="bad server"):
        parse_server("host:99999")


def test_classify_nat() -> None:
    loc = ("10.1.0.2", 40000)
    s1, s2 = ("198.51.100.2", 3478), ("198.51.100.3", 3478)
    pub = "198.51.100.10"
    same = [StunAnswer(s1, loc, (pub, 40000)), StunAnswer(s2, loc, (pub, 40000))]
    diff = [StunAnswer(s1, loc, (pub, 1111)), StunAnswer(s2, loc, (pub, 2222))]
    assert classify_nat(same, ["10.1.0.2"]) == NatKind.ENDPOINT_INDEPENDENT
    assert classify_nat(diff, ["10.1.0.2"]) == NatKind.ENDPOINT_DEPENDENT
    assert classify_nat(same[:1], ["10.1.0.2"]) == NatKind.UNKNOWN
    assert classify_nat([], []) == NatKind.UNKNOWN
    public = [StunAnswer(s1, loc, loc)]
    assert classify_nat(public, ["10.1.0.2"]) == NatKind.NO_NAT


class StunResponder(asyncio.DatagramProtocol):
    """A minimal STUN server for the test: answers a binding request with the source address."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        req = aioice.stun.parse_message(data)
        resp = aioice.stun.Message(
            req.message_method, aioice.stun.Class.RESPONSE, transaction_id=req.transaction_id
        )
        resp.attributes["XOR-MAPPED-ADDRESS"] = addr
        self.transport.sendto(bytes(resp), addr)  # type: ignore[attr-defined]  # a DatagramTransport


async def test_gather_connect_select_and_release(fast_timers: None) -> None:
    loop = asyncio.get_running_loop()
    transports: list[asyncio.DatagramTransport] = []
    stun: list[tuple[str, int]] = []
    for _ in range(2):
        t, _p = await loop.create_datagram_endpoint(StunResponder, local_addr=("0.0.0.0", 0))
        transports.append(t)
        stun.append(("127.0.0.1", t.get_extra_info("sockname")[1]))
    a = IceSession(controlling=True, stun_servers=stun, gather_timeout=2.0)
    b = IceSession(controlling=False, stun_servers=stun, gather_timeout=2.0)
    try:
        ga, gb = await asyncio.gather(a.gather(), b.gather())
        assert ga.candidates and all("typ host" in c for c in ga.candidates)
        assert ga.nat == NatKind.NO_NAT  # the answers show our own address
        assert len(ga.answers) >= 2
        pa, pb = await asyncio.wait_for(
            asyncio.gather(
                a.connect(gb.ufrag, gb.pwd, (*gb.candidates, "garbage")),
                b.connect(ga.ufrag, ga.pwd, ga.candidates),
            ),
            10,
        )
        # the selected pair: a's host port is the listen port, b's host address the endpoint
        assert pa.local_type == "host" and pa.remote_port == pb.local_port
        assert pb.remote_port == pa.local_port
        nominated = a.connection._nominated[1]
        assert nominated.local_candidate.port == pa.local_port
        assert nominated.remote_candidate.type == pa.remote_type
    finally:
        await a.close()
        await b.close()
        await a.close()  # idempotent
        for t in transports:
            t.close()
    # the socket is released: WireGuard can bind the same port now
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((pa.local_host, pa.local_port))
    finally:
        sock.close()


async def test_no_remote_candidates_fails_once_end_is_signalled(fast_timers: None) -> None:
    a = IceSession(controlling=True, stun_servers=[], gather_timeout=1.0)
    try:
        await a.gather()
        with pytest.raises(IceFailed):
            await asyncio.wait_for(a.connect("abcd", "p" * 22, []), 10)
    finally:
        await a.close()


def test_excluded_interfaces_yield_no_host_address(monkeypatch: pytest.MonkeyPatch) -> None:
    # aioice asks this module function for host addresses when it gathers (pinned here)
    assert callable(aioice.ice.get_host_addresses)
    adapters = [
        ifaddr.Adapter("eth0", "eth0", [ifaddr.IP("10.1.0.2", 24, "eth0")]),
        ifaddr.Adapter("pgtest", "pgtest", [ifaddr.IP("10.186.1.1", 24, "pgtest")]),
    ]
    monkeypatch.setattr(ifaddr, "get_adapters", lambda: adapters)
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    ice_adapter.exclude_interfaces(["pgtest"])
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["10.1.0.2"]
