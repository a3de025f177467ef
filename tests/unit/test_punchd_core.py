"""punchd's pure core: role choice, params encoding, the state machine, backoff."""

from __future__ import annotations

import random

import pytest

from punchd.commands import (
    CloseSession,
    Command,
    Gathered,
    PublishPath,
    PublishState,
    Selected,
    SendParams,
    StartChecks,
    StartGather,
    candidate_type,
)
from punchd.core import PunchCore, Reason, choose_role
from punchd.timers import Timers, backoff_delay
from punchguard import messages
from punchguard.messages import (
    CandidateType,
    GuardStateKind,
    IceParams,
    NatKind,
    PunchStateKind,
    Role,
)

KEY_A = "A" * 64
KEY_B = "B" * 64
ADDR_A = KEY_A + "0" * 12
ADDR_B = KEY_B + "0" * 12
HOST = "1 1 UDP 2130706431 10.1.0.2 40000 typ host"
RELAY = "2 1 UDP 16777215 198.51.100.2 50000 typ relay raddr 198.51.100.10 rport 4000"


def gathered(nat: NatKind = NatKind.ENDPOINT_INDEPENDENT, relay: bool = False) -> Gathered:
    cands = (HOST, RELAY) if relay else (HOST,)
    return Gathered("ufra", "p" * 22, cands, nat, srflx=1, relay=int(relay))


def of(cmds: list[Command], kind: type) -> list:  # type: ignore[type-arg]  # any command class
    return [c for c in cmds if isinstance(c, kind)]


def states(cmds: list[Command]) -> list[PunchStateKind]:
    return [c.state.state for c in of(cmds, PublishState)]


def ready_core(our: str, peer: str, now: float = 0.0) -> tuple[PunchCore, list[Command]]:
    core = PunchCore(Timers(), random.Random(1), now=now)
    out = core.on_keys(now, our, peer)
    out += core.on_otr(now, True)
    return core, out


def test_role_is_deterministic_and_agreed() -> None:
    assert choose_role(KEY_A, KEY_B) == Role.CONTROLLING
    assert choose_role(KEY_B, KEY_A) == Role.CONTROLLED
    assert choose_role(KEY_A.lower(), KEY_B) == Role.CONTROLLING
    assert choose_role("", KEY_B) is None
    assert choose_role(KEY_A, KEY_A) is None
    assert choose_role("xyz", KEY_B) is None


def test_ice_params_roundtrip_through_pack() -> None:
    params = IceParams(7, "ufra", "p" * 22, (HOST, RELAY), True, NatKind.ENDPOINT_DEPENDENT)
    env, msg = messages.unpack(messages.pack(params, src="punchd"))
    assert msg == params and env.src == "punchd"
    restart = IceParams(7, "", "", restart=True)
    assert messages.unpack(messages.pack(restart, src="punchd"))[1] == restart


def test_candidate_types() -> None:
    assert candidate_type("prflx") == CandidateType.PRFLX
    assert candidate_type("relay") == CandidateType.RELAY
    assert candidate_type("weird") == CandidateType.UNKNOWN


def test_backoff_grows_is_capped_and_jittered() -> None:
    timers = Timers(backoff_initial=1.0, backoff_max=60.0, backoff_jitter=0.2)
    rng = random.Random(3)
    delays = [backoff_delay(n, timers, rng) for n in range(1, 12)]
    assert 0.8 <= delays[0] <= 1.2
    assert 3.2 <= delays[2] <= 4.8
    assert all(d <= 60.0 for d in delays)
    assert delays[-1] >= 48.0
    assert len({round(backoff_delay(3, timers, rng), 6) for _ in range(20)}) > 1


def test_nothing_starts_without_keys_otr_or_with_tunnel_up() -> None:
    core = PunchCore(Timers(), random.Random(1), now=0.0)
    assert not of(core.on_otr(0.0, True), StartGather)
    assert core.reason == "waiting for signald's Tox keys"
    core.on_guard(0.0, GuardStateKind.UP, 1)
    assert not of(core.on_keys(0.0, ADDR_A, KEY_B), StartGather)
    assert core.reason == "tunnel is up"
    assert of(core.on_guard(1.0, GuardStateKind.DOWN, 1), StartGather)


