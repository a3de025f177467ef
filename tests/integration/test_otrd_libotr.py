"""Interop with the reference implementation: otrd's OTR session against a libotr peer.

tests/integration/otrd_libotr_peer.c is compiled here with gcc against libotr (Debian
libotr5-dev) and driven over pipes, one line per message (its header documents the
protocol). Our side is the real ``OtrSession`` (potr through ``otrd.potr_compat``). libotr 4.1.1
speaks v3 but falls back to v2, the version potr speaks (design 4.2).
Covered: the AKE with either side starting, both sides agreeing on fingerprints, data both ways
including fragmented messages (1372-byte Tox limit), disconnect both ways, SMP right and wrong.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from otrd.identity import fingerprint
from otrd.potr_compat import OtrDSAKey, generate_key
from otrd.session import MAX_MESSAGE, OtrSession, Role, Timing
from punchguard.messages import Message, OtrRecv, OtrStateKind, SignalSend

SOURCE = Path(__file__).with_name("otrd_libotr_peer.c")
HEADER = Path("/usr/include/libotr/proto.h")
SMP_SUCCESS, SMP_FAILURE, SMP_ABORT = "7", "8", "2"  # libotr's OtrlSMPEvent values
STATE_ENCRYPTED, STATE_FINISHED = "1", "2"  # libotr's OtrlMessageState values

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("otrd-libotr")


@pytest.fixture(scope="module")
def peer_binary(build_dir: Path) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: cannot build the libotr peer")
    if not HEADER.exists():
        pytest.skip(f"libotr headers missing ({HEADER}): apt-get install libotr5-dev")
    binary = build_dir / "otrd_libotr_peer"
    try:
        libs = subprocess.run(
            ["pkg-config", "--cflags", "--libs", "libotr"], capture_output=True, text=True
        ).stdout.split() or ["-lotr"]
    except FileNotFoundError:
        libs = ["-lotr"]
    subprocess.run(
        ["gcc", "-Wall", "-Werror", "-O1", "-o", str(binary), str(SOURCE), *libs, "-lgcrypt"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return binary


class LibotrPeer:
    def __init__(self, binary: Path, workdir: Path, smp_secret: str | None = None) -> None:
        args = [str(binary), str(workdir / "libotr.key"), str(workdir / "libotr.instag")]
        self.proc = subprocess.Popen(
            args + ([smp_secret] if smp_secret else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().split()
        assert first[0] == "FPR", first
        self.fingerprint = first[1]
        self.events: list[tuple[str, str]] = []
        self.received: list[str] = []

    def cmd(self, line: str) -> list[str]:
        """Run one command; returns the WIRE messages it produced (other lines are recorded)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        wire: list[str] = []
        while True:
            raw = self.proc.stdout.readline()
            assert raw, "the libotr peer died"
            kind, _, rest = raw.rstrip("\n").partition(" ")
            if kind == "OK":
                return wire
            if kind == "WIRE":
                wire.append(rest)
            elif kind == "RECV":
                self.received.append(rest)
            else:
                self.events.append((kind, rest))

    def status(self) -> tuple[str, str]:
        self.cmd("STATUS")
        kind, rest = self.events.pop()
        assert kind == "STATE"
        state, fpr = rest.split()
        return state, fpr

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


class Pipe:
    """Moves messages between our session and the libotr peer until both are quiet."""

    def __init__(self, ours: OtrSession, peer: LibotrPeer) -> None:
        self.ours, self.peer = ours, peer
        self.wire_sizes: list[int] = []
        self.fragments = 0
        self.delivered: list[bytes] = []

    def run(self, from_ours: Sequence[Message] = (), from_peer: Sequence[str] = ()) -> None:
        to_peer = list(from_ours)
        to_ours = list(from_peer)
        for _ in range(200):
            if not to_peer and not to_ours:
                return
            for m in to_peer:
                if isinstance(m, SignalSend):
                    self.wire_sizes.append(len(m.payload))
                    to_ours += self.peer.cmd("WIRE " + m.payload.decode("ascii"))
                elif isinstance(m, OtrRecv):
                    self.delivered.append(m.payload)
            to_peer = []
            for w in to_ours:
                data = w.encode("ascii")
                self.wire_sizes.append(len(data))
                self.fragments += data.startswith(b"?OTR,")
                to_peer += self.ours.wire_received(data, 0.0)
            to_ours = []
        raise AssertionError("the two sides never went quiet")


