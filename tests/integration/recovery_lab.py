"""Helpers for the recovery tests (issue 9): one lab per test module, a ping through the tunnel
for the module's life, faults through the real CLI, and recovery measured from the ping."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from punchguard import faults
from punchguard import lab as labmod
from punchguard.commands.lab import tunnel_addresses, watch
from punchguard.netlab import NatLab

PUNCHGUARD = str(Path(sys.executable).with_name("punchguard"))
TUNNEL_TIMEOUT = 120.0  # from both stacks started (measured ~11 s)
RECOVERY_TIMEOUT = 120.0  # from a fault to the first ping reply (measured 0-25 s)
STAGES = ("signald", "otrd", "punchd", "guardd")


@dataclass
class RecoveryLab:
    info: labmod.LabInfo
    pinger: faults.Pinger
    results: Path | None  # JSON lines, one recovery per line (always printed too)

    @property
    def name(self) -> str:
        return self.info.lab_id

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [PUNCHGUARD, "lab", *args, "--name", self.name] if args[0] != "ctl"
            else [PUNCHGUARD, "lab", *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        assert r.returncode == 0, f"punchguard lab {' '.join(args)}: {r.stdout}{r.stderr}"
        return r

    def ctl(self, host: str, *args: str) -> str:
        return self.cli("ctl", host, "--name", self.name, "--", *args).stdout

    def wait_recovered(self, fault_at: float, label: str) -> float:
        """Seconds from ``fault_at`` (unix time) to the first reply to a ping sent after it;
        fails the test if none comes within RECOVERY_TIMEOUT. Recorded in ``results``."""
        got = self.pinger.wait_reply_after(fault_at, RECOVERY_TIMEOUT)
        assert got is not None, f"{label}: no ping reply within {RECOVERY_TIMEOUT:.0f} s"
        took = round(got - fault_at, 3)
        if self.results is not None:
            with open(self.results, "a") as fh:
                line = {"lab": self.name, "fault": label, "recovery_s": took}
                fh.write(json.dumps(line) + "\n")
        print(f"{label}: recovered in {took} s")
        return took

    def guard_states(self) -> dict[str, dict[str, object]]:
        out = {}
        for name, host in self.info.hosts.items():
            r = host.punchguard("status", "--json", timeout=30)
            stages = json.loads(r.stdout)["stages"] if r.stdout.strip() else {}
            out[name] = stages.get("guardd") or {}  # None while guardd is (re)starting
        return out

    def wait_both_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        states: dict[str, dict[str, object]] = {}
        while time.monotonic() < deadline:
            states = self.guard_states()
            if all(s.get("state") == "up" for s in states.values()):
                return
            time.sleep(0.5)
        raise AssertionError(f"guardd not UP on both hosts: {states}")

    def pid(self, host: str, stage: str) -> int:
        out = self.ctl(host, "pid", f"punchguard:{stage}").strip()
        return int(out) if out.isdigit() else 0

    def wait_running(self, host: str, stage: str, old_pid: int, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.pid(host, stage)
            if pid and pid != old_pid:
                return pid
            time.sleep(0.2)
        raise AssertionError(f"{host}: {stage} did not come back after kill -9")

    def kill9(self, host: str, stage: str) -> int:
        pid = self.pid(host, stage)
        assert pid, f"{host}: {stage} is not running"
        os.kill(pid, signal.SIGKILL)
        return pid


def assert_nothing_left(info: labmod.LabInfo) -> None:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{info.lab_id}-" not in namespaces
    wg = subprocess.run(["pgrep", "-a", "wireguard-go"], capture_output=True, text=True).stdout
    assert not any(h.interface in wg for h in info.hosts.values()), wg
    assert not Path(info.workdir).exists()


@contextmanager
def recovery_lab(policy: str, results: Path | None) -> Iterator[RecoveryLab]:
    """A lab with both stacks running and the tunnel up, a ping a -> b every 100 ms, removed
    with everything in it at the end (even on failure)."""
    lab_id = "pr" + secrets.token_hex(2)
    info = labmod.build(lab_id, policy=policy, say=lambda _m: None, start=False)
    pinger: faults.Pinger | None = None
    try:
        labmod.start_stacks(info)
        flows = asyncio.run(watch(info, TUNNEL_TIMEOUT, lambda _m: None))
        assert all("tunnel_up" in f.reached for f in flows.values()), {
            n: f.reached for n, f in flows.items()
        }
        out = Path(info.workdir) / "ping.txt"
        pinger = faults.Pinger(info, "a", tunnel_addresses(info)["b"], out)
        assert pinger.wait_reply_after(time.time(), 30) is not None, "no ping across the tunnel"
        yield RecoveryLab(info, pinger, results)
    finally:
        if pinger is not None:
            pinger.stop()
        labmod.destroy(info)
        NatLab.cleanup_leftovers(lab_id)
    assert_nothing_left(info)


def results_file() -> Path | None:
    """Where the recovery times are appended (``PG_RECOVERY_RESULTS``; unset: printed only,
    so a test run leaves no file behind)."""
    text = os.environ.get("PG_RECOVERY_RESULTS", "")
    return Path(text) if text else None


def env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    return int(text) if re.fullmatch(r"\d+", text) else default
