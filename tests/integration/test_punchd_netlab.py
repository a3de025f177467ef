"""punchguard.netlab (root): the topology, NAT switching, and that teardown leaves nothing."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from pyroute2 import netns

from punchguard.netlab import SERVICE_ADDRESSES, NatBehaviour, NatLab

pytestmark = pytest.mark.root

SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40404))
for host in sys.argv[1:]:
    s.sendto(b"x", (host, 3478))
"""


def ours(run_id: str) -> list[str]:
    return [ns for ns in netns.listnetns() if ns.startswith(f"{run_id}-")]


def test_topology_nat_switch_and_teardown(run_id: str) -> None:
    lab = NatLab(run_id)
    try:
        lab.up()
        assert sorted(ours(run_id)) == sorted(lab.namespaces)
        ping = ["ping", "-c1", "-W2"]
        assert lab.run(lab.a.host_ns, [*ping, SERVICE_ADDRESSES[0]], check=False).returncode == 0
        # private addresses of the other side are not routable, unsolicited inbound is dropped
        assert lab.run(lab.a.host_ns, [*ping, lab.b.host_addr], check=False).returncode != 0
        assert lab.run(lab.a.host_ns, [*ping, lab.b.wan_addr], check=False).returncode != 0
        # cone: MASQUERADE keeps the source port towards every destination
        lab.run(lab.a.host_ns, [sys.executable, "-c", SEND, *SERVICE_ADDRESSES])
        table = lab.conntrack("a")
        assert table.count("sport=40404") == 2 and table.count("dport=40404") == 2
        lab.set_nat("a", NatBehaviour.SYMMETRIC)
        rules = lab.run(lab.a.nat_ns, ["iptables", "-t", "nat", "-S", "POSTROUTING"]).stdout
        assert "--random-fully" in rules and rules.count("MASQUERADE") == 1
        assert "40404" not in lab.conntrack("a")  # switching flushed the old mappings
        lab.set_nat("a", NatBehaviour.CONE)
        rules = lab.run(lab.a.nat_ns, ["iptables", "-t", "nat", "-S", "POSTROUTING"]).stdout
        assert "--random-fully" not in rules and rules.count("MASQUERADE") == 1
        lab.run(lab.a.host_ns, [sys.executable, "-c", SEND, *SERVICE_ADDRESSES])
        assert "40404" in lab.conntrack("a")
        lab.flush_conntrack("a")
        assert "40404" not in lab.conntrack("a")
        proc = lab.spawn(lab.b.host_ns, ["sleep", "300"])
    finally:
        lab.teardown()
    lab.teardown()  # twice is fine
    assert ours(run_id) == []
    assert proc.poll() is not None
    assert not lab.workdir.exists()


def test_cleanup_leftovers_after_a_crash(run_id: str) -> None:
    lab = NatLab(run_id)
    try:
        lab.up()
        lab.start_coturn()
        sleeper = subprocess.Popen(
            ["ip", "netns", "exec", lab.a.host_ns, "sleep", "300"], start_new_session=True
        )
        # the "crash": nobody calls lab.teardown(); a later run cleans up by name
        removed = NatLab.cleanup_leftovers(run_id)
        assert sorted(removed) == sorted(lab.namespaces)
        assert ours(run_id) == []
        deadline = time.monotonic() + 10
        while sleeper.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sleeper.poll() is not None, "a process left in a lab namespace was not stopped"
        assert not lab.workdir.exists()
    finally:
        lab.teardown()
