"""The two-NAT lab: two PunchGuard hosts behind two NATs on one machine, with every real piece.

::

                 <id>-pub: bridge 198.51.100.0/24
                 tox-bootstrapd at .30, .31, .32 :33445 (UDP + TCP relay), one namespace each
                 coturn 198.51.100.2:3478 and .3:3478 (STUN; TURN with --turn)
                /                                   \\
       <id>-nata  MASQUERADE + stateful firewall      <id>-natb
        198.51.100.10 | 10.1.0.1                      198.51.100.20 | 10.2.0.1
       <id>-hosta  10.1.0.2                           <id>-hostb  10.2.0.2
        supervisord + signald, otrd, punchd, guardd    (the same)
        WireGuard <id>a  ======== tunnel ========      WireGuard <id>b

The network is ``punchguard.netlab``. Each host gets a directory under the lab's work
directory with its config, runtime and state directories; its identities are created and the
two hosts paired with the same commands a user runs (``punchguard init``, ``invite``, ``pair``),
and each host's stack is ``punchguard start`` (supervisord with ``deploy/supervisord.conf``)
inside the host's namespace. Names carry the lab id, so labs never collide with each other or
with anything else; ``lab.json`` in the work directory lets later commands find a lab.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from punchguard.netlab import LabError, NatBehaviour, NatLab, SideName

TOX_PORT = 33445
LAB_GLOB = "*-lab-*"
HOSTS: tuple[SideName, SideName] = ("a", "b")


def _bin(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else name


@dataclass
class LabHost:
    name: SideName
    ns: str
    dir: str
    interface: str

    @property
    def config(self) -> Path:
        return Path(self.dir) / "config.toml"

    @property
    def runtime_dir(self) -> Path:
        return Path(self.dir) / "run"

    @property
    def state_dir(self) -> Path:
        return Path(self.dir) / "state"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PUNCHGUARD_")}
        env["PUNCHGUARD_CONFIG"] = str(self.config)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
        return env

    def argv(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *cmd]

    def run(self, cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(cmd), env=self.env(), text=True, capture_output=True, timeout=timeout,
            check=False,
        )  # fmt: skip

    def punchguard(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run([_bin("punchguard"), *args], timeout=timeout)


@dataclass
class LabInfo:
    """What later commands need to find and remove a lab (``lab.json``)."""

    lab_id: str
    workdir: str
    nat_a: str
    nat_b: str
    turn: bool
    policy: str
    hosts: dict[str, LabHost]
    bootstrap_nodes: list[tuple[str, str]] = field(default_factory=list)  # (address, key)
    stun_servers: tuple[str, ...] = ()

    def save(self) -> None:
        data = asdict(self)
        (Path(self.workdir) / "lab.json").write_text(json.dumps(data, indent=2))

    @staticmethod
    def load(path: Path) -> LabInfo:
        data = json.loads(path.read_text())
        data["hosts"] = {k: LabHost(**v) for k, v in data["hosts"].items()}
        data["stun_servers"] = tuple(data.get("stun_servers", ()))
        data["bootstrap_nodes"] = [tuple(n) for n in data.get("bootstrap_nodes", [])]
        return LabInfo(**data)


def find_labs() -> list[LabInfo]:
    labs = []
    for p in sorted(Path(tempfile.gettempdir()).glob(f"{LAB_GLOB}/lab.json")):
        try:
            labs.append(LabInfo.load(p))
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return labs


def find_lab(lab_id: str | None) -> LabInfo:
    labs = find_labs()
    if lab_id:
        for lab in labs:
            if lab.lab_id == lab_id:
                return lab
        raise LabError(
            f"no lab named {lab_id!r} (labs: {', '.join(x.lab_id for x in labs) or '-'})"
        )
    if not labs:
        raise LabError("no lab is up (punchguard lab up)")
    if len(labs) > 1:
        names = ", ".join(x.lab_id for x in labs)
        raise LabError(f"several labs are up ({names}): say which with --name")
    return labs[0]


TOX_NODES = 3  # three nodes on separate addresses: one node gave 16-53 s outliers (design 4.1)
TOX_NODE_NET = "198.51.100.3"  # nodes at .30, .31, .32


def _bootstrapd_config(workdir: Path, index: int) -> Path:
    d = workdir / f"toxnode{index}"
    d.mkdir(exist_ok=True)
    conf = d / "bootstrapd.conf"
    # libconfig syntax; the settings that worked here (design 4.1)
    conf.write_text(
        f"port = {TOX_PORT}\n"
        f'keys_file_path = "{d / "keys"}"\n'
        f'pid_file_path = "{d / "pid"}"\n'
        "enable_ipv6 = false\n"
        "enable_ipv4_fallback = true\n"
        "enable_lan_discovery = false\n"
        "enable_tcp_relay = true\n"
        f"tcp_relay_ports = [{TOX_PORT}]\n"
        "enable_motd = false\n"
        "bootstrap_nodes = ()\n"
    )
    return conf


def start_bootstrap_nodes(
    net: NatLab, count: int = TOX_NODES, timeout: float = 20.0
) -> list[tuple[str, str]]:
    """A private Tox network: ``count`` tox-bootstrapd, each in a namespace of its own on the
    public bridge; their (address, DHT public key)."""
    started = []
    for i in range(count):
        address = f"{TOX_NODE_NET}{i}"
        ns = net.add_service_host(i, address)
        conf = _bootstrapd_config(net.workdir, i)
        log = open(conf.parent / "log", "wb")  # noqa: SIM115  # handed to the child, closed below
        try:
            proc = net.spawn(
                ns,
                ["tox-bootstrapd", f"--config={conf}", "--foreground", "--log-backend=stdout"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        started.append((address, conf, proc))
    nodes = []
    deadline = time.monotonic() + timeout
    for address, conf, proc in started:
        keys = conf.parent / "keys"
        while not (keys.exists() and keys.stat().st_size >= 64):
            if proc.poll() is not None:
                text = (conf.parent / "log").read_text()[-1500:]
                raise LabError(f"tox-bootstrapd at {address} exited: {text}")
            if time.monotonic() > deadline:
                raise LabError(f"tox-bootstrapd at {address} wrote no keys within {timeout:.0f} s")
            time.sleep(0.05)
        nodes.append((address, keys.read_bytes()[:32].hex().upper()))
    return nodes


def host_config(info: LabInfo, host: LabHost, turn: dict[str, object] | None) -> str:
    stun = ", ".join(f'"{s}"' for s in info.stun_servers)
    text = (
        f"# lab {info.lab_id}, host {host.name} (written by punchguard lab up)\n"
        f'[paths]\nruntime_dir = "{host.runtime_dir}"\nstate_dir = "{host.state_dir}"\n'
        f'[policy]\nmode = "{info.policy}"\n'
        f'[wireguard]\ninterface = "{host.interface}"\n'
        f"[ice]\nstun_servers = [{stun}]\n"
    )
    for address, key in info.bootstrap_nodes:
        text += (
            f'[[tox.bootstrap_nodes]]\nhost = "{address}"\nport = {TOX_PORT}\n'
            f'public_key = "{key}"\ntcp_port = {TOX_PORT}\n'
        )
    if turn:
        text += (
            "[[ice.turn_servers]]\n"
            f'host = "{turn["host"]}"\nport = {turn["port"]}\n'
            f'username = "{turn["username"]}"\npassword = "{turn["password"]}"\n'
        )
    return text


def build(
    lab_id: str,
    *,
    nat_a: NatBehaviour = NatBehaviour.CONE,
    nat_b: NatBehaviour = NatBehaviour.CONE,
    turn: bool = False,
    policy: str = "on-demand",
    say: Callable[[str], None] = print,
    start: bool = True,
) -> LabInfo:
    """Build the network, its servers and both hosts (paired), and start both stacks (or
    leave that to ``start_stacks``)."""
    log = say
    net = NatLab(lab_id, nat_a=nat_a, nat_b=nat_b)
    os.chmod(net.workdir, 0o755)  # the service user reaches each host's runtime directory
    hosts: dict[str, LabHost] = {
        name: LabHost(
            name=name,
            ns=net.side(name).host_ns,
            dir=str(net.workdir / name),
            interface=f"{lab_id}{name}"[-15:],
        )
        for name in HOSTS
    }
    info = LabInfo(lab_id, str(net.workdir), nat_a.value, nat_b.value, turn, policy, hosts)
    info.save()
    try:
        log(f"network: namespaces {', '.join(net.namespaces)}")
        net.up()
        coturn = net.start_coturn(turn=turn)
        info.stun_servers = coturn.stun_servers
        log(f"coturn: STUN{' + TURN' if turn else ''} on {', '.join(coturn.stun_servers)}")
        info.bootstrap_nodes = start_bootstrap_nodes(net)
        addresses = ", ".join(f"{a}:{TOX_PORT}" for a, _ in info.bootstrap_nodes)
        log(f"tox-bootstrapd: {addresses} (UDP + TCP relay)")
        turn_cfg = asdict(coturn.turn) if coturn.turn else None
        for host in hosts.values():
            Path(host.dir).mkdir(mode=0o755)
            host.config.write_text(host_config(info, host, turn_cfg))
        info.save()
        pair_hosts(hosts["a"], hosts["b"], log)
        if start:
            start_stacks(info)
            log("started supervisord on both hosts")
    except BaseException:
        destroy(info)
        raise
    # The lab outlives this process: its processes run in sessions of their own, and
    # ``destroy`` finds them again by their namespaces.
    return info


def start_stacks(info: LabInfo) -> None:
    """``punchguard start`` on both hosts: supervisord with deploy/supervisord.conf."""
    for host in info.hosts.values():
        r = host.punchguard("start")
        if r.returncode != 0:
            raise LabError(f"host {host.name}: punchguard start: {r.stderr.strip()}")


def pair_hosts(a: LabHost, b: LabHost, say: Callable[[str], None] = print) -> None:
    """Both hosts' identities and pairing, through the user's commands."""
    codes = {}
    for host in (a, b):
        for args in (("init",), ("invite", "--code-only")):
            r = host.punchguard(*args)
            if r.returncode != 0:
                raise LabError(f"host {host.name}: punchguard {args[0]}: {r.stderr.strip()}")
        codes[host.name] = r.stdout.strip()
    for host, other in ((a, b), (b, a)):
        r = host.punchguard("pair", codes[other.name], "--yes")
        if r.returncode != 0:
            raise LabError(f"host {host.name}: punchguard pair: {r.stderr.strip()}")
    say("paired a and b (punchguard init, invite, pair)")


def destroy(info: LabInfo) -> list[str]:
    """Remove everything of the lab: stacks, processes, interfaces, namespaces, files."""
    done = []
    for host in info.hosts.values():
        if host.config.exists():
            host.punchguard("stop", timeout=20)
        sock = Path("/var/run/wireguard") / f"{host.interface}.sock"
        if sock.exists():
            sock.unlink()
            done.append(f"removed {sock}")
    for ns in NatLab.cleanup_leftovers(info.lab_id):
        done.append(f"removed namespace {ns}")
    # wireguard-go processes of the lab's interfaces, wherever they run
    for pid in _pids_of("wireguard-go"):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if any(arg.decode(errors="replace") in _interfaces(info) for arg in cmdline):
            os.kill(pid, signal.SIGKILL)
            done.append(f"killed wireguard-go {pid}")
    shutil.rmtree(info.workdir, ignore_errors=True)
    return done


def stage_pid(info: LabInfo, host: str, service: str) -> int:
    """The pid of ``python -m <service>`` running in ``host``'s namespace."""
    ns = info.hosts[host].ns
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    for pid in pids.split():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if service.encode() in argv and b"-m" in argv:
            return int(pid)
    raise LabError(f"no {service} running in {ns}")


def _interfaces(info: LabInfo) -> set[str]:
    return {h.interface for h in info.hosts.values()}


def _pids_of(name: str) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "comm").read_text().strip() == name:
                    pids.append(int(p.name))
            except OSError:
                continue
    return pids
