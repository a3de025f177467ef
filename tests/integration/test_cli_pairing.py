"""`punchguard init / invite / pair / unpair`, run as a user runs them (real processes)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from punchguard import config

pytestmark = pytest.mark.root
PUNCHGUARD = str(Path(sys.executable).with_name("punchguard"))


class CliHost:
    def __init__(self, root: Path, name: str) -> None:
        self.dir = root / name
        self.config = root / f"{name}.toml"
        self.config.write_text(
            f'[paths]\nruntime_dir = "{self.dir}/run"\nstate_dir = "{self.dir}/state"\n'
        )
        self.state = self.dir / "state"

    def run(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PUNCHGUARD_")}
        return subprocess.run(
            [PUNCHGUARD, "--config", str(self.config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    def ok(self, *args: str) -> str:
        r = self.run(*args)
        assert r.returncode == 0, f"{args}: {r.stdout}{r.stderr}"
        return r.stdout


@pytest.fixture
def hosts() -> Iterator[tuple[CliHost, CliHost]]:
    root = Path(tempfile.mkdtemp(prefix="pg-cli-"))
    os.chmod(root, 0o755)
    try:
        yield CliHost(root, "a"), CliHost(root, "b")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_init_invite_pair_both_ways(hosts: tuple[CliHost, CliHost]) -> None:
    a, b = hosts
    out = a.ok("init")
    assert "Tox address" in out
    assert "OTR fingerprint" in out
    b.ok("init", "--address", "10.44.0.1/24")

    # owners and modes of every identity file (design 3)
    for rel, owner in (("signald/tox.save", "punchguard"), ("otrd/otr.key", "punchguard"),
                       ("guardd/wg.key", "root")):  # fmt: skip
        st = (a.state / rel).stat()
        assert st.st_mode & 0o777 == 0o600, rel
        assert st.st_uid == (0 if owner == "root" else _uid(owner)), rel

    # re-init refuses without --force (exit 3) and keeps the identity
    before = (a.state / "guardd/wg.key").read_bytes()
    r = a.run("init")
    assert r.returncode == 3
    assert "--force" in r.stderr
    assert (a.state / "guardd/wg.key").read_bytes() == before

    code_a = a.ok("invite", "--code-only").strip()
    assert code_a.startswith("PG1-")
    full = a.ok("invite")
    assert "█" in full  # the QR code
    b.ok("invite", "--no-qr", "--out", str(b.dir / "b.pgi"))

    # pairing without --yes and no terminal: refused, nothing written
    r = a.run("pair", str(b.dir / "b.pgi"))
    assert r.returncode == 3
    assert not (a.state / "peer.toml").exists()

    a.ok("pair", str(b.dir / "b.pgi"), "--yes")
    out = b.ok("pair", code_a, "--yes")
    assert "About to trust" in out

    rec_a = tomllib.loads((a.state / "peer.toml").read_text())
    rec_b = tomllib.loads((b.state / "peer.toml").read_text())
    # both sides agree on the addresses, crosswise
    assert rec_a["wireguard"]["address"] == rec_b["peer"]["tunnel_address"]
    assert rec_b["wireguard"]["address"] == rec_a["peer"]["tunnel_address"]
    assert rec_a["wireguard"]["address"] != rec_b["wireguard"]["address"]

    # the stages see the peer record through the config
    loaded = config.load(a.config)
    assert loaded.peer.otr_fingerprint == rec_a["peer"]["otr_fingerprint"]
    assert loaded.wireguard.address == rec_a["wireguard"]["address"]

    # unpair, then unpair again: "not paired"
    a.ok("unpair", "--yes")
    assert not (a.state / "peer.toml").exists()
    assert a.run("unpair", "--yes").returncode == 1


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def test_bad_codes_are_refused_with_a_clear_error(hosts: tuple[CliHost, CliHost]) -> None:
    a, b = hosts
    a.ok("init")
    b.ok("init")
    code_b = b.ok("invite", "--code-only").strip()
    code_a = a.ok("invite", "--code-only").strip()
    i = 12 if code_b[12] != "Q" else 13
    cases = {
        "typo": code_b[:i] + ("Q" if code_b[i] != "Q" else "R") + code_b[i + 1 :],
        "truncated": code_b[:80],
        "version": "PG7-" + code_b[4:],
        "your own": code_a,
        "not a PunchGuard": "hello",
    }
    for expected, code in cases.items():
        r = a.run("pair", code, "--yes")
        assert r.returncode == 2, (expected, r.stdout, r.stderr)
        assert expected in r.stderr, (expected, r.stderr)
        assert "Traceback" not in r.stderr
        assert not (a.state / "peer.toml").exists()


def test_invite_before_init_says_what_to_do(hosts: tuple[CliHost, CliHost]) -> None:
    a, _ = hosts
    r = a.run("invite")
    assert r.returncode == 2
    assert "punchguard init" in r.stderr
    assert "Traceback" not in r.stderr


def test_doctor_checks_a_paired_host_and_a_real_stun_server(
    hosts: tuple[CliHost, CliHost], tmp_path: Path
) -> None:
    a, b = hosts
    a.ok("init")
    b.ok("init")
    r = a.run("doctor", "--offline")
    assert r.returncode == 1  # not paired yet
    assert "not paired" in r.stdout
    assert "fix: punchguard pair" in r.stdout
    a.ok("pair", b.ok("invite", "--code-only").strip(), "--yes")

    # a real STUN server (coturn) on loopback, and a dead one
    port = _free_udp_port()
    turn = subprocess.Popen(
        [
            "turnserver",
            "-n",
            "--stun-only",
            "--listening-ip=127.0.0.1",
            f"--listening-port={port}",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            f"--pidfile={tmp_path}/turn.pid",
            f"--userdb={tmp_path}/turn.db",
            "--log-file=stdout",
            "--simple-log",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        a.config.write_text(
            a.config.read_text()
            + f'[ice]\nstun_servers = ["127.0.0.1:{port}"]\n[tox]\nbootstrap_nodes = []\n'
        )
        deadline = time.monotonic() + 10
        while True:
            r = a.run("doctor")
            if "STUN 127.0.0.1" in r.stdout and "answers" in r.stdout:
                break
            assert time.monotonic() < deadline, r.stdout
            time.sleep(0.3)
        assert "we are 127.0.0.1:" in r.stdout
        assert "Tox bootstrap node" in r.stdout  # none configured: a failure with a fix
        assert r.returncode == 1
        # key permissions are checked
        key = a.state / "otrd" / "otr.key"
        key.chmod(0o644)
        r = a.run("doctor", "--offline")
        assert f"chmod 600 {key}" in r.stdout
    finally:
        os.killpg(turn.pid, signal.SIGKILL)
        turn.wait()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
