"""punchd's runner against an in-process bus: two runners, a fake otrd and signald per side.

No NAT, no STUN: the two runners punch between host candidates of this machine. Also: bad
payloads from otrd are dropped and counted, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aioice.stun
import pytest
import structlog

from punchd.runner import Runner, checked_ice
from punchguard import config, messages
from punchguard.bus import Bus
from punchguard.messages import (
    OtrRecv,
    OtrSend,
    OtrState,
    OtrStateKind,
    PunchState,
    PunchStateKind,
    SignalState,
    SignalStateKind,
)
from punchguard.service import ServiceContext

KEYS = {"a": "1" * 64, "b": "2" * 64}


class Side:
    def __init__(self, name: str, run: Path) -> None:
        self.name = name
        self.run = run
        self.punchd = Bus("punchd", run, heartbeat=0.2, group=None)
        self.otrd = Bus("otrd", run, heartbeat=0.2, group=None)
        self.signald = Bus("signald", run, heartbeat=0.2, group=None)
        self.tap = Bus(None, run, group=None)
        self.state: PunchState | None = None
        self.path: messages.Path | None = None
        self.runner: Runner | None = None

    def buses(self) -> list[Bus]:
        return [self.punchd, self.otrd, self.signald, self.tap]


async def wait_until(predicate: Callable[[], bool], limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def sides() -> AsyncIterator[dict[str, Side]]:
    old_timers = (aioice.stun.RETRY_RTO, aioice.stun.RETRY_MAX)
    base = Path(tempfile.mkdtemp(prefix="pgpr-"))
    cfg = config.loads('[ice]\nstun_servers = []\n[bus]\nheartbeat = 0.2\ngroup = ""\n')
    out = {n: Side(n, base / n) for n in ("a", "b")}
    tasks: list[asyncio.Task[None]] = []
    for side in out.values():
        side.run.mkdir()
        for bus in side.buses():
            bus.start()
        ctx = ServiceContext("punchd", cfg, side.punchd, structlog.get_logger())
        side.runner = Runner(ctx)
        tasks.append(asyncio.create_task(side.runner.run()))
        tasks += [asyncio.create_task(b.run_heartbeat()) for b in (side.otrd, side.signald)]
        tasks.append(asyncio.create_task(side.punchd.run_heartbeat()))
    for name, side in out.items():
        peer = out["b" if name == "a" else "a"]
        side.signald.set_state(
            SignalState(SignalStateKind.PEER_ONLINE, address=KEYS[name] + "0" * 12,
                        peer_public_key=KEYS[peer.name])
        )  # fmt: skip
        side.tap.subscribe("punchd")
        tasks.append(asyncio.create_task(bridge(side, peer)))
    try:
        yield out
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for side in out.values():
            for bus in side.buses():
                await bus.close()
        aioice.stun.RETRY_RTO, aioice.stun.RETRY_MAX = old_timers
        shutil.rmtree(base, ignore_errors=True)


async def bridge(side: Side, peer: Side) -> None:
    while True:
        inc = await side.tap.receive()
        if isinstance(inc.msg, OtrSend):
            peer.otrd.publish(OtrRecv(inc.msg.payload))
        elif isinstance(inc.msg, PunchState):
            side.state = inc.msg
        elif isinstance(inc.msg, messages.Path):
            side.path = inc.msg


def waiting_for_otr(sides: dict[str, Side]) -> Callable[[], bool]:
    return lambda: all(s.state is not None and "OTR" in s.state.reason for s in sides.values())


async def test_two_runners_punch_between_host_candidates(sides: dict[str, Side]) -> None:
    a, b = sides["a"], sides["b"]
    await wait_until(waiting_for_otr(sides))
    for side in (a, b):
        side.otrd.set_state(OtrState(OtrStateKind.SECURE, verified=True))
    await wait_until(lambda: a.path is not None and b.path is not None)
    assert a.path is not None and b.path is not None
    assert a.path.endpoint_port == b.path.local_port
    assert b.path.endpoint_port == a.path.local_port
    assert a.state is not None and a.state.state == PunchStateKind.CONNECTED


async def test_unverified_otr_does_not_start_and_bad_payloads_are_counted(
    sides: dict[str, Side],
) -> None:
    a = sides["a"]
    await wait_until(waiting_for_otr(sides))
    a.otrd.set_state(OtrState(OtrStateKind.SECURE, verified=False))
    a.otrd.publish(OtrRecv(b"\x93garbage"))
    a.otrd.publish(OtrRecv(messages.pack(OtrState(OtrStateKind.AKE), src="x")))
    assert a.runner is not None
    runner = a.runner
    await wait_until(lambda: sum(runner.drops.values()) == 2)
    assert runner.drops == {"bad_payload": 1, "not_ice_params": 1}
    await asyncio.sleep(0.3)
    assert a.state is not None and a.state.state == PunchStateKind.IDLE


def test_out_of_range_ice_config_falls_back_to_defaults() -> None:
    cfg = config.loads("[ice]\ncheck_rto = 0\ncheck_retries = 99\n").ice
    fixed, problems = checked_ice(cfg)
    assert fixed.check_rto == 0.1 and fixed.check_retries == 4
    assert len(problems) == 2 and "ice.check_rto" in problems[0]
    assert checked_ice(config.IceConfig())[1] == []
