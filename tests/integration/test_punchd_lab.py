"""punchd in the NAT lab (root): real coturn, real NATs (iptables), two real punchd processes.

The hosts' ICE messages are bridged by a fake otrd per host (punchd.lab_pair); no Tox or OTR.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from punchd.lab_pair import PunchPair
from punchguard.config import TurnServer
from punchguard.messages import CandidateType, NatKind, PunchStateKind, Role
from punchguard.netlab import NatBehaviour, NatLab

pytestmark = pytest.mark.root

CONE, SYMMETRIC = NatBehaviour.CONE, NatBehaviour.SYMMETRIC

RECEIVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(20)
data, addr = s.recvfrom(2048)
print(data.decode(), addr[0], addr[1], flush=True)
"""

SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
for _ in range(200):
    s.sendto(b"through-the-hole", (sys.argv[2], int(sys.argv[3])))
    time.sleep(0.1)
"""


@pytest.fixture
def make_lab(run_id: str) -> Iterator[object]:
    labs: list[NatLab] = []

    def make(nat_a: NatBehaviour, nat_b: NatBehaviour) -> NatLab:
        lab = NatLab(run_id, nat_a=nat_a, nat_b=nat_b)
        labs.append(lab)
        lab.up()
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.teardown()
        NatLab.cleanup_leftovers(run_id)


async def test_cone_nats_punch_and_the_hole_carries_udp_after_handoff(make_lab) -> None:  # type: ignore[no-untyped-def]  # fixture factory
    lab: NatLab = make_lab(CONE, CONE)
    coturn = lab.start_coturn()
    async with PunchPair(lab, coturn.stun_servers) as pair:
        a, b = pair.hosts["a"], pair.hosts["b"]
        try:
            await pair.wait_for(lambda: a.path is not None and b.path is not None, 60)
        except TimeoutError:
            pytest.fail(pair.describe() + "\n" + pair.logs())
        assert a.path is not None and b.path is not None
        assert a.state is not None and b.state is not None
        assert a.state.state == b.state.state == PunchStateKind.CONNECTED
        assert a.path.role == Role.CONTROLLING and b.path.role == Role.CONTROLLED
        assert a.state.nat == b.state.nat == NatKind.ENDPOINT_INDEPENDENT
        assert a.state.peer_nat == NatKind.ENDPOINT_INDEPENDENT
        assert not a.path.relayed and not b.path.relayed
        # through both NATs: each endpoint is the other NAT's public address
        assert a.path.endpoint_host == lab.b.wan_addr and b.path.endpoint_host == lab.a.wan_addr
        assert a.path.remote_type in (CandidateType.SRFLX, CandidateType.PRFLX)

        # punchd let go of the sockets: bind the same ports and send through the hole
        recv = lab.spawn(
            lab.b.host_ns, [sys.executable, "-c", RECEIVER, str(b.path.local_port)],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        argv = [sys.executable, "-c", SENDER, str(a.path.local_port), a.path.endpoint_host,
                str(a.path.endpoint_port)]  # fmt: skip
        send = lab.spawn(lab.a.host_ns, argv)
        try:
            out, _ = recv.communicate(timeout=30)
        finally:
            lab.stop(send)
        assert recv.returncode == 0, "no datagram arrived through the punched hole"
        text, src_host, src_port = out.decode().split()
        assert text == "through-the-hole"
        assert (src_host, int(src_port)) == (b.path.endpoint_host, b.path.endpoint_port)


async def test_symmetric_nat_without_turn_fails_with_reason(make_lab) -> None:  # type: ignore[no-untyped-def]  # fixture factory
    lab: NatLab = make_lab(CONE, SYMMETRIC)
    coturn = lab.start_coturn()
    async with PunchPair(lab, coturn.stun_servers) as pair:
        a, b = pair.hosts["a"], pair.hosts["b"]

        def a_failed() -> bool:
            return any(s.state in (PunchStateKind.FAILED, PunchStateKind.BACKOFF) for s in a.states)

        try:
            await pair.wait_for(a_failed, 60)
            await pair.wait_for(lambda: b.state is not None and b.state.nat != NatKind.UNKNOWN, 10)
        except TimeoutError:
            pytest.fail(pair.describe() + "\n" + pair.logs())
        failed = next(s for s in a.states if s.state == PunchStateKind.FAILED)
        assert failed.reason.startswith("connectivity checks timed out")
        assert failed.nat == NatKind.ENDPOINT_INDEPENDENT
        assert failed.peer_nat == NatKind.ENDPOINT_DEPENDENT
        assert b.state is not None and b.state.nat == NatKind.ENDPOINT_DEPENDENT
        assert a.path is None and b.path is None


async def test_symmetric_nats_with_turn_find_a_relayed_path(make_lab) -> None:  # type: ignore[no-untyped-def]  # fixture factory
    lab: NatLab = make_lab(SYMMETRIC, SYMMETRIC)
    coturn = lab.start_coturn(turn=True)
    assert coturn.turn is not None
    t = coturn.turn
    turn = TurnServer(t.host, t.port, t.username, t.password)
    async with PunchPair(lab, coturn.stun_servers, turn) as pair:
        a, b = pair.hosts["a"], pair.hosts["b"]
        try:
            await pair.wait_for(lambda: a.path is not None and b.path is not None, 60)
        except TimeoutError:
            pytest.fail(pair.describe() + "\n" + pair.logs())
        assert a.path is not None and b.path is not None
        assert a.path.relayed and b.path.relayed
        assert CandidateType.RELAY in (a.path.local_type, a.path.remote_type)
        assert a.state is not None and "relayed" in a.state.reason
        assert a.state.nat == NatKind.ENDPOINT_DEPENDENT


async def test_both_symmetric_without_turn_says_so_and_retries_slowly(make_lab) -> None:  # type: ignore[no-untyped-def]  # fixture factory
    lab: NatLab = make_lab(SYMMETRIC, SYMMETRIC)
    coturn = lab.start_coturn()
    async with PunchPair(lab, coturn.stun_servers) as pair:
        a = pair.hosts["a"]
        try:
            await pair.wait_for(
                lambda: any(s.state == PunchStateKind.BACKOFF for s in a.states), 60
            )
        except TimeoutError:
            pytest.fail(pair.describe() + "\n" + pair.logs())
        backoff = next(s for s in a.states if s.state == PunchStateKind.BACKOFF)
        assert backoff.reason.startswith("both NATs are symmetric")
        assert "no TURN relay" in backoff.reason
        assert backoff.nat == backoff.peer_nat == NatKind.ENDPOINT_DEPENDENT
        assert backoff.retry_at - backoff.since >= 60  # the slow retry, not the fast backoff
