"""Security in the two-NAT lab, every component real (docs/security.md says which test proves what).

One lab for the whole module (building it and bringing the tunnel up is most of the cost); the
tests run in file order and the hostile one stops stages, so it comes after the others, and the
key-material search comes last so that it covers the whole run, attack included.

- least privilege: signald, otrd and punchd run as the service user with no capabilities;
  only guardd is root; that user cannot change interfaces, addresses, routes or WireGuard;
- the bus is private: a local user outside the group reaches no socket, log or key;
- secrets at rest: every key file 0600, owned by the one user that needs it;
- hostile input while the tunnel carries a ping: a compromised punchd floods guardd with
  absurd paths and garbage, a forger feeds otrd plaintext and broken OTR, a broken peer feeds
  punchd huge bogus candidate lists; all refused and counted, the tunnel never drops;
- key material (WireGuard private key, Tox secret key, OTR DSA x) never on the bus (a tap with
  --json on both hosts from before the stacks start) nor in any file of the runtime dirs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import pwd
import re
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from otrd import identity
from punchguard import lab as labmod
from punchguard.commands.lab import ping, tunnel_addresses, watch
from punchguard.netlab import NatLab
from punchguard.stack import SERVICE_USER

pytestmark = pytest.mark.root
PUNCHGUARD = str(Path(sys.executable).with_name("punchguard"))
TUNNEL_TIMEOUT = 120.0
UNPRIVILEGED = ("signald", "otrd", "punchd")
CAP_NET_ADMIN = 1 << 12


@dataclass
class Lab:
    info: labmod.LabInfo
    taps: dict[str, Path]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    files: list[IO[bytes]] = field(default_factory=list)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab_id = "ps" + secrets.token_hex(3)
    info = labmod.build(lab_id, policy="on-demand", say=lambda _m: None, start=False)
    state = Lab(info, {})
    try:
        for name, host in info.hosts.items():
            out = Path(info.workdir) / f"tap-{name}.jsonl"
            fh = open(out, "wb")  # noqa: SIM115  # closed in the finally below
            state.files.append(fh)
            state.taps[name] = out
            state.procs.append(
                subprocess.Popen(
                    host.argv([PUNCHGUARD, "tap", "--json"]), env=host.env(), stdout=fh,
                    stderr=subprocess.DEVNULL, start_new_session=True,
                )
            )  # fmt: skip
        labmod.start_stacks(info)
        flows = asyncio.run(watch(info, TUNNEL_TIMEOUT, lambda _m: None))
        assert all("tunnel_up" in f.reached for f in flows.values()), {
            n: f.reached for n, f in flows.items()
        }
        yield state
    finally:
        stop_taps(state)
        labmod.destroy(info)
        NatLab.cleanup_leftovers(lab_id)
    assert lab_id not in subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout


def stop_taps(state: Lab) -> None:
    for proc in state.procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for fh in state.files:
        fh.close()
    state.procs.clear()
    state.files.clear()


def pid_of(host: labmod.LabHost, program: str) -> int:
    out = host.punchguard("ctl", "pid", f"punchguard:{program}").stdout.strip()
    assert out.isdigit() and int(out) > 0, f"{program}: {out!r}"
    return int(out)


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def as_user(host: labmod.LabHost, user: str, cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """``cmd`` as ``user`` inside the host's namespace (``runuser`` drops every capability)."""
    return host.run(["runuser", "-u", user, "--", *cmd], timeout=30)


# -- least privilege -------------------------------------------------------------------------


def test_unprivileged_stages_have_no_capabilities_and_only_guardd_is_root(lab: Lab) -> None:
    uid = pwd.getpwnam(SERVICE_USER).pw_uid
    for host in lab.info.hosts.values():
        for program in UNPRIVILEGED:
            st = proc_status(pid_of(host, program))
            assert st["Uid"].split() == [str(uid)] * 4, (program, st["Uid"])
            assert int(st["CapEff"], 16) == 0, (program, st["CapEff"])
            assert int(st["CapPrm"], 16) == 0, (program, st["CapPrm"])
            assert int(st["CapAmb"], 16) == 0, (program, st["CapAmb"])
        st = proc_status(pid_of(host, "guardd"))
        assert st["Uid"].split()[1] == "0"
        assert int(st["CapEff"], 16) & CAP_NET_ADMIN


