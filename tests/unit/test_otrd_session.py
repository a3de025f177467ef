"""The OTR session core, two (or three) of them over a fake in-memory link."""

from __future__ import annotations

import base64
import random
from collections import deque

import pytest

from otrd.identity import fingerprint
from otrd.potr_compat import OtrDSAKey, generate_key
from otrd.session import MAX_MESSAGE, QUERY, OtrSession, Role, Timing
from punchguard.messages import Error, Message, OtrRecv, OtrState, OtrStateKind, SignalSend

T = Timing(retry_initial=1.0, retry_max=8.0)


@pytest.fixture(scope="module")
def keys() -> dict[str, OtrDSAKey]:
    ks = sorted((generate_key() for _ in range(2)), key=fingerprint)
    return {"low": ks[0], "high": ks[1], "mallory": generate_key()}


class Link:
    """Carries SignalSend between two sessions, in order; records what each side got."""

    def __init__(self, a: OtrSession, b: OtrSession) -> None:
        self.peer = {id(a): b, id(b): a}
        self.queue: deque[tuple[OtrSession, bytes]] = deque()
        self.got: dict[int, list[Message]] = {id(a): [], id(b): []}
        self.wire: list[bytes] = []
        self.drop_next = 0
        self.now = 100.0

    def out(self, src: OtrSession, msgs: list[Message]) -> None:
        for m in msgs:
            if isinstance(m, SignalSend):
                assert len(m.payload) <= MAX_MESSAGE
                self.wire.append(m.payload)
                if self.drop_next:
                    self.drop_next -= 1
                    continue
                self.queue.append((self.peer[id(src)], m.payload))
            else:
                self.got[id(src)].append(m)

    def run(self) -> None:
        steps = 0
        while self.queue:
            steps += 1
            assert steps < 1000
            dst, payload = self.queue.popleft()
            self.out(dst, dst.wire_received(payload, self.now))

    def received(self, s: OtrSession) -> list[bytes]:
        return [m.payload for m in self.got[id(s)] if isinstance(m, OtrRecv)]

    def errors(self, s: OtrSession) -> list[Error]:
        return [m for m in self.got[id(s)] if isinstance(m, Error)]


def state_of(s: OtrSession) -> OtrStateKind:
    return s.state  # a call, so that mypy does not narrow the attribute across events


def pair(keys: dict[str, OtrDSAKey], **kw: bytes) -> tuple[OtrSession, OtrSession, Link]:
    low = OtrSession(keys["low"], fingerprint(keys["high"]), now=0.0, timing=T, **kw)
    high = OtrSession(keys["high"], fingerprint(keys["low"]), now=0.0, timing=T, **kw)
    return low, high, Link(low, high)


def connect(low: OtrSession, high: OtrSession, link: Link) -> None:
    link.out(high, high.peer_online(link.now))
    link.out(low, low.peer_online(link.now))
    link.run()
    assert low.state == high.state == OtrStateKind.SECURE


def test_roles_follow_fingerprints(keys: dict[str, OtrDSAKey]) -> None:
    low, high, _ = pair(keys)
    assert low.role is Role.INITIATOR
    assert high.role is Role.RESPONDER


def test_ake_and_data_both_ways(keys: dict[str, OtrDSAKey]) -> None:
    low, high, link = pair(keys)
    connect(low, high, link)
    assert low.peer_fingerprint == fingerprint(keys["high"]) and low.verified
    assert high.peer_fingerprint == fingerprint(keys["low"]) and high.verified
    link.out(low, low.send(b"\x00ice\xff", link.now))
    link.out(high, high.send(b"back", link.now))
    link.run()
    assert link.received(high) == [b"\x00ice\xff"]
    assert link.received(low) == [b"back"]
    state = high.state_message()
    assert isinstance(state, OtrState) and state.verified and state.state == OtrStateKind.SECURE


def test_responder_query_starts_ake(keys: dict[str, OtrDSAKey]) -> None:
    low, high, link = pair(keys)
    first = high.peer_online(link.now)
    assert SignalSend(QUERY) in first
    link.out(high, first)
    link.run()  # the initiator answers the query with an AKE even before signald says online
    assert low.state == high.state == OtrStateKind.SECURE


def test_fragmentation_of_2kb(keys: dict[str, OtrDSAKey]) -> None:
    low, high, link = pair(keys)
    connect(low, high, link)
    payload = bytes(range(256)) * 8
    before = len(link.wire)
    link.out(low, low.send(payload, link.now))
    frags = link.wire[before:]
    assert len(frags) >= 2 and all(f.startswith(b"?OTR,") for f in frags)
    link.run()
    assert link.received(high) == [payload]


def test_not_secure_send_is_refused(keys: dict[str, OtrDSAKey]) -> None:
    low, _high, _link = pair(keys)
    out = low.send(b"x", 0.0)
    assert len(out) == 1 and isinstance(out[0], Error) and out[0].code == "otr_not_secure"


