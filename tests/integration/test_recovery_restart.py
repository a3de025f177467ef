"""Whole-host restarts and the on-demand policy (issue 9), in one two-NAT lab with the on-demand
policy (Tox offline while the tunnel is up) and a ping a -> b every 100 ms for the module.

* supervisord restarted (``punchguard stop`` / ``start``) on one host and on both:
  wireguard-go outlives it, the new guardd adopts the interface, the tunnel never stops.
* a host "reboot" (``punchguard down``: the stack stopped and the interface removed, then
  ``punchguard start``): guardd restores the last working path from ``last-path.json`` at once
  and checks it with a handshake. The tunnel is back before signaling is needed: the peer's
  Tox stays offline (on-demand, its tunnel never went down) and its punchd publishes no new
  path, so the tunnel cannot have come from a new punch.
* both hosts rebooted together: the same, on both sides.
* a rebinding under on-demand: Tox must come back online, and the full flow re-punches.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.integration.recovery_lab import RecoveryLab, recovery_lab, results_file

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab() -> Iterator[RecoveryLab]:
    with recovery_lab("on-demand", results_file()) as lab:
        yield lab


def stages(lab: RecoveryLab, host: str) -> dict[str, dict[str, object]]:
    """Each stage's last state on ``host`` (waits until all four have spoken)."""
    out: dict[str, dict[str, object]] = {}
    for _ in range(20):
        r = lab.info.hosts[host].punchguard("status", "--json", timeout=30)
        out = json.loads(r.stdout)["stages"] if r.stdout.strip() else {}
        if out and all(out.values()):
            break
        time.sleep(0.5)
    return out


def punchguard(lab: RecoveryLab, host: str, *args: str) -> None:
    r = lab.info.hosts[host].punchguard(*args, timeout=120)
    assert r.returncode == 0, f"{host}: punchguard {' '.join(args)}: {r.stdout}{r.stderr}"


@pytest.mark.parametrize("hosts", [("a",), ("a", "b")], ids=["a", "both"])
def test_supervisord_restart_keeps_the_tunnel(lab: RecoveryLab, hosts: tuple[str, ...]) -> None:
    started = time.time()
    for h in hosts:
        punchguard(lab, h, "stop")
    for h in hosts:
        punchguard(lab, h, "start")
    lab.wait_recovered(started, f"supervisord restart on {'+'.join(hosts)} (interface kept)")
    lab.wait_both_up()
    lost = lab.pinger.log().lost_between(started, time.time() - 1.5)
    assert len(lost) <= 2, f"lost {lost}"  # the data plane never stopped


@pytest.mark.parametrize("hosts", [("a",), ("b",), ("a", "b")], ids=["a", "b", "both"])
def test_host_reboot_restores_the_last_path(lab: RecoveryLab, hosts: tuple[str, ...]) -> None:
    lab.wait_both_up()
    others = [h for h in ("a", "b") if h not in hosts]
    before = {h: stages(lab, h) for h in others}
    for h in others:  # on-demand: the tunnel is up, so Tox is offline
        assert before[h]["signald"]["state"] == "offline", before[h]["signald"]
    for h in hosts:
        punchguard(lab, h, "down")  # stack stopped, interface removed: a cold interface
    started = time.time()
    for h in hosts:
        punchguard(lab, h, "start")
    took = lab.wait_recovered(started, f"host reboot {'+'.join(hosts)} (warm path)")
    assert took >= 0
    lab.wait_both_up()
    for h in hosts:
        guard = stages(lab, h)["guardd"]
        assert "restored path" in str(guard["reason"]), guard
    for h in others:
        after = stages(lab, h)
        # no new punch happened on the other side, and its Tox never had to come online
        assert after["guardd"]["generation"] == before[h]["guardd"]["generation"]
        assert after["signald"]["state"] == "offline", after["signald"]


def test_rebind_brings_tox_back_and_repunches(lab: RecoveryLab) -> None:
    lab.wait_both_up()
    generation = stages(lab, "a")["guardd"]["generation"]
    lab.cli("rebind", "a")
    lab.wait_recovered(time.time(), "rebind a (on-demand)")
    lab.wait_both_up()
    assert stages(lab, "a")["guardd"]["generation"] != generation  # a new punch