def test_service_user_cannot_touch_interfaces_addresses_routes_or_wireguard(lab: Lab) -> None:
    for name, host in lab.info.hosts.items():
        wg = host.interface
        attempts = {
            "link down": ["ip", "link", "set", wg, "down"],
            "link add": ["ip", "link", "add", f"{wg[:11]}evil", "type", "dummy"],
            "addr add": ["ip", "addr", "add", "10.250.0.1/32", "dev", wg],
            "route add": ["ip", "route", "add", "10.251.0.0/24", "dev", wg],
            "route del": ["ip", "route", "flush", "dev", wg],
            "wg set": ["wg", "set", wg, "listen-port", "1"],
            "wg peer": ["wg", "set", wg, "peer", "A" * 43 + "=", "endpoint", "192.0.2.1:9"],
            "wg show": ["wg", "show", wg, "private-key"],
            "wg.key": ["cat", str(host.state_dir / "guardd" / "wg.key")],
        }
        for what, cmd in attempts.items():
            r = as_user(host, SERVICE_USER, cmd)
            assert r.returncode != 0, f"host {name}: {what} succeeded as {SERVICE_USER}"
            assert re.search(
                r"denied|not permitted|Permission|Unable to access|No such file", r.stderr
            ), (what, r.stderr)
        # and nothing changed: the tunnel still carries a ping
    for src, dst in (("a", "b"), ("b", "a")):
        ok, text = ping(lab.info, src, dst)
        assert ok, f"ping {src} -> {dst} {text}"


# -- the bus is private ----------------------------------------------------------------------

CONNECT = textwrap.dedent(
    """
    import socket, sys
    results = []
    for path in sys.argv[1:]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            results.append("connected")
        except OSError as e:
            results.append(type(e).__name__)
        finally:
            s.close()
    print(" ".join(results))
    """
)


@pytest.fixture
def outsider() -> Iterator[str]:
    """A throwaway local user outside the punchguard group, removed afterwards."""
    name = "pgx" + secrets.token_hex(3)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
         "--user-group", name],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)


def test_local_user_outside_the_group_reaches_no_socket_log_or_key(lab: Lab, outsider: str) -> None:
    for host in lab.info.hosts.values():
        sockets = [str(host.runtime_dir / f"{s}.pub") for s in (*UNPRIVILEGED, "guardd")]
        for path in sockets:
            assert Path(path).exists(), path
        r = as_user(host, outsider, ["/usr/bin/python3", "-c", CONNECT, *sockets])
        assert r.stdout.split() == ["PermissionError"] * len(sockets), r.stdout + r.stderr
        # the same connection attempt as the service user works: the test can tell
        r = as_user(host, SERVICE_USER, ["/usr/bin/python3", "-c", CONNECT, *sockets])
        assert r.stdout.split() == ["connected"] * len(sockets), r.stdout + r.stderr
        for cmd in (
            ["ls", str(host.runtime_dir)],
            ["cat", str(host.runtime_dir / "guardd.log")],
            ["cat", str(host.state_dir / "signald" / "tox.save")],
            ["cat", str(host.state_dir / "otrd" / "otr.key")],
            ["cat", str(host.state_dir / "guardd" / "wg.key")],
            ["ls", str(host.state_dir / "otrd")],
        ):
            r = as_user(host, outsider, cmd)
            assert r.returncode != 0 and "Permission denied" in r.stderr, (cmd, r.stderr)


# -- secrets at rest -------------------------------------------------------------------------


