"""guardd with real wireguard-go in two namespaces joined by a veth (root only).

Each host runs ``python -m guardd`` inside its namespace with its own config, runtime and state
directories; the test plays punchd on each host's bus. See tests/integration/guardd_lab.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys

import pytest

from guardd import keys, uapi
from guardd.liveness import POLL_INTERVAL, dead_after
from punchguard.bus import Bus
from punchguard.messages import GuardStateKind, Path, Role, SignalRecv
from tests.integration.guardd_lab import PORT, TUNNEL, UNDERLAY, Host, Lab, sh

pytestmark = pytest.mark.root

UP = GuardStateKind.UP


def ping_result(out: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


async def bring_up(lab: Lab) -> None:
    for h in lab.hosts.values():
        h.start_guardd()
    for n in "ab":
        await lab.wait_state(n, lambda s: s.state is GuardStateKind.NO_PATH and s.public_key != "")
    lab.give_path("a")
    lab.give_path("b")
    for n in "ab":
        await lab.wait_state(n, lambda s: s.state is UP)


async def test_tunnel_survives_guardd_restarts(run_id: str) -> None:
    async with Lab(run_id) as lab:
        a, b = lab.hosts["a"], lab.hosts["b"]
        await bring_up(lab)
        st = a.latest()
        assert st is not None
        assert st.endpoint == f"{UNDERLAY['b']}:{PORT['b']}" and st.listen_port == PORT["a"]
        assert st.public_key == a.public_key and st.last_handshake_age >= 0

        # wg show sees what guardd configured
        show = sh(*lab.netns_exec("a", "wg", "show", a.ifname, "dump")).stdout.splitlines()
        peer = show[1].split("\t")
        assert peer[0] == b.public_key
        assert peer[2] == f"{UNDERLAY['b']}:{PORT['b']}"
        assert peer[3] == f"{TUNNEL['b']}/32"
        assert peer[7] == "5"
        assert show[0].split("\t")[1] == a.public_key

        # a ping every 100 ms keeps flowing while guardd is killed and stopped, then restarted
        wg_pids = {n: h.wireguard_go_pids() for n, h in lab.hosts.items()}
        assert all(len(p) == 1 for p in wg_pids.values()), wg_pids
        ping = await asyncio.create_subprocess_exec(
            *lab.netns_exec("a", "ping", "-n", "-i", "0.1", "-c", "120", "-W", "1", TUNNEL["b"]),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            await asyncio.sleep(1)
            assert b.stop_guardd(signal.SIGKILL) == -signal.SIGKILL
            await asyncio.sleep(0.5)
            b.start_guardd()
            await lab.wait_state("b", lambda s: s.state is UP)
            assert a.stop_guardd(signal.SIGTERM) == 0
            await asyncio.sleep(0.5)
            a.start_guardd()
            await lab.wait_state("a", lambda s: s.state is UP)
            out, _ = await asyncio.wait_for(ping.communicate(), 60)
        finally:
            if ping.returncode is None:
                ping.kill()
                await ping.wait()
        for h in lab.hosts.values():  # no key material in the logs
            private = keys.load_private_key(keys.key_path(h.state_dir))
            assert private not in (h.root / "guardd.log").read_text()
        sent, received = ping_result(out.decode())
        assert sent == 120 and received == sent, out.decode()
        assert {n: h.wireguard_go_pids() for n, h in lab.hosts.items()} == wg_pids

        # bad path messages are refused and counted; a repeat is a no-op
        assert a.punchd is not None
        before = a.latest()
        assert before is not None
        for bad in (
            Path(local_port=0, endpoint_host=UNDERLAY["b"], endpoint_port=1, role=Role(1)),
            Path(local_port=PORT["a"], endpoint_host="224.0.0.1", endpoint_port=9, role=Role(1)),
            Path(local_port=PORT["a"], endpoint_host="example.org", endpoint_port=9, role=Role(1)),
        ):
            a.punchd.publish(bad)
        await lab.wait_state("a", lambda s: s.refused >= before.refused + 3)
        async with Bus("otrd", a.runtime, group=None) as otrd:  # guardd does not listen to it
            otrd.publish(SignalRecv(b"x"))
        st = await lab.wait_state("a", lambda s: s.state is UP)
        assert st.endpoint == f"{UNDERLAY['b']}:{PORT['b']}"

        # the path dies (the peer's underlay goes away): DOWN within the documented interval
        sh(*lab.netns_exec("b", "ip", "link", "set", f"{run_id}vb", "down"))
        limit = dead_after(5) + 4 * POLL_INTERVAL + 5  # generous: not a timing assertion
        st = await lab.wait_state("a", lambda s: s.state is GuardStateKind.DOWN, limit=limit)
        # "no answer to probes" once the peer has answered a probe (issue 9), else the 15 s rule
        assert "no answer to probes" in st.reason or "no bytes received" in st.reason


async def test_dead_endpoint_reported_down(run_id: str) -> None:
    async with Lab(run_id) as lab:
        a = lab.hosts["a"]
        a.start_guardd()
        await lab.wait_state("a", lambda s: s.state is GuardStateKind.NO_PATH)
        lab.give_path("a", endpoint="192.0.2.99")  # nobody there
        await lab.wait_state("a", lambda s: s.state is GuardStateKind.HANDSHAKING)
        limit = dead_after(5) + 4 * POLL_INTERVAL + 5
        st = await lab.wait_state("a", lambda s: s.state is GuardStateKind.DOWN, limit=limit)
        assert "no handshake" in st.reason and st.endpoint == f"192.0.2.99:{PORT['b']}"
        assert a.proc is not None and a.proc.poll() is None


def admin(lab: Lab, name: str, command: str) -> str:
    """Run ``guardd.admin.<command>(config)`` inside host ``name``'s namespace, as the CLI will."""
    h = lab.hosts[name]
    code = (
        "import sys; from punchguard import config; from guardd import admin; "
        f"print('\\n'.join(admin.{command}(config.load(sys.argv[1]))))"
    )
    env = f"PUNCHGUARD_RUNTIME_DIR={h.runtime}"
    done = sh(*lab.netns_exec(name, "env", env, sys.executable, "-c", code, str(h.config)))
    return done.stdout


