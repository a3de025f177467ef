"""otrd's asyncio runner: the bus and the clock around the pure ``OtrSession`` core.

Bus wiring (docs/otrd.md):
- follows ``signald`` for ``signal.state`` (PEER_ONLINE starts our AKE move, anything else drops
  the session) and ``signal.recv`` (OTR wire messages: ASCII bytes);
- follows ``punchd`` for ``otr.send`` (a payload to encrypt);
- publishes ``signal.send`` (OTR wire messages, <= 1372 bytes each), ``otr.recv`` (decrypted
  payloads from the verified peer), ``error`` and its state ``otr.state`` (``set_state``: on
  change and on every heartbeat).

A message type from an endpoint that has no business sending it is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

from otrd.identity import IdentityError, fingerprint, load_or_create_key
from otrd.session import OtrSession, Timing
from punchguard.bus import Incoming
from punchguard.messages import (
    Error,
    Message,
    OtrSend,
    OtrState,
    OtrStateKind,
    SignalRecv,
    SignalState,
    SignalStateKind,
)
from punchguard.service import ServiceContext, refuse

#: longest wait for a bus message before the core's timers are looked at again
MAX_WAIT = 1.0


class Runner:
    def __init__(self, ctx: ServiceContext, session: OtrSession) -> None:
        self.ctx = ctx
        self.session = session
        self.drops: Counter[str] = Counter()
        self._logged_counts: dict[str, int] = {}
        self._logged_at = 0.0

    def emit(self, msgs: list[Message]) -> None:
        for msg in msgs:
            if isinstance(msg, OtrState):
                self.ctx.bus.set_state(msg)
            else:
                if isinstance(msg, Error):
                    self.ctx.log.warning("otr.error", code=msg.code, reason=msg.reason)
                self.ctx.bus.publish(msg)

    def log_counters(self, now: float) -> None:
        """The session's drop counters, logged when they changed (at most once a second)."""
        counts = dict(self.session.counters) | {f"route:{k}": v for k, v in self.drops.items()}
        if counts != self._logged_counts and now - self._logged_at >= 1.0:
            self.ctx.log.info("otr.counters", **counts)
            self._logged_counts, self._logged_at = counts, now

    def handle(self, inc: Incoming, now: float) -> list[Message]:
        msg = inc.msg
        if inc.endpoint == "signald" and isinstance(msg, SignalRecv):
            return self.session.wire_received(msg.payload, now)
        if inc.endpoint == "signald" and isinstance(msg, SignalState):
            if msg.state == SignalStateKind.PEER_ONLINE:
                return self.session.peer_online(now)
            return self.session.peer_offline(now)
        if inc.endpoint == "punchd" and isinstance(msg, OtrSend):
            return self.session.send(msg.payload, now)
        self.drops[f"{inc.endpoint}:{msg.TYPE}"] += 1
        self.ctx.log.warning("otr.unexpected_message", endpoint=inc.endpoint, type=msg.TYPE)
        return []

    async def run(self) -> None:
        bus = self.ctx.bus
        bus.subscribe("signald", types=("signal.recv", "signal.state"))
        bus.subscribe("punchd", types=("otr.send",))
        self.emit([self.session.state_message()])
        try:
            while True:
                deadline = self.session.next_deadline()
                wait = MAX_WAIT if deadline is None else min(MAX_WAIT, deadline - time.time())
                try:
                    inc = await asyncio.wait_for(bus.receive(), timeout=max(wait, 0.0))
                except TimeoutError:
                    inc = None
                now = time.time()
                if inc is not None:
                    self.emit(self.handle(inc, now))
                self.emit(self.session.tick(now))
                self.log_counters(now)
        finally:
            # a clean stop tells the peer at once (disconnect TLV), it need not time out
            with contextlib.suppress(Exception):
                self.emit(self.session.close(time.time()))


async def serve(ctx: ServiceContext) -> None:
    cfg = ctx.config
    try:
        key = await asyncio.to_thread(load_or_create_key, cfg.paths.state_dir)
    except IdentityError as e:
        # Refuse to start (an unsafe or unreadable key): say why on the bus and in the log,
        # then exit 2 before supervisord's startsecs, so the stage ends FATAL rather than
        # running without an identity (the same path as guardd's refusal).
        ctx.log.error("otr.no_key", error=str(e))
        state = OtrState(OtrStateKind.FAILED, since=time.time(), reason=str(e))
        await refuse(ctx, state, str(e))
    ctx.log.info("otr.identity", fingerprint=fingerprint(key), pinned=cfg.peer.otr_fingerprint)
    session = OtrSession(
        key,
        cfg.peer.otr_fingerprint,
        now=time.time(),
        timing=Timing(retry_initial=cfg.otr.retry_initial, retry_max=cfg.otr.retry_max),
        log=ctx.log,
    )
    if session.role is not None:
        ctx.log.info("otr.role", role=session.role.name.lower())
    else:
        ctx.log.error("otr.config_error", reason=session.reason)
    await Runner(ctx, session).run()
