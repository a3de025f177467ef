"""A two-host lab for guardd: two network namespaces joined by a veth, one guardd per host.

Used by tests/integration/test_guardd_tunnel.py and bench/guard.py. Everything it creates is
named after a unique ``run_id`` and removed by ``close()``: namespaces, the veth, every
wireguard-go (found by its pid file and by its exact command line), UAPI sockets, temp dirs.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from guardd import keys, uapi
from punchguard.bus import Bus
from punchguard.messages import GuardState, Role
from punchguard.messages import Path as PunchPath

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
UNDERLAY = {"a": "192.0.2.1", "b": "192.0.2.2"}
TUNNEL = {"a": "10.77.0.1", "b": "10.77.0.2"}
PORT = {"a": 51001, "b": 51002}


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=30)


@dataclass
class Host:
    name: str  # "a" or "b"
    netns: str
    ifname: str
    root: Path
    keepalive: int = 5
    proc: subprocess.Popen[bytes] | None = None
    punchd: Bus | None = None
    tap: Bus | None = None
    states: list[GuardState] = field(default_factory=list)  # from the current guardd only
    started: float = 0.0  # wall time the current guardd was started
    public_key: str = ""

    @property
    def runtime(self) -> Path:
        return self.root / "run"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    def write_config(self, peer_key: str, peer: str) -> None:
        self.config.write_text(
            f"""
[bus]
heartbeat = 0.5
group = ""

[log]
level = "debug"
format = "json"

[wireguard]
interface = "{self.ifname}"
backend = "wireguard-go"
keepalive = {self.keepalive}
address = "{TUNNEL[self.name]}/24"

[peer]
wireguard_public_key = "{peer_key}"
tunnel_address = "{TUNNEL[peer]}/24"
"""
        )

    def start_guardd(self) -> None:
        self.states.clear()
        self.started = time.time()
        log = open(self.root / "guardd.log", "ab")  # noqa: SIM115  # lives with the process
        env = dict(os.environ, PUNCHGUARD_RUNTIME_DIR=str(self.runtime))
        env.pop("PUNCHGUARD_STATE_DIR", None)
        self.proc = subprocess.Popen(
            [
                *("ip", "netns", "exec", self.netns, PYTHON, "-m", "guardd"),
                *("--config", str(self.config), "--state-dir", str(self.state_dir)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as under supervisord
            env=env,
            cwd=REPO,
        )
        log.close()

    def stop_guardd(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # the whole group, as supervisord's stopasgroup does
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait(5)
        finally:
            self.proc = None

    def wireguard_go_pids(self) -> list[int]:
        """wireguard-go processes serving exactly this interface (by exact command line)."""
        pids = []
        want = [b"-f", self.ifname.encode()]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
            except OSError:
                continue
            if argv and argv[0].endswith(b"wireguard-go") and argv[1:] == want:
                pids.append(int(entry.name))
        return pids

    def latest(self) -> GuardState | None:
        return self.states[-1] if self.states else None


class Lab:
    """Two hosts; use ``async with Lab(run_id) as lab``."""

    def __init__(self, run_id: str, keepalive: int = 5) -> None:
        self.run_id = run_id
        self.tmp = Path(tempfile.mkdtemp(prefix=f"pg-{run_id}-"))
        self.hosts = {
            n: Host(n, f"{run_id}{n}", f"{run_id}w{n}", self.tmp / n, keepalive) for n in "ab"
        }
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Lab:
        try:
            self.build()
            await self.attach()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.dump_logs()  # pytest shows captured output of a failed test
        await self.close()

    def dump_logs(self) -> None:
        for h in self.hosts.values():
            for log in sorted(h.root.glob("*.log")) + sorted(h.runtime.glob("*.log")):
                print(f"===== {h.name}: {log.name}\n{log.read_text(errors='replace')[-6000:]}")

    def build(self) -> None:
        a, b = self.hosts["a"], self.hosts["b"]
        for h in (a, b):
            sh("ip", "netns", "add", h.netns)
            sh("ip", "-n", h.netns, "link", "set", "lo", "up")
            h.runtime.mkdir(parents=True)
            h.state_dir.mkdir(parents=True, mode=0o700)
            h.public_key = keys.ensure_key(h.state_dir).public_key
        va, vb = f"{self.run_id}va", f"{self.run_id}vb"
        sh("ip", "link", "add", va, "netns", a.netns, "type", "veth", "peer", vb, "netns", b.netns)
        for h, dev in ((a, va), (b, vb)):
            sh("ip", "-n", h.netns, "addr", "add", f"{UNDERLAY[h.name]}/24", "dev", dev)
            sh("ip", "-n", h.netns, "link", "set", dev, "up")
        a.write_config(b.public_key, "b")
        b.write_config(a.public_key, "a")

    async def attach(self) -> None:
        for h in self.hosts.values():
            h.punchd = Bus("punchd", h.runtime, heartbeat=0.5, group=None)
            h.punchd.start()
            h.tap = Bus(None, h.runtime, group=None)
            h.tap.start()
            h.tap.subscribe("guardd", types=("guard.state",))
            self._tasks.append(asyncio.create_task(h.punchd.run_heartbeat()))
            self._tasks.append(asyncio.create_task(self._collect(h)))

    async def _collect(self, h: Host) -> None:
        assert h.tap is not None
        while True:
            inc = await h.tap.receive()
            if isinstance(inc.msg, GuardState) and inc.env.ts >= h.started:
                h.states.append(inc.msg)
                del h.states[:-200]

    def give_path(self, name: str, endpoint: str | None = None, port: int | None = None) -> None:
        """Feed host ``name`` the path to its peer (level-triggered, like punchd would)."""
        h = self.hosts[name]
        peer = "b" if name == "a" else "a"
        assert h.punchd is not None
        h.punchd.set_state(
            PunchPath(
                local_port=PORT[name],
                endpoint_host=endpoint or UNDERLAY[peer],
                endpoint_port=port or PORT[peer],
                role=Role.CONTROLLING if name == "a" else Role.CONTROLLED,
                generation=1,
            )
        )

    async def wait_state(
        self, name: str, pred: Callable[[GuardState], bool], limit: float = 30
    ) -> GuardState:
        h = self.hosts[name]
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            st = h.latest()
            if st is not None and pred(st):
                return st
            await asyncio.sleep(0.05)
        raise AssertionError(f"host {name}: condition not met in {limit} s; last {h.latest()}")

    def netns_exec(self, name: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[name].netns, *args]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for h in self.hosts.values():
            for bus in (h.punchd, h.tap):
                if bus is not None:
                    await bus.close()
            h.stop_guardd(signal.SIGKILL)
            for pid in h.wireguard_go_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            sh("ip", "netns", "del", h.netns, check=False)
            uapi.socket_path(h.ifname).unlink(missing_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