async def gone(h: Host, limit: float = 10) -> None:
    """Wait until no wireguard-go serves ``h``'s interface."""
    for _ in range(int(limit / 0.05)):
        if not h.wireguard_go_pids():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"wireguard-go for {h.ifname} still running")


async def test_down_and_cleanup(run_id: str) -> None:
    async with Lab(run_id) as lab:
        a = lab.hosts["a"]
        sock = uapi.socket_path(a.ifname)
        a.start_guardd()
        await lab.wait_state("a", lambda s: s.state is GuardStateKind.NO_PATH)
        assert admin(lab, "a", "cleanup") == "\n"  # a working interface is left alone
        # a crash of everything: guardd and wireguard-go killed, the socket stays behind
        a.stop_guardd(signal.SIGKILL)
        (pid,) = a.wireguard_go_pids()
        os.kill(pid, signal.SIGKILL)
        await gone(a)
        assert sock.exists()
        assert "stale socket" in admin(lab, "a", "cleanup")
        assert not sock.exists()
        # a new guardd creates a fresh interface; down removes it and its wireguard-go
        a.start_guardd()
        await lab.wait_state("a", lambda s: s.state is GuardStateKind.NO_PATH)
        # wireguard-go dies under a running guardd: reported, then recreated
        (pid,) = a.wireguard_go_pids()
        os.kill(pid, signal.SIGKILL)
        await lab.wait_state("a", lambda s: s.state is GuardStateKind.ERROR)
        await lab.wait_state("a", lambda s: s.state is GuardStateKind.NO_PATH)
        (new_pid,) = a.wireguard_go_pids()
        assert new_pid != pid
        a.stop_guardd(signal.SIGTERM)
        assert a.wireguard_go_pids() == [new_pid]
        out = admin(lab, "a", "down")
        assert f"removed interface {a.ifname}" in out
        await gone(a)
        assert not sock.exists()
        assert a.ifname not in sh(*lab.netns_exec("a", "ip", "-o", "link")).stdout
        assert admin(lab, "a", "down") == "\n"  # idempotent
