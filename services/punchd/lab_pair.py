"""Two real punchd processes in a ``punchguard.netlab`` NAT lab, their ICE messages bridged.

Tooling for the integration tests and bench/punch.py (not used by the daemon). Each lab host
gets its own runtime directory (namespaces share the filesystem, so the bus sockets work across
them); in the root namespace this module plays a fake ``otrd`` and a fake ``signald`` per host:
``signal.state`` carries the two Tox keys (so the roles are decided), ``otr.state`` says SECURE
and verified, and each side's ``punchd.otr.send`` payload is published as ``otr.recv`` on the
other side's fake otrd. Needs root.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from punchguard import messages
from punchguard.bus import Bus
from punchguard.config import TurnServer
from punchguard.messages import (
    OtrRecv,
    OtrSend,
    OtrState,
    OtrStateKind,
    PunchState,
    SignalState,
    SignalStateKind,
)
from punchguard.netlab import NatLab, SideName

# Host a has the smaller key: it is the controlling side.
KEYS = {"a": "A1" * 32, "b": "B2" * 32}
HEARTBEAT = 0.5


@dataclass
class Host:
    name: SideName
    runtime_dir: Path
    log_file: Path
    state: PunchState | None = None
    path: messages.Path | None = None
    states: list[PunchState] = field(default_factory=list)  # every distinct state seen
    times: list[float] = field(default_factory=list)  # monotonic arrival time of each
    path_at: float = 0.0  # monotonic arrival time of the first path


def other(name: SideName) -> SideName:
    return "b" if name == "a" else "a"


def config_text(stun: tuple[str, ...], turn: TurnServer | None) -> str:
    lines = ["[bus]", f"heartbeat = {HEARTBEAT}", 'group = ""', "", "[log]", 'format = "json"']
    lines += ["", "[ice]", "stun_servers = [" + ", ".join(f'"{s}"' for s in stun) + "]"]
    if turn is not None:
        lines += [
            "turn_servers = [{ "
            f'host = "{turn.host}", port = {turn.port}, username = "{turn.username}", '
            f'password = "{turn.password}" }}]'
        ]
    return "\n".join(lines) + "\n"


class PunchPair:
    """``async with PunchPair(lab, stun, turn) as pair:`` starts both punchd and the bridge."""

    def __init__(
        self,
        lab: NatLab,
        stun: tuple[str, ...],
        turn: TurnServer | None = None,
        log_level: Literal["debug", "info"] = "info",
    ) -> None:
        self.lab = lab
        self.base = Path(tempfile.mkdtemp(prefix="pgp-"))
        self.config = self.base / "punchd.toml"
        self.config.write_text(config_text(stun, turn))
        self.log_level = log_level
        self.hosts: dict[SideName, Host] = {}
        self.buses: list[Bus] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started = 0.0  # monotonic: both punchd spawned
        self.secure_at = 0.0  # monotonic: OTR said SECURE on both sides (the punch may start)

    async def __aenter__(self) -> PunchPair:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start(self) -> None:
        otrd: dict[SideName, Bus] = {}
        taps: dict[SideName, Bus] = {}
        sides: tuple[SideName, SideName] = ("a", "b")
        for name in sides:
            run = self.base / name
            run.mkdir()
            host = Host(name, run, self.base / f"punchd-{name}.log")
            self.hosts[name] = host
            otrd[name] = Bus("otrd", run, heartbeat=HEARTBEAT, group=None)
            signald = Bus("signald", run, heartbeat=HEARTBEAT, group=None)
            tap = taps[name] = Bus(None, run, group=None)
            for bus in (otrd[name], signald, tap):
                bus.start()
                self.buses.append(bus)
            signald.set_state(
                SignalState(SignalStateKind.PEER_ONLINE, address=KEYS[name] + "0" * 12,
                            peer_public_key=KEYS[other(name)])
            )  # fmt: skip
            otrd[name].set_state(OtrState(OtrStateKind.NO_SESSION))
            tap.subscribe("punchd")
            for bus in (otrd[name], signald):
                self.tasks.append(asyncio.create_task(bus.run_heartbeat()))
        for name in sides:
            bridge = self._bridge(self.hosts[name], taps[name], otrd[other(name)])
            self.tasks.append(asyncio.create_task(bridge))
        self.started = time.monotonic()
        for name in sides:
            host = self.hosts[name]
            argv = [sys.executable, "-m", "punchd", "--config", str(self.config), "--runtime-dir",
                    str(host.runtime_dir), "--log-level", self.log_level]  # fmt: skip
            self.procs.append(self._spawn(self.lab.side(name).host_ns, argv, host.log_file))

        # OTR turns secure once both stacks run (as it would over Tox): by then both punchd
        # follow their otrd, so no ICE message is published to nobody...
        # ...and know both Tox keys (signald's state may need a heartbeat to reach them).
        def waiting_for_otr() -> bool:
            return all(h.state is not None and "OTR" in h.state.reason for h in self.hosts.values())

        await self.wait_for(waiting_for_otr, 30)
        self.secure_at = time.monotonic()
        for bus in otrd.values():
            bus.set_state(OtrState(OtrStateKind.SECURE, fingerprint="f" * 40, verified=True))

    def _spawn(self, ns: str, argv: list[str], log_file: Path) -> subprocess.Popen[bytes]:
        with open(log_file, "wb") as log:
            return self.lab.spawn(ns, argv, stdout=log, stderr=log)

    async def _bridge(self, host: Host, tap: Bus, peer_otrd: Bus) -> None:
        while True:
            inc = await tap.receive()
            if isinstance(inc.msg, OtrSend):
                peer_otrd.publish(OtrRecv(payload=inc.msg.payload))
            elif isinstance(inc.msg, PunchState):
                if host.state is None or inc.msg != host.state:
                    host.states.append(inc.msg)
                    host.times.append(time.monotonic())
                host.state = inc.msg
            elif isinstance(inc.msg, messages.Path):
                if host.path is None:
                    host.path_at = time.monotonic()
                host.path = inc.msg

    async def wait_for(self, predicate: Callable[[], bool], limit: float) -> float:
        """Poll ``predicate()`` until true; returns the seconds since OTR turned secure."""
        deadline = time.monotonic() + limit
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met in {limit} s: {self.describe()}")
            await asyncio.sleep(0.005)
        return time.monotonic() - (self.secure_at or self.started)

    def describe(self) -> str:
        parts = []
        for name, host in self.hosts.items():
            s = host.state
            parts.append(
                f"{name}: {s.state.name if s else '-'} ({s.reason if s else ''}) path={host.path}"
            )
        return "; ".join(parts)

    def logs(self) -> str:
        out = []
        for host in self.hosts.values():
            with contextlib.suppress(OSError):
                out.append(f"--- punchd {host.name}\n{host.log_file.read_text()[-6000:]}")
        return "\n".join(out)

    async def close(self) -> None:
        for proc in self.procs:
            self.lab.stop(proc)
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for bus in self.buses:
            await bus.close()
        shutil.rmtree(self.base, ignore_errors=True)
