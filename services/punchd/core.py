"""punchd's pure core: when to punch, with which role and session, and what each outcome means.

Theory of operation
-------------------
Events come in (``on_*`` methods, each given the current time), commands come out (a list of
small frozen dataclasses that the asyncio runner carries out). No I/O, no clocks, no asyncio.

* Role (RFC 8445 section 6.1.1, decided without a round trip): the side whose Tox public key is
  smaller (as hex, case-insensitive) is CONTROLLING; for WireGuard it is also the initiator
  (design 4.4). Until both keys are known (signald's ``signal.state``) nothing starts.
* Start conditions: otrd says SECURE and verified, guardd does not say UP, keys known.
* Sessions: only the controlling side opens one. It picks a fresh random id, gathers, sends its
  ``IceParams`` (through OTR) and waits ``answer_timeout`` for the peer's params with that same
  id; then the checks run. The controlled side answers every *new* id from the peer (a fresh
  gather, its params, the checks), abandoning whatever it was doing; an id it has already seen
  is stale and ignored (counted). When the controlled side needs a new punch (its checks failed,
  its tunnel went down) it sends ``IceParams(restart=True)`` and the controlling side starts over.
* Outcomes: success -> CONNECTED, the runner closes the ICE sockets (the NAT mapping stays,
  design 4.3) and the ``Path`` is published (level-triggered). The controlling side closes only
  once the controlled side says ``connected`` (or ``confirm_timeout`` passed): aioice's
  controlled agent still needs an answer to its own check of the nominated pair, and a
  controlling side that closed at once failed it about every other time in the lab.
* Failure -> FAILED with a reason, then (controlling) BACKOFF with exponential backoff, jitter
  and a cap; when both NATs are endpoint-dependent and nobody offers a relay candidate the retry
  is the slow one and the reason says why. The controlled side stays FAILED until the peer opens
  a new session.
* While CONNECTED nothing but guardd reporting the tunnel DOWN for our path's generation (or the
  peer asking for a restart) starts a new punch: OTR and Tox may go away by policy meanwhile.
* A relayed path (TURN) gets direct probes and is punched again when its relay is lost: the rules
  and texts are in ``relayed.py``; commands and results in ``commands.py``; timers in ``timers.py``.
"""

from __future__ import annotations

import enum
import random

from punchd import relayed
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
)
from punchd.timers import Timers, backoff_delay
from punchguard.messages import (
    GuardStateKind,
    IceParams,
    NatKind,
    Path,
    PunchState,
    PunchStateKind,
    Role,
)

SEEN_SESSIONS = 32  # peer session ids remembered to recognise stale params


class Reason(enum.Enum):
    """Why an attempt failed (the value is the text published in ``PunchState.reason``)."""

    NO_CANDIDATES = "no local candidates (no usable interface address)"
    GATHER_FAILED = "candidate gathering failed"
    PEER_TIMEOUT = "the peer did not answer with its candidates"
    CHECKS_FAILED = "connectivity checks timed out"
    BOTH_SYMMETRIC = (
        "both NATs are symmetric (endpoint-dependent) and no TURN relay is configured: "
        "direct hole punching cannot work"
    )
    PEER_WENT_AWAY = "the peer went away (OTR session no longer secure)"
    PEER_RESTART = "the peer asked for a new punch"
    TUNNEL_DOWN = "the tunnel went down"
    RELAY_LOST = "the TURN relay (our forwarder or its allocation) was lost"


def choose_role(our_key: str, peer_key: str) -> Role | None:
    """CONTROLLING if our Tox public key is the smaller one; None while either is unknown."""
    ours, theirs = our_key.strip().upper(), peer_key.strip().upper()
    if len(ours) != 64 or len(theirs) != 64 or ours == theirs:
        return None
    return Role.CONTROLLING if ours < theirs else Role.CONTROLLED


