"""A NAT lab in network namespaces: two hosts, each behind its own NAT, and a "public" network.

Topology (design 4.5), every name prefixed with the lab's ``run_id``::

    <id>-pub     bridge br0 198.51.100.1/24 + service addresses (.2, .3, ... : coturn, Tox nodes)
       |  veth wan  198.51.100.10 (a) / .20 (b)
    <id>-nata / <id>-natb   MASQUERADE on wan (``--random-fully`` = symmetric), and the
       |                    stateful drop of unsolicited inbound (conntrack NEW,INVALID on wan,
       |                    INPUT and FORWARD)
       |  veth lan  10.1.0.1/24 (a) / 10.2.0.1/24 (b)
    <id>-hosta / <id>-hostb eth0 10.1.0.2 / 10.2.0.2, default route via the NAT

No link to the root namespace: lab traffic never leaves the lab. Namespaces share the filesystem,
so a bus runtime directory works across them.

Use::

    with NatLab(run_id, nat_a=NatBehaviour.CONE, nat_b=NatBehaviour.SYMMETRIC) as lab:
        stun = lab.start_coturn(turn=True)
        proc = lab.spawn(lab.a.host_ns, ["python", "-m", "punchd", ...])
        lab.set_nat("b", NatBehaviour.CONE); lab.flush_conntrack("a")

``teardown()`` (also on ``__exit__``) stops every process it started, kills whatever else runs in
its namespaces, deletes the namespaces (their veths go with them) and its work directory; it is
safe to call twice. ``NatLab.cleanup_leftovers(run_id)`` does the same from the names alone,
after a crash. Needs root, iptables (nf_tables), conntrack and coturn's ``turnserver``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import enum
import functools
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from pyroute2 import IPRoute, netns

PUBLIC_NET = "198.51.100"
PUBLIC_GW = f"{PUBLIC_NET}.1"
SERVICE_ADDRESSES = (f"{PUBLIC_NET}.2", f"{PUBLIC_NET}.3")  # coturn (two: NAT type detection)
STUN_PORT = 3478
PRIVATE_RANGES = ("10.0.0.0-10.255.255.255", "172.16.0.0-172.31.255.255",
                  "192.168.0.0-192.168.255.255")  # fmt: skip
SideName = Literal["a", "b"]


class NatBehaviour(enum.Enum):
    CONE = "cone"  # endpoint-independent mapping (plain MASQUERADE keeps the source port)
    SYMMETRIC = "symmetric"  # endpoint-dependent: MASQUERADE --random-fully


class LabError(Exception):
    """A lab command failed; the message names the command and its stderr."""


@dataclass(frozen=True)
class Side:
    name: SideName
    host_ns: str
    nat_ns: str
    host_addr: str  # 10.x.0.2
    lan_gw: str  # 10.x.0.1, the NAT's LAN address
    wan_addr: str  # the NAT's public address: what the world sees


@dataclass(frozen=True)
class TurnCredentials:
    host: str
    port: int
    username: str
    password: str
    realm: str


@dataclass(frozen=True)
class Coturn:
    stun_servers: tuple[str, ...]  # "ip:port", one per service address
    turn: TurnCredentials | None
    process: subprocess.Popen[bytes]


class NatLab:
    def __init__(
        self,
        run_id: str,
        *,
        nat_a: NatBehaviour = NatBehaviour.CONE,
        nat_b: NatBehaviour = NatBehaviour.CONE,
    ) -> None:
        if not run_id or not run_id.replace("-", "").isalnum() or len(run_id) > 20:
            raise ValueError(f"run_id {run_id!r}: 1-20 letters, digits or '-'")
        self.run_id = run_id
        self.public_ns = f"{run_id}-pub"
        self.a = Side("a", f"{run_id}-hosta", f"{run_id}-nata", "10.1.0.2", "10.1.0.1",
                      f"{PUBLIC_NET}.10")  # fmt: skip
        self.b = Side("b", f"{run_id}-hostb", f"{run_id}-natb", "10.2.0.2", "10.2.0.1",
                      f"{PUBLIC_NET}.20")  # fmt: skip
        self.nat = {"a": nat_a, "b": nat_b}
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{run_id}-lab-"))
        self._procs: list[subprocess.Popen[bytes]] = []
        self._namespaces: list[str] = []

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> NatLab:
        try:
            self.up()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.teardown()

    def side(self, name: SideName) -> Side:
        return self.a if name == "a" else self.b

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.public_ns, self.a.nat_ns, self.a.host_ns, self.b.nat_ns, self.b.host_ns)

    def up(self) -> None:
        """Build the lab (callable from inside an event loop: pyroute2's synchronous API runs
        its own loop, so the netlink work happens in a worker thread)."""
        _off_loop(self._up)

    def _up(self) -> None:
        for ns in self.namespaces:
            netns.create(ns)
            self._namespaces.append(ns)
            with IPRoute(netns=ns) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        with IPRoute(netns=self.public_ns) as ipr:
            ipr.link("add", ifname="br0", kind="bridge")
            br = ipr.link_lookup(ifname="br0")[0]
            for addr in (PUBLIC_GW, *SERVICE_ADDRESSES):
                ipr.addr("add", index=br, address=addr, prefixlen=24)
            ipr.link("set", index=br, state="up")
        for side in (self.a, self.b):
            self._build_side(side)

    def _build_side(self, side: Side) -> None:
        # public bridge port <-> NAT wan
        with IPRoute(netns=self.public_ns) as ipr:
            port = f"w{side.name}"
            ipr.link(
                "add", ifname=port, kind="veth", peer={"ifname": "wan", "net_ns_fd": side.nat_ns}
            )
            idx = ipr.link_lookup(ifname=port)[0]
            ipr.link("set", index=idx, master=ipr.link_lookup(ifname="br0")[0], state="up")
        # NAT lan <-> host eth0
        with IPRoute(netns=side.nat_ns) as ipr:
            ipr.link(
                "add", ifname="lan", kind="veth", peer={"ifname": "eth0", "net_ns_fd": side.host_ns}
            )
            wan, lan = ipr.link_lookup(ifname="wan")[0], ipr.link_lookup(ifname="lan")[0]
            ipr.addr("add", index=wan, address=side.wan_addr, prefixlen=24)
            ipr.addr("add", index=lan, address=side.lan_gw, prefixlen=24)
            ipr.link("set", index=wan, state="up")
            ipr.link("set", index=lan, state="up")
        with IPRoute(netns=side.host_ns) as ipr:
            eth = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth, address=side.host_addr, prefixlen=24)
            ipr.link("set", index=eth, state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=side.lan_gw)
        ns = side.nat_ns
        self.run(ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.run(ns, ["iptables", "-t", "nat", "-A", "POSTROUTING", *self._masq(side.name)])
        for chain in ("INPUT", "FORWARD"):
            # a home router: nothing unsolicited comes in from the WAN (design 4.5)
            self.run(ns, ["iptables", "-A", chain, "-i", "wan", "-m", "conntrack",
                          "--ctstate", "NEW,INVALID", "-j", "DROP"])  # fmt: skip

    def add_service_host(self, index: int, address: str) -> str:
        """A namespace of its own on the public bridge, at ``address`` (/24), for a public
        service that must answer from its own address (one tox-bootstrapd per address:
        design 4.1). Returns the namespace; ``teardown``/``cleanup_leftovers`` remove it."""
        ns = f"{self.run_id}-svc{index}"
        _off_loop(functools.partial(self._add_service_host, ns, index, address))
        return ns

    def _add_service_host(self, ns: str, index: int, address: str) -> None:
        netns.create(ns)
        self._namespaces.append(ns)
        with IPRoute(netns=self.public_ns) as ipr:
            port = f"s{index}"
            ipr.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
            idx = ipr.link_lookup(ifname=port)[0]
            ipr.link("set", index=idx, master=ipr.link_lookup(ifname="br0")[0], state="up")
        with IPRoute(netns=ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            eth = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth, address=address, prefixlen=24)
            ipr.link("set", index=eth, state="up")

    def _masq(self, name: SideName) -> list[str]:
        rule = ["-o", "wan", "-j", "MASQUERADE"]
        return [*rule, "--random-fully"] if self.nat[name] == NatBehaviour.SYMMETRIC else rule

    def teardown(self) -> None:
        """Stop everything this lab started and delete what it made. Safe to call twice."""
        for proc in reversed(self._procs):
            self.stop(proc)
        self._procs.clear()
        _remove_namespaces([*self.namespaces, *self._namespaces])
        self._namespaces.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    @staticmethod
    def cleanup_leftovers(run_id: str) -> list[str]:
        """Remove every namespace and work directory named after ``run_id`` (after a crash).
        Returns the namespaces it removed."""
        found = [ns for ns in _off_loop(netns.listnetns) if ns.startswith(f"{run_id}-")]
        _remove_namespaces(found)
        for d in glob.glob(os.path.join(tempfile.gettempdir(), f"{run_id}-lab-*")):
            shutil.rmtree(d, ignore_errors=True)
        return found

    # -- NAT control --------------------------------------------------------------------------

    def set_nat(self, name: SideName, behaviour: NatBehaviour) -> None:
        """Switch a NAT between cone and symmetric; existing mappings are flushed."""
        self.nat[name] = behaviour
        ns = self.side(name).nat_ns
        self.run(ns, ["iptables", "-t", "nat", "-R", "POSTROUTING", "1", *self._masq(name)])
        self.flush_conntrack(name)

    def flush_conntrack(self, name: SideName) -> None:
        """Forget every mapping of one NAT (what ``lab cut`` does to a path)."""
        self.run(self.side(name).nat_ns, ["conntrack", "-F"], check=False)

    def conntrack(self, name: SideName) -> str:
        """The NAT's conntrack table, as ``conntrack -L`` prints it (for assertions/debugging)."""
        return self.run(self.side(name).nat_ns, ["conntrack", "-L"], check=False).stdout

    # -- processes ----------------------------------------------------------------------------

    def run(
        self, ns: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside namespace ``ns``."""
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise LabError(f"{ns}: {' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def spawn(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdout: Any = None,
        stderr: Any = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process inside ``ns`` in a session of its own; ``teardown``
        stops it (``stop()`` earlier)."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], env=dict(env) if env is not None else None,
            cwd=cwd, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self._procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout``; returns the exit code."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        return proc.returncode

    # -- services -----------------------------------------------------------------------------

    def start_coturn(
        self,
        *,
        turn: bool = False,
        username: str = "punch",
        password: str = "guard",
        realm: str = "lab.punchguard",
        timeout: float = 15.0,
    ) -> Coturn:
        """coturn (Debian's ``turnserver``) on every service address of the public network:
        STUN only, or STUN + TURN with long-term credentials (design 4.5)."""
        d = self.workdir
        tag = "turn" if turn else "stun"
        argv = ["turnserver", "-n", "--no-tls", "--no-dtls", "--no-cli",
                f"--listening-port={STUN_PORT}", f"--pidfile={d / f'{tag}.pid'}",
                f"--userdb={d / f'{tag}.db'}", "--log-file=stdout", "--simple-log"]  # fmt: skip
        argv += [f"--listening-ip={ip}" for ip in SERVICE_ADDRESSES]
        if turn:
            argv += ["--lt-cred-mech", f"--user={username}:{password}", f"--realm={realm}",
                     f"--relay-ip={SERVICE_ADDRESSES[0]}", "--min-port=49152",
                     "--max-port=65535"]  # fmt: skip
            argv += [f"--denied-peer-ip={r}" for r in PRIVATE_RANGES]
        else:
            argv.append("--stun-only")
        log = open(d / f"{tag}.log", "wb")  # noqa: SIM115  # handed to the child, closed below
        try:
            proc = self.spawn(self.public_ns, argv, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        want = {f"{ip}:{STUN_PORT}" for ip in SERVICE_ADDRESSES}
        deadline = time.monotonic() + timeout
        while True:
            listening = self.run(self.public_ns, ["ss", "-Hlun"]).stdout
            if all(w in listening for w in want):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                text = (d / f"{tag}.log").read_text(errors="replace")[-2000:]
                raise LabError(f"turnserver did not start (exit {proc.poll()}): {text}")
            time.sleep(0.05)
        creds = None
        if turn:
            creds = TurnCredentials(SERVICE_ADDRESSES[0], STUN_PORT, username, password, realm)
        return Coturn(tuple(sorted(want)), creds, proc)


T = TypeVar("T")


def _off_loop(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a worker thread (pyroute2 refuses to run inside a running event loop)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()


def _remove_namespaces(names: Sequence[str]) -> None:
    present = set(_off_loop(netns.listnetns))
    for ns in names:
        if ns not in present:
            continue
        pids = subprocess.run(
            ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        with contextlib.suppress(OSError):
            _off_loop(functools.partial(netns.remove, ns))