def run_pair(
    nat_a: NatKind = NatKind.ENDPOINT_INDEPENDENT,
    nat_b: NatKind = NatKind.ENDPOINT_INDEPENDENT,
    succeed: bool = True,
    relay: bool = False,
) -> tuple[PunchCore, PunchCore, list[Command], list[Command]]:
    """Two cores over a fake OTR link; the runner's gather and checks are simulated."""
    a, out_a = ready_core(ADDR_A, KEY_B)
    b, out_b = ready_core(ADDR_B, KEY_A)
    assert a.role == Role.CONTROLLING and b.role == Role.CONTROLLED
    assert not of(out_b, StartGather)  # the controlled side waits
    (start,) = of(out_a, StartGather)
    assert start.controlling
    out_a += a.on_gathered(0.1, start.session, gathered(nat_a))
    (offer,) = of(out_a, SendParams)
    assert a.state == PunchStateKind.CHECKING and a.reason == "waiting for the peer's candidates"
    out_b += b.on_peer_params(0.2, offer.params)
    (start_b,) = of(out_b, StartGather)
    assert start_b.session == start.session and not start_b.controlling
    out_b += b.on_gathered(0.3, start_b.session, gathered(nat_b, relay))
    (answer,) = of(out_b, SendParams)
    assert of(out_b, StartChecks)
    out_a += a.on_peer_params(0.4, answer.params)
    assert of(out_a, StartChecks) and a.peer_nat == nat_b and b.peer_nat == nat_a
    rtype = CandidateType.RELAY if relay else CandidateType.SRFLX
    if succeed:
        pair = Selected(40000, "198.51.100.20", 61000, CandidateType.HOST, rtype)
        out_a += a.on_checks_done(0.5, start.session, pair)
        assert a.state == PunchStateKind.CHECKING and not of(out_a, CloseSession)
        out_b += b.on_checks_done(0.5, start.session, pair)
        (confirm,) = [c.params for c in of(out_b, SendParams) if c.params.connected]
        out_a += a.on_peer_params(0.55, confirm)
    else:
        out_a += a.on_checks_failed(3.5, start.session, "ICE failed")
        out_b += b.on_checks_failed(3.5, start.session, "ICE failed")
    return a, b, out_a, out_b


def test_cone_pair_connects_closes_sockets_and_publishes_the_path() -> None:
    a, b, out_a, out_b = run_pair()
    for core, out, role in ((a, out_a, Role.CONTROLLING), (b, out_b, Role.CONTROLLED)):
        assert core.state == PunchStateKind.CONNECTED
        assert of(out, CloseSession)
        (path,) = [c.path for c in of(out, PublishPath)]
        assert path.local_port == 40000 and path.endpoint_port == 61000
        assert path.role == role and not path.relayed and path.generation == 1
    expected = ["IDLE", "GATHERING", "CHECKING", "CHECKING", "CHECKING", "CONNECTED"]
    assert [s.name for s in states(out_a)] == expected


def test_relay_pair_is_reported_relayed() -> None:
    _, b, _, out_b = run_pair(relay=True)
    (path,) = [c.path for c in of(out_b, PublishPath)]
    assert path.relayed and "relayed" in b.reason


def test_failure_backs_off_with_reason_then_retries_with_new_session() -> None:
    a, b, out_a, out_b = run_pair(succeed=False)
    assert PunchStateKind.FAILED in states(out_a)
    assert a.state == PunchStateKind.BACKOFF and a.reason.startswith(Reason.CHECKS_FAILED.value)
    assert 0.8 <= a.retry_at - 3.5 <= 1.2 and a.attempt == 1
    assert b.state == PunchStateKind.FAILED
    restart = [c.params for c in of(out_b, SendParams) if c.params.restart]
    assert restart, "the controlled side asks for a new session"
    old = of(out_a, StartGather)[0].session
    assert not of(a.on_peer_params(3.6, restart[0]), StartGather)  # already backing off
    assert a.counters["stale_restart"] == 1
    assert not of(a.on_tick(a.retry_at - 0.01), StartGather)
    (again,) = of(a.on_tick(a.retry_at), StartGather)
    assert again.session != old


def test_both_symmetric_without_relay_says_so_and_retries_slowly() -> None:
    sym = NatKind.ENDPOINT_DEPENDENT
    a, _, _, _ = run_pair(sym, sym, succeed=False)
    assert a.state == PunchStateKind.BACKOFF
    assert a.reason.startswith(Reason.BOTH_SYMMETRIC.value)
    assert a.retry_at - 3.5 == pytest.approx(Timers().hopeless_retry)
    assert a.snapshot().nat == sym and a.snapshot().peer_nat == sym


def test_both_symmetric_with_a_relay_is_not_hopeless() -> None:
    sym = NatKind.ENDPOINT_DEPENDENT
    a, _, _, _ = run_pair(sym, sym, succeed=False, relay=True)
    assert a.reason.startswith(Reason.CHECKS_FAILED.value)


def test_stale_params_are_ignored_and_counted() -> None:
    a, b, _, _ = run_pair()
    old = IceParams(12345, "ufra", "p" * 22, (HOST,))
    assert not a.on_peer_params(1.0, old)
    assert a.counters["stale_params"] == 1 and a.state == PunchStateKind.CONNECTED
    # the controlled side answers a new id once, a repeat of it never
    assert of(b.on_peer_params(1.0, old), StartGather)
    assert not b.on_peer_params(1.1, old)
    assert b.counters["stale_params"] == 1


def test_peer_timeout_when_no_answer() -> None:
    a, out = ready_core(ADDR_A, KEY_B)
    (start,) = of(out, StartGather)
    a.on_gathered(0.1, start.session, gathered())
    out = a.on_tick(0.1 + Timers().answer_timeout)
    assert a.state == PunchStateKind.BACKOFF and a.reason.startswith(Reason.PEER_TIMEOUT.value)
    assert of(out, CloseSession)


