"""punchd's asyncio runner: wires the pure core (core.py) to the bus and to aioice (ice_adapter).

Subscribes to signald's ``signal.state`` (the two Tox keys decide the role), otrd's
``otr.state`` and ``otr.recv`` (the peer's ``IceParams``, packed with ``messages.pack``) and
guardd's ``guard.state``; publishes ``punch.state`` and ``punch.path`` (both level-triggered) and
``otr.send`` (our ``IceParams``). Every core command is carried out in order: a session's sockets
are closed before the path that came out of it is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from punchd import candidates, ice_adapter, relay
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
from punchd.core import PunchCore
from punchd.timers import Timers
from punchguard import messages
from punchguard.config import IceConfig
from punchguard.messages import (
    DecodeError,
    GuardState,
    GuardStateKind,
    IceParams,
    OtrRecv,
    OtrSend,
    OtrState,
    OtrStateKind,
    PunchState,
    PunchStateKind,
    SignalPolicy,
    SignalState,
)
from punchguard.service import ServiceContext

TICK = 0.2  # seconds between timer checks


POSITIVE = ("check_rto", "gather_timeout", "answer_timeout", "checks_timeout",
            "backoff_initial", "backoff_max", "hopeless_retry")  # fmt: skip


def checked_ice(cfg: IceConfig) -> tuple[IceConfig, list[str]]:
    """``cfg`` with out-of-range values replaced by the defaults, and a note for each."""
    defaults, problems, fixed = IceConfig(), [], {}
    for name in POSITIVE:
        if not getattr(cfg, name) > 0:
            fixed[name] = getattr(defaults, name)
            problems.append(f"ice.{name} = {getattr(cfg, name)} must be > 0")
    if not 0 <= cfg.check_retries <= 10:
        fixed["check_retries"] = defaults.check_retries
        problems.append(f"ice.check_retries = {cfg.check_retries} must be 0..10")
    for turn in cfg.turn_servers:
        if turn.transport not in ("udp", "tcp"):
            problems.append(f"ice.turn_servers: transport {turn.transport!r} is not udp or tcp")
            fixed["turn_servers"] = ()
    return dataclasses.replace(cfg, **fixed), problems


def timers_from(cfg: IceConfig) -> Timers:
    return Timers(
        answer_timeout=cfg.answer_timeout, checks_timeout=cfg.checks_timeout,
        backoff_initial=cfg.backoff_initial, backoff_max=cfg.backoff_max,
        hopeless_retry=cfg.hopeless_retry,
    )  # fmt: skip


class Runner:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.bus = ctx.bus
        self.log = ctx.log
        self.cfg, problems = checked_ice(ctx.config.ice)
        for problem in problems:
            self.log.error("punch.bad_config", problem=problem, using="the default")
        now = time.time()
        # generation_base: paths of a restarted punchd still count up (guardd compares them)
        self.core = PunchCore(
            timers_from(self.cfg), random.SystemRandom(), now=now, generation_base=int(now)
        )
        self.stun: list[tuple[str, int]] = []
        for text in self.cfg.stun_servers:
            try:
                self.stun.append(ice_adapter.parse_server(text))
            except ValueError as e:
                self.log.error("punch.bad_stun_server", server=text, error=str(e))
        self.turn = self.cfg.turn_servers[0] if self.cfg.turn_servers else None
        self.sessions: dict[int, ice_adapter.IceSession] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.drops: Counter[str] = Counter()
        self.state: PunchState = self.core.snapshot()
        self.relays = relay.Relays(self.log)  # TURN forwarders (relayed paths, docs/turn.md)

    async def run(self) -> None:
        ice_adapter.set_timers(self.cfg.check_rto, self.cfg.check_retries)
        ice_adapter.exclude_interfaces([self.ctx.config.wireguard.interface])
        self.bus.subscribe("signald", ("signal.state",))
        self.bus.subscribe("otrd", ("otr.state", "otr.recv"))
        self.bus.subscribe("guardd", ("guard.state",))
        self.bus.set_state(self.state)
        self.log.info(
            "punch.started", stun=len(self.stun), turn=self.turn is not None,
            rto=self.cfg.check_rto, retries=self.cfg.check_retries,
        )  # fmt: skip
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._ticker(), name="punch-tick")
                tg.create_task(self._reader(), name="punch-read")
        finally:
            for task in list(self.tasks.values()):
                task.cancel()
            for session in list(self.sessions.values()):
                await session.close()
            self.sessions.clear()
            await self.relays.close()

    # -- inputs -------------------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            await self.apply(self.core.on_tick(time.time()))
            if self.relays.lost():
                await self.apply(self.core.on_relay_lost(time.time()))

    async def _reader(self) -> None:
        while True:
            inc = await self.bus.receive()
            msg, now = inc.msg, time.time()
            if isinstance(msg, SignalState) and inc.endpoint == "signald":
                cmds = self.core.on_keys(now, msg.address, msg.peer_public_key)
            elif isinstance(msg, OtrState) and inc.endpoint == "otrd":
                secure = msg.state == OtrStateKind.SECURE and msg.verified
                cmds = self.core.on_otr(now, secure)
            elif isinstance(msg, OtrRecv) and inc.endpoint == "otrd":
                params = self._params(msg.payload)
                cmds = [] if params is None else self.core.on_peer_params(now, params)
            elif isinstance(msg, GuardState) and inc.endpoint == "guardd":
                cmds = self.core.on_guard(now, msg.state, msg.generation)
                path = self.core.path
                if (
                    msg.state in (GuardStateKind.UP, GuardStateKind.HANDSHAKING)
                    and self.core.role is not None
                    and (path is None or path.generation == msg.generation)
                    and self.relays.orphaned(msg.endpoint)
                ):  # WireGuard points at a forwarder we do not run (we were restarted)
                    cmds += self.core.on_relay_lost(now)
            else:
                continue
            await self.apply(cmds)

    def _params(self, payload: bytes) -> IceParams | None:
        try:
            _env, msg = messages.unpack(payload)
        except DecodeError as e:
            self._drop("bad_payload", e.reason)
            return None
        if not isinstance(msg, IceParams):
            self._drop("not_ice_params", msg.TYPE)
            return None
        kept, refused = candidates.screen(msg.candidates)
        for reason, count in refused.items():
            self.drops[f"candidate:{reason}"] += count
        if refused:
            self.log.warning(
                "punch.candidates_refused", kept=len(kept), refused=dict(refused),
                session=msg.session,
            )  # fmt: skip
            msg = dataclasses.replace(msg, candidates=kept)
        return msg

    def _drop(self, reason: str, detail: str) -> None:
        self.drops[reason] += 1
        self.log.warning("punch.drop", reason=reason, detail=detail[:100], count=self.drops[reason])

    # -- commands -----------------------------------------------------------------------------

    async def apply(self, cmds: list[Command]) -> None:
        for cmd in cmds:
            if isinstance(cmd, PublishState):
                old = self.state
                self.state = cmd.state
                self.log.info(
                    "punch.state", old=old.state.name.lower(), new=cmd.state.state.name.lower(),
                    reason=cmd.state.reason, nat=cmd.state.nat.name.lower(),
                    peer_nat=cmd.state.peer_nat.name.lower(), attempt=cmd.state.attempt,
                )  # fmt: skip
                self.bus.set_state(cmd.state)
                self._signaling_policy(cmd.state)
            elif isinstance(cmd, PublishPath):
                self.log.info("punch.path", **{k: str(v) for k, v in vars(cmd.path).items()})
                self.bus.set_state(cmd.path)
            elif isinstance(cmd, SendParams):
                payload = messages.pack(cmd.params, src=self.ctx.name)
                self.bus.publish(OtrSend(payload=payload))
            elif isinstance(cmd, StartGather):
                self._start_gather(cmd)
            elif isinstance(cmd, StartChecks):
                self._start_checks(cmd)
            elif isinstance(cmd, CloseSession):
                await self._close(cmd.session, keep_relay=cmd.keep_relay)

    def _signaling_policy(self, state: PunchState) -> None:
        """While the path is relayed, keep Tox online (even under the on-demand policy): the
        direct retries and a relay's recovery travel over signaling. Level-triggered: the wish
        is republished on the heartbeat, and goes stale in signald once we stop."""
        path = self.core.path
        if state.state == PunchStateKind.CONNECTED and path is not None and path.relayed:
            self.bus.set_state(SignalPolicy(online=True, reason="relayed: retrying direct"))
        else:
            self.bus.clear_state(SignalPolicy.TYPE)

    def _start_gather(self, cmd: StartGather) -> None:
        session = ice_adapter.IceSession(
            controlling=cmd.controlling, stun_servers=self.stun,
            turn=None if cmd.direct_only else self.turn, ipv6=self.cfg.ipv6,
            gather_timeout=self.cfg.gather_timeout,
        )  # fmt: skip
        self.sessions[cmd.session] = session
        self._spawn(cmd.session, self._gather(cmd.session, session))

    def _start_checks(self, cmd: StartChecks) -> None:
        session = self.sessions.get(cmd.session)
        if session is None:
            self.log.warning("punch.no_session", session=cmd.session)
            return
        self._spawn(cmd.session, self._checks(cmd.session, session, cmd.remote))

    def _spawn(self, sid: int, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks[sid] = task
        task.add_done_callback(lambda t: self._reap(sid, t))

    def _reap(self, sid: int, task: asyncio.Task[None]) -> None:
        if self.tasks.get(sid) is task:
            del self.tasks[sid]
        if not task.cancelled() and task.exception() is not None:
            self.log.error("punch.task_crashed", error=repr(task.exception()))

    async def _gather(self, sid: int, session: ice_adapter.IceSession) -> None:
        try:
            g = await session.gather()
        except Exception as e:  # aioice raises many kinds: all mean "this attempt failed"
            await self.apply(self.core.on_gather_failed(time.time(), sid, str(e)[:200]))
            return
        self.log.info(
            "punch.gathered", session=sid, candidates=len(g.candidates), srflx=g.srflx,
            relay=g.relay, nat=g.nat.name.lower(),
            stun=[f"{a.server[0]}:{a.server[1]}->{a.mapped[0]}:{a.mapped[1]}" for a in g.answers],
        )  # fmt: skip
        gathered = Gathered(g.ufrag, g.pwd, g.candidates, g.nat, g.srflx, g.relay)
        await self.apply(self.core.on_gathered(time.time(), sid, gathered))

    async def _checks(self, sid: int, session: ice_adapter.IceSession, remote: IceParams) -> None:
        try:
            pair = await session.connect(remote.ufrag, remote.pwd, remote.candidates)
        except Exception as e:  # IceFailed, or aioice's own errors: the checks failed
            await self.apply(self.core.on_checks_failed(time.time(), sid, str(e)[:200]))
            return
        local_port, remote_host, remote_port = pair.local_port, pair.remote_host, pair.remote_port
        via = f"{remote_host}:{remote_port}" if pair.remote_type == "relay" else ""
        if pair.local_type == "relay":
            # WireGuard gets a port of its own and our forwarder's loopback address (relay.py)
            fwd = await self.relays.prepare(sid, (remote_host, remote_port))
            local_port, remote_host, remote_port = fwd.wg_port, relay.LOOPBACK, fwd.port
            via = f"{self.turn.host}:{self.turn.port}" if self.turn else "?"
        selected = Selected(
            local_port=local_port, remote_host=remote_host, remote_port=remote_port,
            local_type=candidate_type(pair.local_type),
            remote_type=candidate_type(pair.remote_type), via=via,
        )  # fmt: skip
        await self.apply(self.core.on_checks_done(time.time(), sid, selected))

    async def _close(self, sid: int, *, keep_relay: bool = False) -> None:
        task = self.tasks.pop(sid, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        session = self.sessions.pop(sid, None)
        if keep_relay:  # this session is the new path: its allocation outlives its Connection
            self.relays.adopt(sid, session.connection if session is not None else None)
        else:
            await self.relays.discard(sid)
        if session is not None:
            await session.close()
