"""A private Tox network on loopback for signald's integration tests and bench/signal.py.

- ``BootstrapNode``: a fresh ``tox-bootstrapd`` (design 4.1 config) on random ports with its TCP
  relay on; its DHT key is read from the first 32 bytes of its keys file.
- ``SignaldProcess``: one ``python -m signald`` with its own config, runtime and state dirs, in its
  own process group; ``kill9()`` and ``start()`` again for restart tests.
- ``BusProbe``: a fake ``otrd`` (and ``punchd``) endpoint on a signald's bus that publishes
  ``signal.send`` / ``signal.policy`` and follows ``signal.state`` / ``signal.recv`` / ``error``.
Everything is removed on exit, even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from punchguard.bus import Bus
from punchguard.messages import Error, Message, SignalRecv, SignalSend, SignalState

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (toxcore and bootstrapd use both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def _kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


class BootstrapNode:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pg-toxboot-"))
        self.port = free_port()
        self.tcp_port = free_port()
        self.public_key = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BootstrapNode:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        keys = self.dir / "keys"
        conf = self.dir / "bootstrapd.conf"
        conf.write_text(
            f"port = {self.port}\n"
            f'keys_file_path = "{keys}"\n'
            f'pid_file_path = "{self.dir / "pid"}"\n'
            "enable_ipv6 = false\n"
            "enable_ipv4_fallback = true\n"
            "enable_lan_discovery = false\n"
            "enable_tcp_relay = true\n"
            f"tcp_relay_ports = [{self.tcp_port}]\n"
            "enable_motd = false\n"
            "bootstrap_nodes = ()\n"
        )
        log = open(self.dir / "log", "ab")  # noqa: SIM115  # closed with the process
        self.proc = subprocess.Popen(
            ["tox-bootstrapd", f"--config={conf}", "--foreground", "--log-backend=stdout"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tox-bootstrapd exited: {(self.dir / 'log').read_text()}")
            if keys.exists() and keys.stat().st_size >= 64:
                self.public_key = keys.read_bytes()[:32].hex().upper()
                return
            time.sleep(0.05)
        raise RuntimeError("tox-bootstrapd wrote no keys file within 20 s")

    def stop(self) -> None:
        """Stop the node, keeping its keys: ``start()`` brings the same node back."""
        if self.proc is not None:
            _kill_group(self.proc, signal.SIGTERM)
            _kill_group(self.proc)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def toml(self) -> str:
        return (
            "[[tox.bootstrap_nodes]]\n"
            f'host = "127.0.0.1"\nport = {self.port}\n'
            f'public_key = "{self.public_key}"\ntcp_port = {self.tcp_port}\n'
        )


class SignaldProcess:
    """``python -m signald`` with private dirs; the config is rewritten on every start."""

    def __init__(
        self, name: str, node: BootstrapNode, *, mode: str = "always", user: str | None = None
    ) -> None:
        self.name = name
        self.user = user  # run as this user (root only), its dirs owned by it
        self.node = node
        self.mode = mode
        self.base = Path(tempfile.mkdtemp(prefix=f"pg-{name}-"))
        self.runtime_dir = self.base / "run"
        self.state_dir = self.base / "state"
        self.runtime_dir.mkdir(mode=0o750)
        self.config = self.base / "config.toml"
        self.log_path = self.base / "signald.log"
        self.peer_address = ""
        self.idle_sleep = 0.02  # tox.iterate_idle_sleep
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        if user is not None:
            self.state_dir.mkdir(mode=0o700)
            for d in (self.base, self.runtime_dir, self.state_dir):
                shutil.chown(d, user, user)

    def write_config(self) -> None:
        self.config.write_text(
            f'[log]\nlevel = "debug"\nformat = "json"\n\n[bus]\nheartbeat = 0.5\n\n'
            f'[policy]\nmode = "{self.mode}"\n\n'
            f"[tox]\nstart_port = {self.port}\nend_port = {self.port}\n"
            f"iterate_sleep = 0.005\niterate_idle_sleep = {self.idle_sleep}\n"
            f"{self.node.toml()}\n"
            f'[peer]\ntox_address = "{self.peer_address}"\n'
        )

    def start(self) -> None:
        self.write_config()
        env = dict(os.environ)
        env.pop("PUNCHGUARD_CONFIG", None)
        env.pop("PUNCHGUARD_RUNTIME_DIR", None)
        env.pop("PUNCHGUARD_STATE_DIR", None)
        log = open(self.log_path, "ab")  # noqa: SIM115  # closed with the process
        self.proc = subprocess.Popen(
            [
                PYTHON, "-m", "signald", "--config", str(self.config),
                "--runtime-dir", str(self.runtime_dir), "--state-dir", str(self.state_dir),
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=ROOT,
            # the user's own group, no supplementary groups (root's gid would hit /root's 0701)
            user=self.user, group=self.user, extra_groups=[] if self.user else None,
        )  # fmt: skip
        log.close()

    def address_offline(self) -> str:
        """This host's address via ``python -m signald.address`` (creates the identity)."""
        self.write_config()
        out = subprocess.run(
            [PYTHON, "-m", "signald.address", "--config", str(self.config),
             "--state-dir", str(self.state_dir)],
            capture_output=True, check=True, timeout=30, cwd=ROOT,
        )  # fmt: skip
        return out.stdout.decode().strip()

    def kill9(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc)
            self.proc = None

    def stop(self) -> int | None:
        """SIGTERM, wait; the exit code (None if it had to be killed)."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return None

    def close(self) -> None:
        self.kill9()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class BusProbe:
    """A fake otrd + punchd beside one signald: send payloads, watch its state and payloads."""

    def __init__(self, runtime_dir: Path, group: str | None = None) -> None:
        # ``group``: the bus group, so a signald running as another user may connect
        self.otrd = Bus("otrd", runtime_dir, group=group)
        self.punchd = Bus("punchd", runtime_dir, group=group)
        self.guardd = Bus("guardd", runtime_dir, group=group)
        self.state: SignalState | None = None
        self.states: list[tuple[float, SignalState]] = []
        self.received: list[tuple[float, bytes]] = []
        self.errors: list[Error] = []
        self.echo = False  # send every payload received straight back (bench: round trips)
        self._reader: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()  # set on every message: wait_for wakes at once

    async def __aenter__(self) -> BusProbe:
        await self.otrd.__aenter__()
        await self.punchd.__aenter__()
        await self.guardd.__aenter__()
        self.otrd.subscribe("signald", types=("signal.state", "signal.recv", "error"))
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.guardd.close()
        await self.punchd.close()
        await self.otrd.close()

    async def _read(self) -> None:
        while True:
            inc = await self.otrd.receive()
            now = time.monotonic()
            msg: Message = inc.msg
            if isinstance(msg, SignalState):
                self.state = msg
                self.states.append((now, msg))
            elif isinstance(msg, SignalRecv):
                if self.echo:
                    self.send(msg.payload)
                self.received.append((now, msg.payload))
            elif isinstance(msg, Error):
                self.errors.append(msg)
            self._arrived.set()

    def send(self, payload: bytes) -> None:
        self.otrd.publish(SignalSend(payload))

    async def wait_for(
        self,
        cond: Callable[[], object],
        timeout: float = 60.0,  # noqa: ASYNC109  # a polling deadline, not a cancel scope
        what: str = "condition",
    ) -> float:
        """Poll ``cond`` until true; the time it took. TimeoutError names ``what``."""
        t0 = time.monotonic()
        while not cond():
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{what} not reached in {timeout} s (state: {self.state})")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):  # re-check at least every 20 ms
                await asyncio.wait_for(self._arrived.wait(), 0.02)
        return time.monotonic() - t0
