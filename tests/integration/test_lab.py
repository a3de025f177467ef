"""The whole flow in the two-NAT lab, every component real: tox-bootstrapd, coturn, two NAT
routers with stateful firewalls, supervisord per host, WireGuard (wireguard-go here)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from punchguard import lab as labmod
from punchguard.commands.lab import ping, watch
from punchguard.netlab import NatLab

pytestmark = pytest.mark.root
PUNCHGUARD = str(Path(sys.executable).with_name("punchguard"))
TUNNEL_TIMEOUT = 120.0  # generous: measured ~15-25 s on this machine


def assert_nothing_left(info: labmod.LabInfo) -> None:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert info.lab_id not in namespaces
    for host in info.hosts.values():
        assert not (Path("/var/run/wireguard") / f"{host.interface}.sock").exists()
    wg = subprocess.run(["pgrep", "-a", "wireguard-go"], capture_output=True, text=True).stdout
    assert not any(h.interface in wg for h in info.hosts.values()), wg
    assert not Path(info.workdir).exists()


@pytest.fixture
def lab_info(run_id: str) -> Iterator[labmod.LabInfo]:
    info = labmod.build(run_id, policy="on-demand", say=lambda _m: None, start=False)
    try:
        yield info
    finally:
        labmod.destroy(info)
        NatLab.cleanup_leftovers(run_id)
    assert_nothing_left(info)


def test_cone_cone_on_demand_flow_in_order(lab_info: labmod.LabInfo) -> None:
    info = lab_info
    a = info.hosts["a"]
    # the tap on host a, started before the stacks: it must see every stage, in order
    tap_out = Path(info.workdir) / "tap-a.jsonl"
    with open(tap_out, "w") as fh:
        tap = subprocess.Popen(
            a.argv([PUNCHGUARD, "tap", "--json"]), env=a.env(), stdout=fh, start_new_session=True
        )
    try:
        labmod.start_stacks(info)
        flows = asyncio.run(watch(info, TUNNEL_TIMEOUT, lambda _m: None))
        assert all("tunnel_up" in f.reached for f in flows.values()), {
            n: f.reached for n, f in flows.items()
        }
        for src, dst in (("a", "b"), ("b", "a")):
            ok, text = ping(info, src, dst)
            assert ok, f"ping {src} -> {dst} {text}"
        # direct path through two cone NATs
        assert flows["a"].path is not None
        assert not flows["a"].path.relayed

        # on-demand: Tox goes offline once the tunnel is up
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lines = [json.loads(x) for x in tap_out.read_text().splitlines() if x.startswith("{")]
            up_at = _first(
                lines, lambda m: m["type"] == "guard.state" and m["body"]["state"] == "up"
            )
            if (
                up_at is not None
                and _first(
                    lines[up_at:],
                    lambda m: m["type"] == "signal.state" and m["body"]["state"] == "offline",
                )
                is not None
            ):
                break
            time.sleep(0.5)
        else:
            pytest.fail("Tox did not go offline after the tunnel came up (on-demand policy)")
    finally:
        tap.kill()
        tap.wait()

    order = [
        _first(lines, lambda m: m["type"] == "signal.state"
               and m["body"]["state"] in ("online", "peer_online")),
        _first(lines, _is("signal.state", "peer_online")),
        _first(lines, lambda m: m["type"] == "otr.state" and m["body"]["state"] == "secure"
               and m["body"]["verified"]),
        _first(lines, lambda m: m["type"] == "punch.path"),
        _first(lines, lambda m: m["type"] == "guard.state" and m["body"]["state"] == "up"),
    ]  # fmt: skip
    assert None not in order, order
    assert order == sorted(order), order  # type: ignore[type-var]  # no None (checked above)

    # supervisord runs the four programs on each host
    for host in info.hosts.values():
        out = host.punchguard("ctl", "status").stdout
        assert out.count("RUNNING") == 4, out


def _is(msg_type: str, state: str) -> object:
    return lambda m: m["type"] == msg_type and m["body"]["state"] == state


def _first(lines: list[dict[str, object]], pred: object) -> int | None:
    for i, m in enumerate(lines):
        if pred(m):  # type: ignore[operator]  # a predicate over one tap line
            return i
    return None


def test_cli_lab_up_always_policy_status_exec_down(run_id: str) -> None:
    def pg(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PUNCHGUARD, "lab", *args], capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip

    try:
        r = pg("up", "--name", run_id, "--policy", "always", "--timeout", str(TUNNEL_TIMEOUT),
               timeout=TUNNEL_TIMEOUT + 120)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert "tunnel up in" in r.stdout
        assert "ping a -> b" in r.stdout
        assert "direct" in r.stdout

        r = pg("status", "--name", run_id, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        status = json.loads(r.stdout)
        for host in ("a", "b"):
            assert status["hosts"][host]["tunnel"] == "up"
            # always-on: Tox stays online with the tunnel up
            assert status["hosts"][host]["stages"]["signald"]["state"] == "peer_online"

        r = pg("exec", "a", "--name", run_id, "--", "punchguard", "ctl", "status")
        assert r.stdout.count("RUNNING") == 4, r.stdout
    finally:
        r = pg("down", "--name", run_id)
        assert r.returncode == 0, r.stdout + r.stderr
        r2 = pg("down", "--name", run_id)  # twice is fine
        assert r2.returncode == 0
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert run_id not in namespaces
    wg = subprocess.run(["pgrep", "-a", "wireguard-go"], capture_output=True, text=True).stdout
    assert run_id not in wg
    assert not list(Path("/var/run/wireguard").glob(f"{run_id}*"))
