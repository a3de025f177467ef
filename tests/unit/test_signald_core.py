"""signald's pure core: state machine, policy, peer filtering, payload limits, backoff."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from punchguard.config import ToxNode
from punchguard.messages import GuardStateKind, SignalStateKind, Transport
from signald import core
from signald.core import (
    AddFriend,
    Bootstrap,
    Command,
    DeleteFriend,
    PublishError,
    PublishRecv,
    PublishState,
    Save,
    SendPacket,
    SignalCore,
    StartTox,
    StopTox,
)

PEER_KEY = bytes(range(32))
PEER_ADDRESS = (
    PEER_KEY + b"\x01\x02\x03\x04" + core.address_checksum(PEER_KEY + b"\x01\x02\x03\x04")
).hex()
OWN_ADDRESS = bytes([0xAA] * 38)
STRANGER = bytes([0x55] * 32)
NODES = (ToxNode("127.0.0.1", 33445, "00" * 32, 33445),)


def make(peer: str = PEER_ADDRESS, mode: str = "on-demand") -> SignalCore:
    return SignalCore(peer_address=peer, nodes=NODES, mode=mode, log=structlog.get_logger())


def kinds(cmds: list[Command]) -> list[type]:
    return [type(c) for c in cmds]


def states(cmds: list[Command]) -> list[SignalStateKind]:
    return [c.state.state for c in cmds if isinstance(c, PublishState)]


def online(c: SignalCore, friends: dict[int, bytes] | None = None) -> SignalCore:
    assert StartTox() in c.start(0.0)
    c.tox_started(1.0, OWN_ADDRESS, {0: PEER_KEY} if friends is None else friends)
    c.self_connection(2.0, Transport.TCP)
    return c


def test_address_parsing() -> None:
    assert core.parse_address(PEER_ADDRESS)[:32] == PEER_KEY
    assert core.parse_address(PEER_ADDRESS.upper())[:32] == PEER_KEY
    with pytest.raises(core.PeerAddressError, match="76"):
        core.parse_address(PEER_ADDRESS[:-2])
    with pytest.raises(core.PeerAddressError, match="hex"):
        core.parse_address("zz" + PEER_ADDRESS[2:])
    bad = PEER_ADDRESS[:-1] + ("0" if PEER_ADDRESS[-1] != "0" else "1")
    with pytest.raises(core.PeerAddressError, match="checksum"):
        core.parse_address(bad)


def test_start_goes_through_the_states() -> None:
    c = make()
    cmds = c.start(0.0)
    assert states(cmds) == [SignalStateKind.OFFLINE]
    assert StartTox() in cmds
    cmds = c.tox_started(1.0, OWN_ADDRESS, {0: PEER_KEY})
    assert cmds[0] == Bootstrap(NODES)
    assert states(cmds) == [SignalStateKind.BOOTSTRAPPING]
    assert c.state.address == OWN_ADDRESS.hex().upper()
    assert c.state.peer_public_key == PEER_KEY.hex().upper()
    assert c.state.max_payload == core.MAX_PAYLOAD
    assert not any(isinstance(x, AddFriend | Save) for x in cmds)  # already friends
    assert states(c.self_connection(8.0, Transport.TCP)) == [SignalStateKind.ONLINE]
    assert c.state.since == 8.0
    cmds = c.friend_connection(9.0, 0, Transport.UDP)
    assert states(cmds) == [SignalStateKind.PEER_ONLINE]
    assert (c.state.peer_conn, c.state.peer_since, c.state.self_conn) == (
        Transport.UDP,
        9.0,
        Transport.TCP,
    )
    # a transport change alone republishes with a new peer_since
    cmds = c.friend_connection(9.5, 0, Transport.TCP)
    assert states(cmds) == [SignalStateKind.PEER_ONLINE]
    assert c.state.peer_since == 9.5 and c.state.since == 9.0
    assert states(c.friend_connection(10.0, 0, Transport.NONE)) == [SignalStateKind.ONLINE]


def test_friend_list_reconciled_to_the_peer_only() -> None:
    c = make()
    c.start(0.0)
    cmds = c.tox_started(1.0, OWN_ADDRESS, {0: STRANGER, 1: bytes(32)})
    assert DeleteFriend(0) in cmds and DeleteFriend(1) in cmds
    assert AddFriend(PEER_KEY) in cmds
    assert kinds(cmds).index(Save) > kinds(cmds).index(AddFriend)
    c.friend_added(2)
    assert c.peer_friend == 2


def test_strangers_are_ignored_and_counted() -> None:
    c = online(make(), {3: PEER_KEY})
    c.friend_connection(3.0, 3, Transport.UDP)
    assert states(c.friend_request(4.0, STRANGER)) == [SignalStateKind.PEER_ONLINE]
    assert c.state.ignored_requests == 1
    assert c.lossless_packet(4.0, 7, bytes([core.PACKET_ID]) + b"x") != [PublishRecv(b"x")]
    assert c.friend_connection(4.0, 7, Transport.UDP) == []  # not the peer: no state change
    c.friend_message(4.0, 3, 5)  # text messages are not our channel, even from the peer
    c.lossless_packet(4.0, 3, bytes([core.PACKET_ID + 1]) + b"x")  # wrong packet id
    assert c.state.ignored_messages == 3
    assert c.lossless_packet(5.0, 3, bytes([core.PACKET_ID]) + b"hello") == [PublishRecv(b"hello")]
    assert c.lossless_packet(5.0, 3, bytes([core.PACKET_ID])) == [PublishRecv(b"")]


def test_payload_limits() -> None:
    c = online(make())
    assert c.send(b"x", 1)[0].code == "peer_offline"  # type: ignore[union-attr]  # PublishError
    c.friend_connection(3.0, 0, Transport.TCP)
    biggest = b"\x00" * core.MAX_PAYLOAD
    assert c.send(biggest, 2) == [SendPacket(0, bytes([core.PACKET_ID]) + biggest, 2)]
    cmds = c.send(biggest + b"\x00", 3)
    assert len(cmds) == 1 and isinstance(cmds[0], PublishError)
    assert (cmds[0].code, cmds[0].ref_type, cmds[0].ref_seq) == (
        "payload_too_large",
        "signal.send",
        3,
    )
    err = c.send_failed("SENDQ", 4)[0]
    assert isinstance(err, PublishError) and err.code == "tox_sendq" and err.ref_seq == 4


def test_send_refused_without_peer_or_offline() -> None:
    c = make(peer="")
    c.start(0.0)
    assert c.send(b"x", 1)[0].code == "no_peer"  # type: ignore[union-attr]  # PublishError
    c.tox_started(1.0, OWN_ADDRESS, {0: STRANGER})
    assert c.state.reason == "no peer configured"
    c2 = make()
    assert c2.send(b"x", 1)[0].code == "offline"  # type: ignore[union-attr]  # PublishError


def test_bad_peer_address_is_an_error_state() -> None:
    c = make(peer="1234")
    cmds = c.start(0.0)
    assert states(cmds) == [SignalStateKind.ERROR]
    assert "tox_address" in c.state.reason
    assert StartTox() not in cmds


def test_tox_failure_is_an_error_state() -> None:
    c = online(make())
    cmds = c.tox_failed(5.0, "tox_new: LOAD_BAD_FORMAT")
    assert StopTox() in cmds
    assert c.state.state == SignalStateKind.ERROR and "LOAD_BAD_FORMAT" in c.state.reason
    assert c.tick(5.0 + core.RETRY_FAILED - 1) == []
    assert c.tick(5.0 + core.RETRY_FAILED) == [StartTox()]  # ERROR stays until it works
    assert c.state.state == SignalStateKind.ERROR
    assert states(c.tox_started(40.0, OWN_ADDRESS, {0: PEER_KEY})) == [
        SignalStateKind.BOOTSTRAPPING
    ]
    assert c.state.reason == ""


def test_on_demand_follows_guard_level_triggered() -> None:
    c = online(make())
    cmds = c.guard_state(3.0, GuardStateKind.HANDSHAKING)
    assert cmds == []
    cmds = c.guard_state(4.0, GuardStateKind.UP)
    assert StopTox() in cmds and not c.want_online
    assert states(c.tox_stopped(4.1)) == [SignalStateKind.OFFLINE]
    assert c.state.reason == "policy: offline" and not c.state.want_online
    assert c.guard_state(5.0, GuardStateKind.UP) == []  # a heartbeat repeat: no-op
    assert StartTox() in c.guard_state(6.0, GuardStateKind.DOWN)


def test_on_demand_stays_online_while_punchd_asks_for_it() -> None:
    # a relayed path: punchd keeps signaling up to retry a direct punch (docs/turn.md)
    c = online(make())
    assert c.policy(3.0, True, "relayed: retrying direct") == []
    assert c.guard_state(3.5, GuardStateKind.UP) == []  # on-demand, tunnel up: still online
    assert c.want_online
    # punchd stops asking (the path went direct): the on-demand rule applies again
    assert StopTox() in c.tick(3.0 + core.STALE_AFTER + 0.1)


def test_stale_guard_state_is_forgotten() -> None:
    c = online(make())
    c.guard_state(3.0, GuardStateKind.UP)
    c.tox_stopped(3.1)
    assert c.tick(3.0 + core.STALE_AFTER - 0.1) == []
    assert StartTox() in c.tick(3.0 + core.STALE_AFTER + 0.1)


def test_always_mode_ignores_guard_but_obeys_punchd() -> None:
    c = online(make(mode="always"))
    assert c.guard_state(3.0, GuardStateKind.UP) == []
    c.punchd_alive(3.5)
    assert StopTox() in c.policy(4.0, False, "test")
    c.tox_stopped(4.0)
    c.punchd_alive(6.0)
    assert c.tick(8.0) == []  # punchd still alive: its wish holds
    assert StartTox() in c.tick(6.0 + core.STALE_AFTER + 0.1)  # punchd went silent
    c2 = online(make(mode="always"))
    c2.policy(3.0, False, "")
    c2.tox_stopped(3.0)
    assert StartTox() in c2.policy(4.0, True, "")


def test_bootstrap_backoff_and_reset() -> None:
    c = make()
    c.start(0.0)
    c.tox_started(0.0, OWN_ADDRESS, {0: PEER_KEY})
    assert c.tick(9.0) == []
    times: list[float] = []
    t = 9.0
    while len(times) < 5:
        t += 0.5
        if Bootstrap(NODES) in c.tick(t):
            times.append(t)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == pytest.approx(10.0, abs=0.6)
    assert gaps == pytest.approx([20.0, 40.0, 60.0, 60.0], abs=0.6)
    c.self_connection(t, Transport.UDP)
    assert Bootstrap(NODES) in c.tick(t + 61)  # online, but the peer is not there yet: go on
    c.friend_connection(t + 62, 0, Transport.UDP)
    assert c.tick(t + 1000) == []  # the peer is connected: no more bootstraps
    c.friend_connection(t + 1000, 0, Transport.NONE)  # the peer went away: from 10 s again
    assert c.tick(t + 1000 + 7.9) == []
    assert Bootstrap(NODES) in c.tick(t + 1000 + 12.1)
    cmds = c.self_connection(t + 1001, Transport.NONE)  # the network went away
    assert Bootstrap(NODES) in cmds and states(cmds) == [SignalStateKind.BOOTSTRAPPING]
    assert Bootstrap(NODES) in c.tick(t + 1001 + 12.1)


def test_without_peer_bootstrap_stops_when_connected() -> None:
    c = make(peer="")
    c.start(0.0)
    c.tox_started(0.0, OWN_ADDRESS, {})
    c.self_connection(8.0, Transport.TCP)
    assert c.tick(1000.0) == []


def test_jitter_spreads_the_backoff() -> None:
    c = SignalCore(
        peer_address=PEER_ADDRESS, nodes=NODES, mode="always", log=structlog.get_logger(),
        jitter=lambda: 0.0,
    )  # fmt: skip
    c.start(0.0)
    c.tox_started(0.0, OWN_ADDRESS, {})
    assert c.next_bootstrap == pytest.approx(core.BACKOFF_FIRST * (1 - core.BACKOFF_JITTER))


EVENT = st.one_of(
    st.tuples(st.just("tick")),
    st.tuples(
        st.just("started"),
        st.dictionaries(st.integers(0, 3), st.sampled_from([PEER_KEY, STRANGER])),
    ),
    st.tuples(st.just("stopped")),
    st.tuples(st.just("failed")),
    st.tuples(st.just("self"), st.sampled_from(list(Transport))),
    st.tuples(st.just("friend"), st.integers(0, 3), st.sampled_from(list(Transport))),
    st.tuples(st.just("request")),
    st.tuples(st.just("packet"), st.integers(0, 3), st.binary(max_size=1400)),
    st.tuples(st.just("send"), st.binary(max_size=1400)),
    st.tuples(st.just("policy"), st.booleans()),
    st.tuples(st.just("guard"), st.sampled_from(list(GuardStateKind))),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 20), EVENT), max_size=40))
def test_any_event_sequence_keeps_the_invariants(
    events: list[tuple[float, tuple[Any, ...]]],
) -> None:
    c = make()
    now = 0.0
    c.start(now)
    for dt, ev in events:
        now += dt
        kind, *args = ev
        if kind == "tick":
            cmds = c.tick(now)
        elif kind == "started":
            cmds = c.tox_started(now, OWN_ADDRESS, args[0])
        elif kind == "stopped":
            cmds = c.tox_stopped(now)
        elif kind == "failed":
            cmds = c.tox_failed(now, "boom")
        elif kind == "self":
            cmds = c.self_connection(now, args[0])
        elif kind == "friend":
            cmds = c.friend_connection(now, args[0], args[1])
        elif kind == "request":
            cmds = c.friend_request(now, STRANGER)
        elif kind == "packet":
            cmds = c.lossless_packet(now, args[0], args[1])
        elif kind == "send":
            cmds = c.send(args[0], 1)
        elif kind == "policy":
            cmds = c.policy(now, args[0], "")
        else:
            cmds = c.guard_state(now, args[0])
        for cmd in cmds:
            if isinstance(cmd, SendPacket):
                assert len(cmd.data) <= core.MAX_PAYLOAD + 1 and cmd.data[0] == core.PACKET_ID
                assert c.running and cmd.friend == c.peer_friend
            if isinstance(cmd, PublishRecv):  # only the peer's packets reach the bus
                assert kind == "packet" and args[0] == c.peer_friend
        s = c.state
        assert s.state != SignalStateKind.PEER_ONLINE or c.running
        assert s.state != SignalStateKind.OFFLINE or not c.running
        assert s.since <= now