def test_plaintext_refused(keys: dict[str, OtrDSAKey]) -> None:
    low, high, link = pair(keys)
    connect(low, high, link)
    out = high.wire_received(b"hello in the clear", link.now)
    out += high.wire_received(b"tagged \x20\x09\x20\x20\x09\x09\x09\x09 text", link.now)
    assert not [m for m in out if isinstance(m, OtrRecv)]
    assert high.counters["plaintext_refused"] == 2
    assert high.state == OtrStateKind.SECURE


def test_garbage_is_counted_not_raised(keys: dict[str, OtrDSAKey]) -> None:
    low, high, link = pair(keys)
    connect(low, high, link)
    for junk in (b"?OTR:AAM", b"?OTR:AAMD!!!!.", b"?OTR,1,2,abc,", b"?OTR,1,99999,x,", b"\xff"):
        out = high.wire_received(junk, link.now)
        assert not [m for m in out if isinstance(m, OtrRecv)]
    assert high.state == OtrStateKind.SECURE
    assert high.counters["too_many_fragments"] == 1


def test_wrong_fingerprint_fails_and_delivers_nothing(keys: dict[str, OtrDSAKey]) -> None:
    # low (the initiator) expects "high" but mallory answers the AKE; mallory pins low, so
    # mallory goes SECURE and sends at once, right behind its last AKE message
    victim = OtrSession(keys["low"], fingerprint(keys["high"]), now=0.0, timing=T)
    mallory = OtrSession(keys["mallory"], fingerprint(keys["low"]), now=0.0, timing=T)

    class EagerMallory(Link):
        sent = False

        def out(self, src: OtrSession, msgs: list[Message]) -> None:
            super().out(src, msgs)
            if src is mallory and mallory.secure and not self.sent:
                self.sent = True
                super().out(mallory, mallory.send(b"evil", self.now))

    link = EagerMallory(victim, mallory)
    link.out(victim, victim.peer_online(link.now))
    link.run()
    assert link.sent
    assert victim.role is Role.INITIATOR
    assert victim.state == OtrStateKind.FAILED
    assert "fingerprint mismatch" in victim.reason
    assert fingerprint(keys["mallory"]) in victim.reason
    assert not victim.verified
    assert link.received(victim) == []
    assert state_of(mallory) == OtrStateKind.FINISHED  # the victim ended the session


def test_no_pin_is_a_failure(keys: dict[str, OtrDSAKey]) -> None:
    s = OtrSession(keys["low"], "", now=0.0, timing=T)
    assert s.state == OtrStateKind.FAILED and "pinned" in s.reason
    assert s.peer_online(1.0) == []
    own = OtrSession(keys["low"], fingerprint(keys["low"]), now=0.0, timing=T)
    assert own.state == OtrStateKind.FAILED and "own" in own.reason


def test_stalled_ake_is_retried_with_backoff(keys: dict[str, OtrDSAKey]) -> None:
    low, high, link = pair(keys)
    link.drop_next = 1  # the first DH-Commit is lost
    link.out(low, low.peer_online(link.now))
    link.run()
    assert low.state == OtrStateKind.AKE
    assert low.tick(link.now + 0.5) == []
    deadline = low.next_deadline()
    assert deadline == link.now + 1.0
    link.now = deadline
    link.out(low, low.tick(link.now))
    link.run()
    assert low.state == high.state == OtrStateKind.SECURE
    assert low.next_deadline() is None


def test_backoff_doubles_to_the_cap(keys: dict[str, OtrDSAKey]) -> None:
    low, _high, _ = pair(keys)
    now = 0.0
    low.peer_online(now)
    gaps = []
    for _ in range(6):
        deadline = low.next_deadline()
        assert deadline is not None
        gaps.append(deadline - now)
        now = deadline
        assert low.tick(now)  # a new DH-Commit each time
    assert gaps == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


@pytest.mark.parametrize("restarted", ["low", "high"])
def test_restart_of_either_side_reestablishes(keys: dict[str, OtrDSAKey], restarted: str) -> None:
    low, high, link = pair(keys)
    connect(low, high, link)
    # a fresh process: same key, no session; it sees the peer online at start
    if restarted == "low":
        low = OtrSession(keys["low"], fingerprint(keys["high"]), now=0.0, timing=T)
        new, other = low, high
    else:
        high = OtrSession(keys["high"], fingerprint(keys["low"]), now=0.0, timing=T)
        new, other = high, low
    link = Link(low, high)
    link.out(other, other.send(b"stale", link.now))  # sent with the old keys: lost
    link.run()
    link.out(new, new.peer_online(link.now))
    link.run()
    assert low.state == high.state == OtrStateKind.SECURE
    link.out(other, other.send(b"fresh", link.now))
    link.out(new, new.send(b"hi", link.now))
    link.run()
    assert link.received(new) == [b"fresh"]
    assert link.received(other) == [b"hi"]