def test_every_key_file_is_0600_and_owned_by_the_one_user_that_needs_it(lab: Lab) -> None:
    uid = pwd.getpwnam(SERVICE_USER).pw_uid
    expected = {
        "signald/tox.save": uid,
        "otrd/otr.key": uid,
        "guardd/wg.key": 0,
    }
    for host in lab.info.hosts.values():
        for rel, owner in expected.items():
            st = (host.state_dir / rel).stat()
            assert st.st_mode & 0o777 == 0o600, (rel, oct(st.st_mode))
            assert st.st_uid == owner, (rel, st.st_uid)
            parent = (host.state_dir / rel).parent.stat()
            assert parent.st_mode & 0o777 == 0o700 and parent.st_uid == owner, rel
        assert host.runtime_dir.stat().st_mode & 0o7777 == 0o1770


# -- hostile input while the tunnel carries traffic ------------------------------------------

ROGUE = textwrap.dedent(
    """
    # A compromised stage: binds the endpoint of the stage it replaces and publishes garbage.
    import os, sys, time
    import msgpack, zmq
    from punchguard import messages as m

    runtime, role, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 100000)
    path = f"{runtime}/{role}.pub"
    pub.bind(f"ipc://{path}")
    os.chmod(path, 0o660)
    seq = 0

    def send(msg, src=role):
        global seq
        seq += 1
        pub.send_multipart(m.encode(msg, src=src, seq=seq))

    def garbage(msg_type):
        topic = f"{role}.{msg_type}".encode()
        env = {"v": 1, "type": msg_type, "src": "guardd", "seq": 1, "ts": 1.0, "body": {}}
        for frames in (
            [topic, b"\\xc1not msgpack"], [topic], [topic, b"\\x80" * 70000],
            [topic, msgpack.packb(env)], [topic, msgpack.packb({**env, "v": 9})],
        ):
            pub.send_multipart(frames)

    def P(**kw):
        base = dict(local_port=40000, endpoint_host="198.51.100.99", endpoint_port=40000,
                    role=m.Role.CONTROLLING)
        base.update(kw)
        return m.Path(**base)

    ABSURD = [P(local_port=0), P(endpoint_port=0), P(endpoint_host="224.0.0.1"),
              P(endpoint_host="255.255.255.255"), P(endpoint_host="0.0.0.0"),
              P(endpoint_host="127.0.0.1"), P(endpoint_host="ff02::1"),
              P(endpoint_host="169.254.9.9"), P(endpoint_host="::ffff:127.0.0.1", relayed=True),
              P(endpoint_host="evil.example")]
    BOGUS = [f"1 1 UDP 1 {h} {p} typ host" for h, p in
             (("224.0.0.251", 5353), ("127.0.0.1", 22), ("255.255.255.255", 9),
              ("198.51.100.1", 0), ("x.local", 9), ("0.0.0.0", 9))] + ["garbage"] * 4
    OTR = [os.urandom(300), b"\\x00" * 16384, b"hello in plaintext", b"?OTR:AAMD" +
           b"A" * 400 + b".", b"?OTR,1,99999,xxxx,", b"?OTR:" + os.urandom(50).hex().encode()]

    time.sleep(2.0)  # subscribers reconnect (every 100 ms, backing off to 1 s)
    rounds = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if role == "punchd":  # to guardd: absurd paths, a flood of them, garbage, forgeries
            for i in range(1000):
                send(ABSURD[i % len(ABSURD)])
            garbage("punch.path")
        elif role == "signald":  # to otrd: plaintext, broken OTR, oversized, fragment bombs
            for payload in OTR:
                send(m.SignalRecv(payload))
            garbage("signal.recv")
        elif role == "otrd":  # to punchd: undecodable, wrong type, huge bogus candidate lists
            send(m.OtrRecv(os.urandom(200)))
            send(m.OtrRecv(m.pack(m.OtrState(m.OtrStateKind.SECURE), src="otrd")))
            params = m.IceParams(session=0, ufrag="abcd", pwd="x" * 22,
                                 candidates=tuple(BOGUS * 40))  # 400 lines, under 16 KiB
            send(m.OtrRecv(m.pack(params, src="punchd")))
            garbage("otr.recv")
        rounds += 1
        time.sleep(0.5)
    print(rounds)
    """
)


