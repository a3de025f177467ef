"""One host's stack under real supervisord, inside a network namespace of its own."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from punchguard import SERVICES

pytestmark = pytest.mark.root
BIN = Path(sys.executable).parent


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, text=True, capture_output=True, check=check)


class Host:
    """A namespace with loopback up, and the directories and config of one stack."""

    def __init__(self, name: str) -> None:
        self.ns = name
        self.root = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        os.chmod(self.root, 0o755)  # the service user must reach the runtime dir inside
        self.runtime = self.root / "run"
        self.state = self.root / "state"
        self.config = self.root / "config.toml"
        self.config.write_text(
            f"[bus]\nheartbeat = 0.5\n[tox]\nbootstrap_nodes = []\n[ice]\nstun_servers = []\n"
            f'[wireguard]\ninterface = "{name}"\n'
        )
        os.chmod(self.config, 0o644)
        self.pair_with_a_peer()
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def pair_with_a_peer(self) -> None:
        """guardd needs a peer (its key and tunnel address): pair with a second identity."""
        peer_config = self.root / "peer-host.toml"
        peer_config.write_text(f'[paths]\nstate_dir = "{self.root}/peer-state"\n')
        pg = str(BIN / "punchguard")

        def run(config: Path, *args: str) -> str:
            env = {k: v for k, v in os.environ.items() if not k.startswith("PUNCHGUARD_")}
            if config == self.config:
                env = self.env()
            r = subprocess.run(
                [pg, "--config", str(config), *args], env=env, capture_output=True, text=True
            )
            assert r.returncode == 0, r.stderr
            return r.stdout

        run(self.config, "init")
        run(peer_config, "init")
        code = run(peer_config, "invite", "--code-only").strip()
        run(self.config, "pair", code, "--yes")

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PUNCHGUARD_CONFIG": str(self.config),
            "PUNCHGUARD_RUNTIME_DIR": str(self.runtime),
            "PUNCHGUARD_STATE_DIR": str(self.state),
        }

    def punchguard(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = ["ip", "netns", "exec", self.ns, str(BIN / "punchguard"), *args]
        return subprocess.run(
            argv, env=self.env(), text=True, capture_output=True, timeout=timeout, check=False
        )

    def remove(self) -> None:
        self.punchguard("stop", timeout=30)
        # everything still running in the namespace (a wireguard-go that outlives guardd...)
        pids = sh("ip", "netns", "pids", self.ns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        sock = Path("/var/run/wireguard") / f"{self.ns}.sock"
        sock.unlink(missing_ok=True)
        sh("ip", "netns", "del", self.ns, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def host(run_id: str) -> Iterator[Host]:
    h = Host(run_id)
    try:
        yield h
    finally:
        h.remove()


def wait_running(host: Host, timeout: float = 30) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        out = host.punchguard("ctl", "status").stdout
        states = {
            line.split()[0].split(":")[1]: line.split()[1]
            for line in out.splitlines()
            if line.startswith("punchguard:")
        }
        if len(states) == 4 and all(s == "RUNNING" for s in states.values()):
            return states
        time.sleep(0.3)
    raise AssertionError(f"not all RUNNING after {timeout} s: {states}")


def pid_of(host: Host, service: str) -> int:
    out = host.punchguard("ctl", "pid", f"punchguard:{service}").stdout.strip()
    return int(out)


def test_stack_runs_with_the_privilege_model(host: Host) -> None:
    r = host.punchguard("start")
    assert r.returncode == 0, r.stderr
    wait_running(host)

    # the unprivileged stages run as the service user with no capabilities; guardd as root
    for service in SERVICES:
        status = Path(f"/proc/{pid_of(host, service)}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = int(fields["Uid"].split()[0])
        cap_eff = int(fields["CapEff"].strip(), 16)
        if service == "guardd":
            assert uid == 0
        else:
            assert uid != 0, service
            assert cap_eff == 0, service

    # every stage's state reaches the tap
    r = host.punchguard("tap", "--json", "--filter", "", "--count", "40", "--timeout", "20")
    seen = {json.loads(line)["src"] for line in r.stdout.splitlines() if line.startswith("{")}
    assert set(SERVICES) <= seen, r.stdout

    # one stage restarts alone; the others keep their pids and the tap hears it again
    before = {s: pid_of(host, s) for s in SERVICES}
    r = host.punchguard("ctl", "restart", "punchguard:otrd")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_running(host)
    after = {s: pid_of(host, s) for s in SERVICES}
    assert after["otrd"] != before["otrd"]
    assert {s: after[s] for s in SERVICES if s != "otrd"} == {
        s: before[s] for s in SERVICES if s != "otrd"
    }
    r = host.punchguard("tap", "--json", "--filter", "otrd.", "--count", "1", "--timeout", "10")
    assert r.returncode == 0, r.stderr

    # the runtime directory and bus sockets are private to the group
    mode = host.runtime.stat().st_mode & 0o7777
    assert mode == 0o1770
    for service in SERVICES:
        assert (host.runtime / f"{service}.pub").stat().st_mode & 0o777 == 0o660


def test_down_removes_the_interface_and_cleanup_is_idempotent(host: Host) -> None:
    r = host.punchguard("start")
    assert r.returncode == 0, r.stderr
    wait_running(host)
    deadline = time.monotonic() + 20
    while sh("ip", "-n", host.ns, "link", "show", host.ns, check=False).returncode != 0:
        assert time.monotonic() < deadline, "guardd made no interface"
        time.sleep(0.2)
    # stopping the control plane leaves the interface (the data plane outlives it)
    assert host.punchguard("stop").returncode == 0
    time.sleep(0.5)
    assert sh("ip", "-n", host.ns, "link", "show", host.ns, check=False).returncode == 0
    # `down` takes it away on purpose; `cleanup` then finds nothing; both are repeatable
    r = host.punchguard("down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sh("ip", "-n", host.ns, "link", "show", host.ns, check=False).returncode != 0
    assert not (Path("/var/run/wireguard") / f"{host.ns}.sock").exists()
    assert host.punchguard("down").returncode == 0
    r = host.punchguard("cleanup")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