class PunchCore:
    def __init__(
        self, timers: Timers, rng: random.Random, *, now: float, generation_base: int = 0
    ) -> None:
        self.timers = timers
        self.rng = rng
        self.state = PunchStateKind.IDLE
        self.since = now
        self.reason = "starting"
        self.retry_at = 0.0
        self.attempt = 0  # consecutive failures
        self.nat = NatKind.UNKNOWN
        self.peer_nat = NatKind.UNKNOWN
        self.our_key = ""
        self.peer_key = ""
        self.otr_secure = False
        self.guard = GuardStateKind.NO_PATH
        self.guard_generation = 0
        self.generation = generation_base  # of the last path published
        self.path: Path | None = None
        self.session = 0  # current session id (0 = none)
        self.path_session = 0  # the session that produced ``path``
        self.via = ""  # the relayed path's TURN server (Selected.via)
        self.pending: Selected | None = None  # controlling: our pair, awaiting the peer's word
        self.peer_confirmed = False  # controlling: the peer said ``connected`` this session
        self.forced = False  # the peer asked for a new punch: start even if guardd says UP
        self.probing = False  # the current session is a direct probe under a relayed path
        self.probe_at = 0.0  # controlling, relayed: when to try direct again (0 = not planned)
        self.probe_attempt = 0
        self.direct_failed = ""  # relayed: why direct did not work (published in the reason)
        self.deadline = 0.0  # current wait's deadline (0 = none)
        self.gathered: Gathered | None = None
        self.remote: IceParams | None = None
        self.seen: list[int] = []  # peer session ids already answered (controlled)
        self.counters: dict[str, int] = {}
        self._out: list[Command] = []

    # -- derived ------------------------------------------------------------------------------

    @property
    def role(self) -> Role | None:
        return choose_role(self.our_key, self.peer_key)

    def ready(self) -> bool:
        tunnel_up = self.guard == GuardStateKind.UP and not self.forced
        return self.role is not None and self.otr_secure and not tunnel_up

    def snapshot(self) -> PunchState:
        return PunchState(
            state=self.state, role=self.role, nat=self.nat, peer_nat=self.peer_nat,
            attempt=self.attempt, since=self.since, retry_at=self.retry_at, reason=self.reason,
        )  # fmt: skip

    # -- events -------------------------------------------------------------------------------

    def on_keys(self, now: float, our_address: str, peer_key: str) -> list[Command]:
        our_key = our_address[:64]
        if (our_key, peer_key) != (self.our_key, self.peer_key):
            old_role = self.role
            self.our_key, self.peer_key = our_key, peer_key
            if self.role != old_role and self.state != PunchStateKind.CONNECTED:
                self._abort()
                self._set_state(now, PunchStateKind.IDLE, self._idle_reason())
            self._maybe_start(now)
        return self._flush()

    def on_otr(self, now: float, secure: bool) -> list[Command]:
        if secure == self.otr_secure:
            return self._flush()
        self.otr_secure = secure
        busy = self.state in (PunchStateKind.GATHERING, PunchStateKind.CHECKING)
        if not secure and self.pending is not None:
            self._finish(now, self.pending)  # our pair works; no confirmation can come now
        elif not secure and busy:
            self._fail(now, Reason.PEER_WENT_AWAY)
        elif not secure and self.state == PunchStateKind.IDLE:
            self._set_state(now, PunchStateKind.IDLE, self._idle_reason())
        self._maybe_start(now)
        return self._flush()

    def on_guard(self, now: float, kind: GuardStateKind, generation: int) -> list[Command]:
        self.guard, self.guard_generation = kind, generation
        if (
            (self.state == PunchStateKind.CONNECTED or self.probing)
            and kind == GuardStateKind.DOWN
            and self.path is not None
            and generation == self.path.generation
        ):
            self._fail(now, Reason.TUNNEL_DOWN, count=False)
        elif self.state == PunchStateKind.IDLE:
            self._set_state(now, PunchStateKind.IDLE, self._idle_reason())
        self._maybe_start(now)
        return self._flush()

    def on_peer_params(self, now: float, params: IceParams) -> list[Command]:
        role = self.role
        if role is None or not self.otr_secure:
            self._count("params_not_ready")
        elif role == Role.CONTROLLING:
            self._controlling_params(now, params)
        else:
            self._controlled_params(now, params)
        return self._flush()

    def on_gathered(self, now: float, session: int, gathered: Gathered) -> list[Command]:
        if session != self.session or self.state != PunchStateKind.GATHERING:
            self._count("stale_gather")
            return self._flush()
        self.gathered = gathered
        self.nat = gathered.nat
        if not gathered.candidates:
            self._fail(now, Reason.NO_CANDIDATES)
            return self._flush()
        self._out.append(SendParams(self._our_params(gathered)))
        if self.role == Role.CONTROLLING:
            self.deadline = now + self.timers.answer_timeout
            self._set_state(now, PunchStateKind.CHECKING, "waiting for the peer's candidates")
        else:
            assert self.remote is not None
            self._start_checks(now, self.remote)
        return self._flush()

    def on_gather_failed(self, now: float, session: int, detail: str) -> list[Command]:
        if session == self.session and self.state == PunchStateKind.GATHERING:
            self._fail(now, Reason.GATHER_FAILED, detail)
        return self._flush()

    def on_checks_done(self, now: float, session: int, pair: Selected) -> list[Command]:
        role = self.role
        if session != self.session or self.state != PunchStateKind.CHECKING or role is None:
            self._count("stale_checks")
        elif role == Role.CONTROLLED:
            # Tell the controlling side it may close its sockets now (see on_peer_params).
            self._out.append(SendParams(IceParams(session, "", "", connected=True)))
            self._finish(now, pair)
        elif self.peer_confirmed:
            self._finish(now, pair)
        else:
            # Our nomination succeeded, but the controlled side may still be waiting for the
            # answer to its own (triggered) check of this pair: closing now would fail it.
            self.pending = pair
            self.deadline = now + self.timers.confirm_timeout
            self._set_state(now, PunchStateKind.CHECKING, "path found, waiting for the peer")
        return self._flush()

    def on_checks_failed(self, now: float, session: int, detail: str) -> list[Command]:
        if session == self.session and self.state == PunchStateKind.CHECKING:
            self._fail(now, Reason.CHECKS_FAILED, detail)
        return self._flush()

    def on_relay_lost(self, now: float) -> list[Command]:
        """Our TURN forwarder is gone (punchd restarted, or the allocation died) while guardd
        still points WireGuard at it: nothing crosses any more, so punch again at once
        (controlling), or ask the controlling side to (controlled; session 0 if we restarted and
        no longer know the path's session)."""
        self._count("relay_lost")
        if self.role == Role.CONTROLLING:
            self.forced = True
            if self.state == PunchStateKind.CONNECTED or self.probing:
                self.probing = False
                self._fail(now, Reason.RELAY_LOST, count=False)
            self._maybe_start(now)
        elif self.role == Role.CONTROLLED:
            self._out.append(SendParams(IceParams(self.path_session, "", "", restart=True)))
        return self._flush()

    def on_tick(self, now: float) -> list[Command]:
        if self.deadline and now >= self.deadline:
            if self.pending is not None:
                self._count("unconfirmed_paths")
                self._finish(now, self.pending)
            elif self.state == PunchStateKind.CHECKING and self.remote is None:
                self._fail(now, Reason.PEER_TIMEOUT)
            elif self.state in (PunchStateKind.CHECKING, PunchStateKind.GATHERING):
                self._fail(now, Reason.CHECKS_FAILED, "no result in time")
        if self.state == PunchStateKind.BACKOFF and now >= self.retry_at:
            self._set_state(now, PunchStateKind.IDLE, self._idle_reason())
        self._maybe_start(now)
        self._maybe_probe(now)
        return self._flush()

    # -- relayed paths (the rules and texts are in relayed.py) --------------------------------

    def _relayed_reason(self, now: float) -> str:
        return relayed.connected_reason(
            self.via, self.direct_failed, controlling=self.role == Role.CONTROLLING,
            probe_at=self.probe_at, now=now,
        )  # fmt: skip

    def _maybe_probe(self, now: float) -> None:
        """Controlling, on a relayed path: try a direct punch now and then (with backoff); the
        relayed path stays published meanwhile, and a direct pair replaces it."""
        path = self.path
        if (
            self.state != PunchStateKind.CONNECTED or self.role != Role.CONTROLLING
            or path is None or not path.relayed or not self.probe_at or now < self.probe_at
        ):  # fmt: skip
            return
        if not self.otr_secure:  # the on-demand policy took Tox offline: say so, wait
            self._set_state(now, PunchStateKind.CONNECTED, self._relayed_reason(now))
            return
        self.probe_at, self.probing = 0.0, True
        self.session = self.rng.getrandbits(31) | 1
        self.pending, self.peer_confirmed, self.gathered, self.remote = None, False, None, None
        self.deadline = now + self.timers.checks_timeout
        self._out.append(StartGather(self.session, controlling=True, direct_only=True))
        self._set_state(now, PunchStateKind.GATHERING, "direct probe (the relayed path stays up)")

    def _probe_failed(self, now: float, text: str, hopeless: bool) -> None:
        if self.role == Role.CONTROLLED and self.session:
            self._out.append(SendParams(IceParams(self.session, "", "", restart=True)))
        self._abort()
        self.probing = False
        self.probe_attempt += 1
        self._count("probe_failed")
        self.direct_failed = text
        if self.role == Role.CONTROLLING:
            self.probe_at = now + relayed.probe_delay(
                self.timers, self.probe_attempt, hopeless, self.rng
            )
        self._set_state(now, PunchStateKind.CONNECTED, self._relayed_reason(now))

    # -- internals ----------------------------------------------------------------------------

    def _finish(self, now: float, pair: Selected) -> None:
        role = self.role
        assert role is not None
        relay_pair = relayed.is_relayed(pair)
        if self.probing and relay_pair:
            self._fail(now, Reason.CHECKS_FAILED, "only a relayed pair answered")
            return
        self.probing = False
        self._out.append(CloseSession(self.session, keep_relay=True))
        self.path_session = self.session
        self.session, self.deadline, self.attempt = 0, 0.0, 0
        self.pending, self.peer_confirmed = None, False
        self.generation += 1
        self.path = Path(
            local_port=pair.local_port, endpoint_host=pair.remote_host,
            endpoint_port=pair.remote_port, role=role, local_type=pair.local_type,
            remote_type=pair.remote_type, relayed=relay_pair, generation=self.generation,
        )  # fmt: skip
        self.retry_at = 0.0
        self.probe_attempt, self.probe_at, self.via = 0, 0.0, pair.via
        if relay_pair:
            self.direct_failed = self.direct_failed or relayed.no_direct_pair(
                self.nat, self.peer_nat
            )
            self.probe_at = now + self.timers.probe_initial
            self._set_state(now, PunchStateKind.CONNECTED, self._relayed_reason(now))
        else:
            self.direct_failed = ""
            self._set_state(
                now, PunchStateKind.CONNECTED,
                f"direct path {pair.local_type.name.lower()}:{pair.local_port} -> "
                f"{pair.remote_type.name.lower()} {pair.remote_host}:{pair.remote_port}",
            )  # fmt: skip
        self._out.append(PublishPath(self.path))

    def _controlling_params(self, now: float, params: IceParams) -> None:
        if params.restart:
            if self.session and params.session == self.session:
                # the peer gave up on the attempt in progress: a failure like ours, backoff
                self._fail(now, Reason.CHECKS_FAILED, "the peer gave up")
            elif (self.state == PunchStateKind.CONNECTED or self.probing) and (
                params.session == self.path_session
                or (params.session == 0 and self.path is not None and self.path.relayed)
            ):
                # the peer's tunnel went down (or its relay forwarder was lost): punch again now
                self.probing = False
                self.forced = True
                self._fail(now, Reason.PEER_RESTART, count=False)
                self._maybe_start(now)
            else:
                self._count("stale_restart")
            return
        if params.connected and params.session == self.session and self.session:
            self.peer_confirmed = True
            if self.pending is not None:
                self._finish(now, self.pending)
            return
        if params.session != self.session or self.remote is not None or self.gathered is None:
            self._count("stale_params")
            return
        self.peer_nat = params.nat
        self._start_checks(now, params)

    def _controlled_params(self, now: float, params: IceParams) -> None:
        if params.restart or params.connected or params.session == 0:
            self._count("unexpected_restart")
            return
        if params.session in self.seen:
            self._count("stale_params")
            return
        self.seen = [*self.seen[-(SEEN_SESSIONS - 1) :], params.session]
        # A session without relay candidates while our path is relayed: the peer's direct probe.
        connected = self.state == PunchStateKind.CONNECTED or self.probing
        probe = connected and relayed.is_direct_probe(self.path, params)
        self._abort()
        self.probing = probe
        self.peer_nat = params.nat
        self.session, self.remote, self.gathered = params.session, params, None
        self.deadline = now + self.timers.checks_timeout
        self._out.append(StartGather(self.session, controlling=False, direct_only=probe))
        what = "direct probe (the relayed path stays up)" if probe else "gathering candidates"
        self._set_state(now, PunchStateKind.GATHERING, f"{what} (peer asked)")

    def _start_checks(self, now: float, remote: IceParams) -> None:
        self.remote = remote
        self.deadline = now + self.timers.checks_timeout
        self._out.append(StartChecks(self.session, remote))
        self._set_state(now, PunchStateKind.CHECKING, "connectivity checks")

    def _maybe_start(self, now: float) -> None:
        if self.state != PunchStateKind.IDLE:
            return
        if self.role != Role.CONTROLLING or not self.ready():
            self._set_state(now, PunchStateKind.IDLE, self._idle_reason())
            return
        self.session = self.rng.getrandbits(31) | 1
        self.forced, self.pending, self.peer_confirmed = False, None, False
        self.gathered, self.remote = None, None
        self.deadline = now + self.timers.checks_timeout
        self._out.append(StartGather(self.session, controlling=True))
        self._set_state(now, PunchStateKind.GATHERING, "gathering candidates")

    def _fail(self, now: float, reason: Reason, detail: str = "", *, count: bool = True) -> None:
        if self.probing and reason not in (Reason.TUNNEL_DOWN, Reason.PEER_RESTART):
            hopeless = self._hopeless() and reason == Reason.CHECKS_FAILED
            self._probe_failed(now, relayed.probe_failure(reason.value, detail, hopeless), hopeless)
            return
        self.probing = False
        session = self.session or self.path_session
        if self.role == Role.CONTROLLED and session and reason != Reason.PEER_WENT_AWAY:
            # Ask the controlling side to start over (it may not have noticed).
            self._out.append(SendParams(IceParams(session, "", "", restart=True)))
        hopeless = self._hopeless() and reason == Reason.CHECKS_FAILED
        self._abort()
        if count:
            self.attempt += 1
        if hopeless:
            reason = Reason.BOTH_SYMMETRIC
        text = reason.value + (f" ({detail})" if detail else "")
        self._count(f"failed_{reason.name.lower()}")
        self._set_state(now, PunchStateKind.FAILED, text)
        if self.role != Role.CONTROLLING:
            return
        if reason in (Reason.TUNNEL_DOWN, Reason.PEER_RESTART, Reason.RELAY_LOST):
            delay = 0.0
        elif hopeless:
            delay = self.timers.hopeless_retry
        else:
            delay = backoff_delay(self.attempt, self.timers, self.rng)
        self.retry_at = now + delay
        self._set_state(now, PunchStateKind.BACKOFF, f"{text}; retry in {delay:.1f} s")
        if delay == 0.0:
            self._set_state(now, PunchStateKind.IDLE, self._idle_reason())

    def _hopeless(self) -> bool:
        relay = (self.gathered is not None and self.gathered.relay > 0) or (
            self.remote is not None and relayed.has_relay(self.remote)
        )
        symmetric = NatKind.ENDPOINT_DEPENDENT
        return self.nat == symmetric and self.peer_nat == symmetric and not relay

    def _abort(self) -> None:
        if self.session:
            self._out.append(CloseSession(self.session))
        self.session, self.deadline, self.gathered, self.remote = 0, 0.0, None, None
        self.pending, self.peer_confirmed = None, False

    def _our_params(self, gathered: Gathered) -> IceParams:
        return IceParams(
            session=self.session, ufrag=gathered.ufrag, pwd=gathered.pwd,
            candidates=gathered.candidates, complete=True, nat=gathered.nat,
        )  # fmt: skip

    def _idle_reason(self) -> str:
        if self.role is None:
            return "waiting for signald's Tox keys"
        if self.guard == GuardStateKind.UP:
            return "tunnel is up"
        if not self.otr_secure:
            return "waiting for a secure OTR session"
        if self.role == Role.CONTROLLED:
            return "waiting for the controlling peer"
        return "ready"

    def _set_state(self, now: float, state: PunchStateKind, reason: str) -> None:
        if state == self.state and reason == self.reason:
            return
        if state != self.state:
            self.since = now
        if state != PunchStateKind.BACKOFF:
            self.retry_at = 0.0
        self.state, self.reason = state, reason
        self._out.append(PublishState(self.snapshot()))

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _flush(self) -> list[Command]:
        out, self._out = self._out, []
        return out