def rogue(host: labmod.LabHost, role: str, seconds: float) -> subprocess.Popen[str]:
    """Stop the real ``role`` and run a compromised one (as the service user) in its place."""
    r = host.punchguard("ctl", "stop", f"punchguard:{role}")
    assert r.returncode == 0, r.stdout + r.stderr
    return subprocess.Popen(
        host.argv(
            ["runuser", "-u", SERVICE_USER, "--", sys.executable, "-c", ROGUE,
             str(host.runtime_dir), role, str(seconds)]
        ),
        env=host.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def tap_lines(path: Path, since: float = 0.0) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            item = json.loads(line)
            if item.get("ts", 0) >= since:
                out.append(item)
    return out


def test_hostile_input_is_refused_and_counted_while_the_tunnel_keeps_working(lab: Lab) -> None:
    a, b = lab.info.hosts["a"], lab.info.hosts["b"]
    started = time.time()
    count = 80  # 0.2 s apart: 16 s of traffic through the tunnel, attack included
    pinger = subprocess.Popen(
        a.argv(["ping", "-c", str(count), "-i", "0.2", "-W", "2", tunnel_addresses(lab.info)["b"]]),
        env=a.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    rogues = [rogue(a, "punchd", 8), rogue(a, "signald", 8), rogue(b, "otrd", 8)]
    try:
        outs = [r.communicate(timeout=60) for r in rogues]
        for r, (out, err) in zip(rogues, outs, strict=True):
            assert r.returncode == 0 and int(out.strip() or 0) >= 5, err[-2000:]
        ping_out, _ = pinger.communicate(timeout=60)
    finally:
        for p in (*rogues, pinger):
            if p.poll() is None:
                p.kill()
                p.wait()
    m = re.search(r"(\d+) packets transmitted, (\d+) received", ping_out)
    assert m is not None, ping_out
    sent, got = int(m.group(1)), int(m.group(2))
    assert sent == count and got >= count - 2, ping_out  # the tunnel kept working throughout

    # guardd (host a): every absurd path refused and counted; the path it had, it kept
    time.sleep(2.0)  # one more heartbeat of every counter
    lines = tap_lines(lab.taps["a"], since=started)
    states = [x["body"] for x in lines if x.get("type") == "guard.state"]
    assert states and all(s["state"] == "up" for s in states), {s["state"] for s in states}
    assert len({s["endpoint"] for s in states}) == 1
    assert states[-1]["refused"] >= 3000, states[-1]
    stats = [x["body"] for x in lines if x.get("type") == "bus.stats" and x["src"] == "guardd"]
    assert stats, "no bus.stats from guardd"
    garbage = {"not_msgpack", "bad_frames", "too_large", "topic_mismatch", "bad_version"}
    assert garbage <= set(stats[-1]["drops"]), stats[-1]

    # otrd (host a): nothing delivered from the forger; refusals counted in its log
    assert not [x for x in lines if x.get("type") == "otr.recv"]
    otrd_log = (a.runtime_dir / "otrd.log").read_text(errors="replace")
    counters = [json.loads(x) for x in otrd_log.splitlines() if '"otr.counters"' in x]
    assert counters, otrd_log[-2000:]
    last = counters[-1]
    assert last.get("plaintext_refused", 0) > 0 and last.get("too_many_fragments", 0) > 0, last

    # punchd (host b): bogus candidate lists cut and counted, bad payloads dropped
    punchd_log = (b.runtime_dir / "punchd.log").read_text(errors="replace")
    assert '"punch.candidates_refused"' in punchd_log or '"params_not_ready"' in punchd_log
    assert '"punch.drop"' in punchd_log
    lines_b = tap_lines(lab.taps["b"], since=started)
    states_b = [x["body"] for x in lines_b if x.get("type") == "guard.state"]
    assert states_b and all(s["state"] == "up" for s in states_b)

    summary = {
        "ping_sent": sent, "ping_received": got, "guardd_refused": states[-1]["refused"],
        "guardd_drops": stats[-1]["drops"], "otrd_counters": last,
    }  # fmt: skip
    print(json.dumps({"hostile_input": summary}))

    # every remaining stage is still running (nothing crashed on the input)
    for host, stopped in ((a, {"punchd", "signald"}), (b, {"otrd"})):
        out = host.punchguard("ctl", "status").stdout
        for program in {"guardd", *UNPRIVILEGED} - stopped:
            assert re.search(rf"punchguard:{program}\s+RUNNING", out), out


# -- key material: never on the bus, never in a log ------------------------------------------


def tox_keys(save: bytes) -> tuple[bytes, bytes]:
    """(public key, secret key) from c-toxcore savedata: a header (uint32 0, uint32 cookie
    0x15ed1b1f), then sections (uint32 length, uint16 type, uint16 cookie 0x01ce, data); the
    section of type 1 (NOSPAMKEYS) is nospam (4 bytes), public key (32), secret key (32)."""
    assert save[:4] == bytes(4) and int.from_bytes(save[4:8], "little") == 0x15ED1B1F
    off = 8
    while off + 8 <= len(save):
        length = int.from_bytes(save[off : off + 4], "little")
        kind = int.from_bytes(save[off + 4 : off + 6], "little")
        assert int.from_bytes(save[off + 6 : off + 8], "little") == 0x01CE
        data = save[off + 8 : off + 8 + length]
        if kind == 1:
            return data[4:36], data[36:68]
        off += 8 + length
    raise AssertionError("no NOSPAMKEYS section in the savedata")


def secrets_of(host: labmod.LabHost) -> dict[str, bytes]:
    wg = base64.b64decode((host.state_dir / "guardd" / "wg.key").read_text().strip())
    _pub, tox = tox_keys((host.state_dir / "signald" / "tox.save").read_bytes())
    key = identity.load_key(host.state_dir / "otrd")
    assert key is not None
    x = int(key.priv.x)
    return {"wireguard": wg, "tox": tox, "otr_x": x.to_bytes((x.bit_length() + 7) // 8, "big")}


def spellings(raw: bytes) -> list[str]:
    n = int.from_bytes(raw, "big")
    return [
        base64.b64encode(raw).decode(), raw.hex(), raw.hex().upper(), str(n), f"{n:x}",
        base64.b64encode(raw).decode().rstrip("="),
    ]  # fmt: skip


def test_no_key_material_on_the_bus_or_in_any_log(lab: Lab) -> None:
    # the Tox public key in the savedata is the one on the bus: we parsed the right section
    tox_pub = {
        name: tox_keys((h.state_dir / "signald" / "tox.save").read_bytes())[0]
        for name, h in lab.info.hosts.items()
    }
    time.sleep(1.0)
    stop_taps(lab)
    captured = {name: path.read_bytes() for name, path in lab.taps.items()}
    for name in lab.info.hosts:
        text = captured[name].decode(errors="replace")
        assert '"type":"guard.state"' in text and '"type":"otr.state"' in text
        assert tox_pub[name].hex().upper() in text  # signal.state.address: a public value
    blobs = dict(captured)
    for host in lab.info.hosts.values():
        for path in host.runtime_dir.rglob("*"):
            if path.is_file():
                blobs[str(path)] = path.read_bytes()
    assert any(k.endswith("guardd.log") for k in blobs) and any(k.endswith(".log") for k in blobs)
    decoded = {
        name: b"".join(payloads_in(blob.decode(errors="replace"))) for name, blob in blobs.items()
    }
    for host in lab.info.hosts.values():
        for what, raw in secrets_of(host).items():
            for name, blob in blobs.items():
                text = blob.decode(errors="replace")
                for spelling in spellings(raw):
                    assert spelling not in text, f"{what} ({spelling[:8]}...) in {name}"
                assert raw not in blob, f"raw {what} in {name}"
                assert raw not in decoded[name], f"{what} inside a base64 payload in {name}"


def payloads_in(text: str) -> Iterator[bytes]:
    """Every base64 string in tap JSON lines, decoded (bytes fields travel as base64)."""
    for match in re.finditer(r'"([A-Za-z0-9+/]{16,}={0,2})"', text):
        with contextlib.suppress(ValueError):
            yield base64.b64decode(match.group(1), validate=True)