def start_peer(binary: Path, workdir: Path, smp_secret: str | None = None) -> LibotrPeer:
    """A libotr peer whose fingerprint is mid-range, so that keys of ours on either side of it
    are quick to find (``key_with_role``)."""
    for _ in range(40):
        peer = LibotrPeer(binary, workdir, smp_secret)
        if peer.fingerprint[0] in "456789ab":
            return peer
        peer.close()
        (workdir / "libotr.key").unlink()
    raise AssertionError("libotr gave no mid-range fingerprint in 40 keys")


def key_with_role(peer_fpr: str, role: Role) -> OtrDSAKey:
    for _ in range(80):  # the peer's fingerprint is mid-range: each try wins with p >= 1/4
        key = generate_key()
        if (fingerprint(key) < peer_fpr) == (role is Role.INITIATOR):
            return key
    raise AssertionError("no key with the wanted role after 80 tries")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def peer(peer_binary: Path, workdir: Path) -> Iterator[LibotrPeer]:
    p = start_peer(peer_binary, workdir)
    try:
        yield p
    finally:
        p.close()


def connect(
    peer: LibotrPeer, role: Role, smp_secret: bytes | None = None
) -> tuple[OtrSession, Pipe]:
    ours = OtrSession(
        key_with_role(peer.fingerprint, role), peer.fingerprint, now=0.0, timing=Timing(),
        smp_secret=smp_secret,
    )  # fmt: skip
    assert ours.role is role
    pipe = Pipe(ours, peer)
    pipe.run(from_ours=ours.peer_online(0.0))  # DH-Commit (initiator) or a query (responder)
    assert ours.state == OtrStateKind.SECURE, ours.reason
    assert ours.verified and ours.peer_fingerprint == peer.fingerprint
    assert ("SECURE", ours.own_fingerprint) in peer.events
    assert peer.status() == (STATE_ENCRYPTED, ours.own_fingerprint)
    return ours, pipe


@pytest.mark.parametrize(
    "role", [Role.INITIATOR, Role.RESPONDER], ids=["otrd_starts", "libotr_starts"]
)
def test_ake_data_fragments_disconnect(peer: LibotrPeer, role: Role) -> None:
    ours, pipe = connect(peer, role)

    # ours -> libotr: a short payload and a 2 KB one (fragmented)
    small, big = b"\x00ice params\xff", os.urandom(2048)
    pipe.run(from_ours=ours.send(small, 0.0))
    frags_before = len(pipe.wire_sizes)
    pipe.run(from_ours=ours.send(big, 0.0))
    assert len(pipe.wire_sizes) - frags_before >= 2
    assert [base64.b64decode(t) for t in peer.received] == [small, big]

    # libotr -> ours: text libotr fragments itself
    back = os.urandom(3000)
    pipe.run(from_peer=peer.cmd("SEND " + base64.b64encode(back).decode()))
    pipe.run(from_peer=peer.cmd("SEND " + base64.b64encode(b"short").decode()))
    assert pipe.delivered == [back, b"short"]
    assert pipe.fragments >= 3
    assert max(pipe.wire_sizes) <= MAX_MESSAGE

    # libotr ends the session: we see FINISHED and deliver nothing more
    pipe.run(from_peer=peer.cmd("DISCONNECT"))
    assert ours.state == OtrStateKind.FINISHED


def test_our_disconnect_finishes_libotr(peer: LibotrPeer) -> None:
    ours, pipe = connect(peer, Role.INITIATOR)
    pipe.run(from_ours=ours.close(0.0))
    assert peer.status()[0] == STATE_FINISHED


def test_restart_of_our_side_reestablishes(peer: LibotrPeer) -> None:
    ours, _pipe = connect(peer, Role.RESPONDER)
    again = OtrSession(ours.key, peer.fingerprint, now=0.0)  # a new process, same key
    pipe = Pipe(again, peer)
    pipe.run(from_ours=again.peer_online(0.0))
    assert again.state == OtrStateKind.SECURE
    pipe.run(from_peer=peer.cmd("SEND " + base64.b64encode(b"still here").decode()))
    assert pipe.delivered == [b"still here"]


@pytest.mark.parametrize("right", [True, False], ids=["right_secret", "wrong_secret"])
def test_smp_with_libotr(peer_binary: Path, workdir: Path, right: bool) -> None:
    peer = start_peer(peer_binary, workdir, smp_secret="shared secret")
    try:
        ours, pipe = connect(peer, Role.INITIATOR)
        pipe.run(from_ours=ours.smp_start(b"shared secret" if right else b"guess", 0.0))
        smp_events = [v for k, v in peer.events if k == "SMP"]
        if right:
            assert ours.smp_result is True
            assert SMP_SUCCESS in smp_events
        else:
            assert ours.smp_result is False
            assert SMP_FAILURE in smp_events or SMP_ABORT in smp_events
    finally:
        peer.close()
