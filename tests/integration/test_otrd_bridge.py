"""Two real otrd processes, their ``signal.*`` traffic bridged between two buses by the test.

The test plays signald (and punchd) on both hosts: it forwards A's ``signal.send`` as
``signal.recv`` on B's bus and back, reports the peer online on both, publishes ``otr.send``
and reads ``otr.recv``. The sessions must reach SECURE with verified fingerprints, carry
payloads both ways (one in several fragments), and come back after a kill -9 and restart of
either side without any manual step.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from punchguard.bus import Bus
from punchguard.messages import (
    Message,
    OtrRecv,
    OtrSend,
    OtrState,
    OtrStateKind,
    SignalRecv,
    SignalSend,
    SignalState,
    SignalStateKind,
)

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0


@dataclass
class Host:
    name: str
    base: Path
    proc: subprocess.Popen[bytes] | None = None
    fingerprint: str = ""
    states: list[OtrState] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    wire: list[bytes] = field(default_factory=list)

    @property
    def runtime(self) -> Path:
        return self.base / "run"

    @property
    def state_dir(self) -> Path:
        return self.base / "state"

    @property
    def config(self) -> Path:
        return self.base / "config.toml"

    def print_fingerprint(self) -> str:
        args = ["--print-fingerprint", "--state-dir", str(self.state_dir)]
        out = subprocess.run(
            [sys.executable, "-m", "otrd", *args],
            check=True, capture_output=True, timeout=60, cwd=REPO,
        )  # fmt: skip
        return out.stdout.decode().strip()

    def start(self) -> None:
        log = open(self.base / "otrd.log", "ab")  # noqa: SIM115  # handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "otrd", "--config", str(self.config),
             "--runtime-dir", str(self.runtime), "--state-dir", str(self.state_dir)],
            stdout=log, stderr=log, start_new_session=True, cwd=REPO,
        )  # fmt: skip
        log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def latest(self) -> OtrState | None:
        return self.states[-1] if self.states else None


@pytest.fixture
def hosts() -> Iterator[tuple[Host, Host]]:
    a = Host("a", Path(tempfile.mkdtemp(prefix="pg-otrA-")))
    b = Host("b", Path(tempfile.mkdtemp(prefix="pg-otrB-")))
    try:
        for h in (a, b):
            h.runtime.mkdir()
            h.fingerprint = h.print_fingerprint()
        for h, peer in ((a, b), (b, a)):
            h.config.write_text(
                f'[peer]\notr_fingerprint = "{peer.fingerprint}"\n'
                "[otr]\nretry_initial = 0.5\nretry_max = 2.0\n"
                '[bus]\nheartbeat = 0.5\n[log]\nlevel = "debug"\nformat = "json"\n'
            )
        yield a, b
    finally:
        for h in (a, b):
            h.kill()
            if os.environ.get("OTRD_KEEP_LOGS"):
                print(h.name, (h.base / "otrd.log").read_text()[-5000:])
            shutil.rmtree(h.base, ignore_errors=True)


async def _collect(bus: Bus, host: Host, peer_signald: Bus) -> None:
    while True:
        inc = await bus.receive()
        msg: Message = inc.msg
        if isinstance(msg, SignalSend):
            host.wire.append(msg.payload)
            peer_signald.publish(SignalRecv(msg.payload))
        elif isinstance(msg, OtrState):
            host.states.append(msg)
        elif isinstance(msg, OtrRecv):
            host.received.append(msg.payload)


@contextlib.asynccontextmanager
async def bridged(a: Host, b: Host) -> AsyncIterator[dict[str, Bus]]:
    async with contextlib.AsyncExitStack() as stack:
        buses = {}
        for h in (a, b):
            for svc in ("signald", "punchd"):
                bus = await stack.enter_async_context(Bus(svc, h.runtime, heartbeat=0.5))
                types = ("signal.send",) if svc == "signald" else ("otr.recv", "otr.state")
                bus.subscribe("otrd", types=types)
                buses[f"{svc}.{h.name}"] = bus
        tasks = [
            asyncio.create_task(_collect(buses["signald.a"], a, buses["signald.b"])),
            asyncio.create_task(_collect(buses["signald.b"], b, buses["signald.a"])),
            asyncio.create_task(_collect(buses["punchd.a"], a, buses["signald.b"])),
            asyncio.create_task(_collect(buses["punchd.b"], b, buses["signald.a"])),
        ]
        for h in (a, b):
            sig = buses[f"signald.{h.name}"]
            sig.set_state(SignalState(SignalStateKind.PEER_ONLINE, since=time.time()))
            tasks.append(asyncio.create_task(sig.run_heartbeat()))
        try:
            yield buses
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t


async def wait_for(cond: object, what: str) -> None:
    assert callable(cond)
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def secure(h: Host, peer: Host, after: float = 0.0) -> bool:
    s = h.latest()
    return (
        s is not None
        and s.state == OtrStateKind.SECURE
        and s.verified
        and s.fingerprint == peer.fingerprint
        and s.since >= after
    )


async def deliver(src: Bus, dst: Host, payload: bytes) -> None:
    """Publish until it arrives (a message sent just before the peer switched keys is lost,
    as in real life; punchd retries the same way)."""
    deadline = time.monotonic() + TIMEOUT
    while payload not in dst.received:
        assert time.monotonic() < deadline, f"{len(payload)}-byte payload never arrived"
        src.publish(OtrSend(payload))
        for _ in range(20):
            if payload in dst.received:
                return
            await asyncio.sleep(0.05)


async def test_two_otrd_secure_exchange_and_survive_kill9(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    a.start()
    b.start()
    async with bridged(a, b) as buses:
        await wait_for(lambda: secure(a, b) and secure(b, a), "both sides SECURE")
        big = os.urandom(2048)
        await deliver(buses["punchd.a"], b, b"hello from a")
        await deliver(buses["punchd.b"], a, b"hello from b")
        await deliver(buses["punchd.a"], b, big)
        assert all(len(w) <= 1372 for w in a.wire + b.wire)
        assert sum(1 for w in a.wire if w.startswith(b"?OTR,")) >= 2  # the 2 KB went fragmented

        for victim, other in ((a, b), (b, a)):
            victim.kill()
            restarted = time.time()
            victim.states.clear()
            victim.start()
            await wait_for(
                lambda v=victim, o=other, t=restarted: secure(v, o, after=t) and secure(o, v),
                f"SECURE again after kill -9 of {victim.name}",
            )
            payload = f"after restart of {victim.name}".encode()
            await deliver(buses[f"punchd.{victim.name}"], other, payload)
            await deliver(buses[f"punchd.{other.name}"], victim, payload + b" (reply)")
    assert a.proc is not None and a.proc.poll() is None
    assert b.proc is not None and b.proc.poll() is None