def test_otr_loss_aborts_an_attempt_but_not_a_connected_path() -> None:
    a, out = ready_core(ADDR_A, KEY_B)
    out = a.on_otr(0.2, False)
    assert of(out, CloseSession) and a.reason.startswith(Reason.PEER_WENT_AWAY.value)
    a2, _, _, _ = run_pair()
    assert not of(a2.on_otr(1.0, False), CloseSession)
    assert a2.state == PunchStateKind.CONNECTED


def test_tunnel_down_for_our_generation_repunches_at_once() -> None:
    a, _, _, _ = run_pair()
    assert a.path is not None
    assert not of(a.on_guard(1.0, GuardStateKind.DOWN, a.path.generation - 1), StartGather)
    out = a.on_guard(1.0, GuardStateKind.DOWN, a.path.generation)
    assert of(out, StartGather) and a.state == PunchStateKind.GATHERING
    assert a.attempt == 0


def test_controlled_tunnel_down_asks_the_controlling_side() -> None:
    a, b, _, _ = run_pair()
    assert b.path is not None and a.path is not None
    out_b = b.on_guard(1.0, GuardStateKind.DOWN, b.path.generation)
    (req,) = [c.params for c in of(out_b, SendParams)]
    assert req.restart
    a.on_guard(1.0, GuardStateKind.UP, a.path.generation)  # its own side still looks up
    assert of(a.on_peer_params(1.1, req), StartGather)


def test_params_before_otr_secure_are_dropped() -> None:
    core = PunchCore(Timers(), random.Random(1), now=0.0)
    core.on_keys(0.0, ADDR_B, KEY_A)
    assert not core.on_peer_params(0.0, IceParams(5, "ufra", "p" * 22, (HOST,)))
    assert core.counters["params_not_ready"] == 1


def test_empty_gather_fails() -> None:
    a, out = ready_core(ADDR_A, KEY_B)
    (start,) = of(out, StartGather)
    a.on_gathered(0.1, start.session, Gathered("ufra", "p" * 22, (), NatKind.UNKNOWN, 0, 0))
    assert a.reason.startswith(Reason.NO_CANDIDATES.value)


def test_controlling_hands_off_without_confirmation_after_a_while() -> None:
    a, out = ready_core(ADDR_A, KEY_B)
    (start,) = of(out, StartGather)
    a.on_gathered(0.1, start.session, gathered())
    a.on_peer_params(0.2, IceParams(start.session, "ufrb", "q" * 22, (HOST,)))
    pair = Selected(40000, "198.51.100.20", 61000, CandidateType.HOST, CandidateType.SRFLX)
    assert not of(a.on_checks_done(0.3, start.session, pair), PublishPath)
    assert not of(a.on_tick(0.3 + Timers().confirm_timeout - 0.1), PublishPath)
    out = a.on_tick(0.3 + Timers().confirm_timeout)
    assert of(out, PublishPath) and a.state == PunchStateKind.CONNECTED
    assert a.counters["unconfirmed_paths"] == 1


def test_confirmation_before_our_own_success_is_remembered() -> None:
    a, out = ready_core(ADDR_A, KEY_B)
    (start,) = of(out, StartGather)
    a.on_gathered(0.1, start.session, gathered())
    a.on_peer_params(0.2, IceParams(start.session, "ufrb", "q" * 22, (HOST,)))
    a.on_peer_params(0.3, IceParams(start.session, "", "", connected=True))
    pair = Selected(40000, "198.51.100.20", 61000, CandidateType.HOST, CandidateType.SRFLX)
    out = a.on_checks_done(0.31, start.session, pair)
    assert of(out, CloseSession) and of(out, PublishPath)


def test_peer_giving_up_mid_attempt_is_a_failure_with_backoff() -> None:
    a, out = ready_core(ADDR_A, KEY_B)
    (start,) = of(out, StartGather)
    a.on_gathered(0.1, start.session, gathered())
    a.on_peer_params(0.2, IceParams(start.session, "ufrb", "q" * 22, (HOST,)))
    out = a.on_peer_params(3.0, IceParams(start.session, "", "", restart=True))
    assert not of(out, StartGather) and a.state == PunchStateKind.BACKOFF
    assert a.attempt == 1 and "the peer gave up" in a.reason


def test_otr_loss_while_awaiting_confirmation_hands_off() -> None:
    a, out = ready_core(ADDR_A, KEY_B)
    (start,) = of(out, StartGather)
    a.on_gathered(0.1, start.session, gathered())
    a.on_peer_params(0.2, IceParams(start.session, "ufrb", "q" * 22, (HOST,)))
    pair = Selected(40000, "198.51.100.20", 61000, CandidateType.HOST, CandidateType.SRFLX)
    a.on_checks_done(0.3, start.session, pair)
    assert of(a.on_otr(0.4, False), PublishPath) and a.state == PunchStateKind.CONNECTED