def test_session_end_by_peer_then_restart(keys: dict[str, OtrDSAKey]) -> None:
    low, high, link = pair(keys)
    connect(low, high, link)
    link.out(high, high.close(link.now))
    link.run()
    assert state_of(high) == OtrStateKind.NO_SESSION
    assert state_of(low) == OtrStateKind.FINISHED
    assert low.send(b"x", link.now)[0] == Error(
        "otr_not_secure", "no secure OTR session (finished)"
    )
    deadline = low.next_deadline()
    assert deadline is not None
    link.now = deadline
    link.out(low, low.tick(link.now))
    link.run()
    assert low.state == high.state == OtrStateKind.SECURE


def test_peer_offline_drops_session_and_online_renews(keys: dict[str, OtrDSAKey]) -> None:
    low, high, link = pair(keys)
    connect(low, high, link)
    out = low.peer_offline(link.now)
    assert low.state == OtrStateKind.NO_SESSION and out
    link.out(low, low.peer_online(link.now))
    link.run()
    assert low.state == high.state == OtrStateKind.SECURE
    link.out(low, low.send(b"again", link.now))
    link.run()
    assert link.received(high) == [b"again"]


def test_stale_peer_data_triggers_recovery(keys: dict[str, OtrDSAKey]) -> None:
    low, high, link = pair(keys)
    connect(low, high, link)
    high.peer_offline(link.now)  # high forgot the session; low did not notice
    high.peer_online_now = True  # ...and high's signald never said offline to it
    link.out(low, low.send(b"lost", link.now))
    link.run()  # high answers with an OTR error; low (initiator) runs a new AKE
    assert low.state == high.state == OtrStateKind.SECURE
    assert high.counters["undecryptable"] == 1


def test_smp_right_secret(keys: dict[str, OtrDSAKey]) -> None:
    low, high, link = pair(keys, smp_secret=b"correct horse")
    connect(low, high, link)
    link.out(low, low.smp_start(b"correct horse", link.now))
    link.run()
    assert low.smp_result is True
    assert high.smp_result is True


def test_smp_wrong_secret_fails_including_abort(keys: dict[str, OtrDSAKey]) -> None:
    low, high, link = pair(keys, smp_secret=b"battery staple")
    connect(low, high, link)
    link.out(low, low.smp_start(b"correct horse", link.now))
    link.run()
    assert high.smp_result is False
    assert low.smp_result is False  # the initiator sees the responder's abort


def test_smp_without_secret_aborts(keys: dict[str, OtrDSAKey]) -> None:
    low, high, link = pair(keys)
    connect(low, high, link)
    link.out(low, low.smp_start(b"anything", link.now))
    link.run()
    assert high.smp_result is False and low.smp_result is False


def test_payload_roundtrip_is_base64_inside_otr(keys: dict[str, OtrDSAKey]) -> None:
    low, high, link = pair(keys)
    connect(low, high, link)
    high._ctx.sendMessage(0, b"not base64 !!")  # a peer that ignores our encoding
    link.out(high, high._flush())
    link.run()
    assert link.received(low) == []
    assert low.counters["bad_payload"] == 1
    assert base64.b64decode(base64.b64encode(b"\x00")) == b"\x00"


def test_query_crossing_our_commit_starts_no_second_ake(keys: dict[str, OtrDSAKey]) -> None:
    low, high, link = pair(keys)
    commit = low.peer_online(link.now)
    assert len(commit) >= 1
    assert low.wire_received(QUERY, link.now) == []  # our DH-Commit is already on its way
    later = low.wire_received(QUERY, link.now + T.retry_initial)  # an old one: start again
    assert any(isinstance(m, SignalSend) and m.payload.startswith(b"?OTR:AAIC") for m in later)
    link.out(low, later)
    link.run()
    assert low.state == high.state == OtrStateKind.SECURE


def test_peer_online_after_answering_a_query_sends_no_second_commit(
    keys: dict[str, OtrDSAKey],
) -> None:
    low, high, link = pair(keys)
    link.out(high, high.peer_online(link.now))  # the responder's query reaches low first...
    pending = list(link.queue)
    link.queue.clear()
    dst, payload = pending[0]
    answer = dst.wire_received(payload, link.now)
    assert len(answer) >= 1  # ...which answers with a DH-Commit
    assert low.peer_online(link.now) == []  # ...so signald's "online" adds nothing
    link.out(low, answer)
    link.run()
    assert low.state == high.state == OtrStateKind.SECURE
    assert low.counters["bad_message"] == high.counters["bad_message"] == 0


def test_mutated_wire_messages_never_raise_or_deliver(keys: dict[str, OtrDSAKey]) -> None:
    rng = random.Random(4)
    low, high, link = pair(keys)
    connect(low, high, link)
    link.out(low, low.send(bytes(range(256)) * 8, link.now))
    link.queue.clear()  # keep the wire copies only
    samples = list(link.wire)
    for _ in range(300):
        data = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        out = high.wire_received(bytes(data), link.now)  # must not raise
        assert not [m for m in out if isinstance(m, OtrRecv)]
    link.queue.clear()
    # the session still works (or re-establishes) afterwards
    link.out(low, low.tick(link.now + 100))
    link.out(high, high.tick(link.now + 100))
    link.run()
    link.out(low, low.send(b"still fine", link.now))
    link.run()
    assert b"still fine" in link.received(high)
