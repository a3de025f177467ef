"""WireGuard backends behind one adapter: wireguard-go (UAPI) and kernel WireGuard (pyroute2).

The rest of guardd sees only ``Backend``: ``ensure()`` adopts the interface if it is already
there and working, else creates it; ``read()`` returns a ``DeviceSample``; ``apply()`` applies a
``DeviceChange``. Neither backend puts guardd into the data plane.

wireguard-go is started as ``wireguard-go -f <ifname>`` in a session of its own
(``start_new_session``): it is in neither guardd's process group nor its session, so supervisord's
``stopasgroup``/``killasgroup`` and a ``kill -9`` of guardd leave it, the interface and the tunnel
running; the next guardd finds the UAPI socket answering and adopts it. Its output goes to
``<runtime_dir>/wireguard-go-<ifname>.log``. A socket that exists but does not answer is a
leftover of a killed wireguard-go (the TUN device died with it) and is removed before starting.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol

from guardd import netlink, uapi
from guardd.device import DeviceChange, DeviceSample, PeerSample, parse_endpoint

START_TIMEOUT = 5.0  # seconds for wireguard-go's socket to answer (measured: 3-6 ms)


class BackendError(Exception):
    """The interface is gone or does not answer: recreate or adopt it again."""


class ApplyError(BackendError):
    """The interface works but refused a change (e.g. the listen port is in use)."""


class Backend(Protocol):
    name: str
    ifname: str

    async def ensure(self) -> bool:
        """Adopt the interface (True) or create it (False)."""
        ...

    async def read(self) -> DeviceSample: ...

    async def apply(self, change: DeviceChange) -> None: ...

    def reap(self) -> None:
        """Collect the exit status of a data-plane process of ours that died, if any."""
        ...


def wireguard_go_binary() -> str | None:
    return shutil.which("wireguard-go")


def pid_file(runtime_dir: Path, ifname: str) -> Path:
    return runtime_dir / f"wireguard-go-{ifname}.pid"


class WireGuardGo:
    name = "wireguard-go"

    def __init__(self, ifname: str, runtime_dir: Path, socket_dir: Path = uapi.SOCKET_DIR) -> None:
        self.ifname = ifname
        self.runtime_dir = runtime_dir
        self.sock = uapi.socket_path(ifname, socket_dir)
        self.process: subprocess.Popen[bytes] | None = None

    async def ensure(self) -> bool:
        if await uapi.answers(self.sock):
            if await asyncio.to_thread(netlink.link_index, self.ifname) is None:
                raise BackendError(
                    f"{self.sock} answers but {self.ifname} is not in this network namespace: "
                    "the interface name is taken on this machine (choose another)"
                )
            return True
        if self.sock.exists():
            self.sock.unlink()  # stale: its wireguard-go is gone, and its TUN device with it
        if await asyncio.to_thread(netlink.link_index, self.ifname) is not None:
            raise BackendError(f"{self.ifname} exists but is not a wireguard-go interface")
        await self._start()
        return False

    async def _start(self) -> None:
        binary = wireguard_go_binary()
        if binary is None:
            raise BackendError("wireguard-go is not installed")
        log_path = self.runtime_dir / f"wireguard-go-{self.ifname}.log"
        self.process = spawn_wireguard_go(binary, self.ifname, log_path)
        await asyncio.to_thread(
            pid_file(self.runtime_dir, self.ifname).write_text, f"{self.process.pid}\n"
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BackendError(
                    f"wireguard-go exited with {self.process.returncode} (see {log_path})"
                )
            if await uapi.answers(self.sock, limit=0.5):
                return
            await asyncio.sleep(0.01)
        raise BackendError(f"wireguard-go did not answer on {self.sock} in {START_TIMEOUT} s")

    def reap(self) -> None:
        """Collect our child's exit status if it died (no zombie while guardd lives)."""
        if self.process is not None:
            self.process.poll()

    async def read(self) -> DeviceSample:
        try:
            return await uapi.get(self.sock)
        except uapi.UapiError as e:
            raise BackendError(str(e)) from None

    async def apply(self, change: DeviceChange) -> None:
        try:
            await uapi.set_device(self.sock, change)
        except uapi.UapiRefused as e:
            raise ApplyError(str(e)) from None
        except uapi.UapiError as e:
            raise BackendError(str(e)) from None


def spawn_wireguard_go(binary: str, ifname: str, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``wireguard-go -f ifname`` detached from our session (takes a few ms)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as logfile:
        return subprocess.Popen(
            [binary, "-f", ifname],
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives guardd: not in its process group or session
            close_fds=True,
            cwd="/",
        )


class KernelWireGuard:
    """Kernel WireGuard through pyroute2's generic netlink (not available on the test VMs)."""

    name = "kernel"

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname

    async def ensure(self) -> bool:
        kind = await asyncio.to_thread(netlink.link_kind, self.ifname)
        if kind == "wireguard":
            return True
        if kind is not None:
            raise BackendError(f"{self.ifname} exists and is not a WireGuard interface ({kind})")
        await asyncio.to_thread(netlink.create_kernel_link, self.ifname)
        return False

    def reap(self) -> None:
        pass  # no process: the kernel is the data plane

    async def read(self) -> DeviceSample:
        return await asyncio.to_thread(self._read)

    def _read(self) -> DeviceSample:
        from pyroute2 import NetlinkError, WireGuard

        try:
            with WireGuard() as wg:
                msgs: list[Any] = list(wg.info(self.ifname))
        except (NetlinkError, OSError) as e:
            raise BackendError(f"reading {self.ifname}: {e}") from None
        return sample_from_netlink(msgs)

    async def apply(self, change: DeviceChange) -> None:
        await asyncio.to_thread(self._apply, change)

    def _apply(self, change: DeviceChange) -> None:
        from pyroute2 import NetlinkError

        try:
            self._apply_netlink(change)
        except (NetlinkError, OSError, ValueError) as e:
            raise ApplyError(f"configuring {self.ifname}: {e}") from None

    def _apply_netlink(self, change: DeviceChange) -> None:
        from pyroute2 import WireGuard

        with WireGuard() as wg:
            for pub in change.remove_peers:
                wg.set(self.ifname, peer={"public_key": pub, "remove": True})
            if change.private_key is not None or change.listen_port is not None:
                wg.set(self.ifname, private_key=change.private_key, listen_port=change.listen_port)
            p = change.peer
            if p is not None:
                peer: dict[str, Any] = {"public_key": p.public_key, "update_only": not p.create}
                if p.endpoint is not None:
                    peer["endpoint_addr"] = str(p.endpoint[0])
                    peer["endpoint_port"] = p.endpoint[1]
                if p.keepalive is not None:
                    peer["persistent_keepalive"] = p.keepalive
                if p.allowed_ips is not None:
                    peer["replace_allowed_ips"] = True
                    peer["allowed_ips"] = list(p.allowed_ips)
                wg.set(self.ifname, peer=peer)


def sample_from_netlink(msgs: list[Any]) -> DeviceSample:
    """pyroute2 ``WireGuard.info()`` messages as a ``DeviceSample`` (the kernel's dump may be
    split over several messages; peers accumulate)."""
    private_key: str | None = None
    port = 0
    peers: list[PeerSample] = []
    for msg in msgs:
        key = msg.get_attr("WGDEVICE_A_PRIVATE_KEY")
        if key:
            private_key = key.decode() if isinstance(key, bytes) else str(key)
        port = msg.get_attr("WGDEVICE_A_LISTEN_PORT") or port
        for p in msg.get_attr("WGDEVICE_A_PEERS") or []:
            pub = p.get_attr("WGPEER_A_PUBLIC_KEY")
            ep = p.get_attr("WGPEER_A_ENDPOINT")
            hs = p.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME") or {}
            # pyroute2 decodes each allowed IP into its "addr" key as "ip/cidr"
            ips = [str(a["addr"]) for a in p.get_attr("WGPEER_A_ALLOWEDIPS") or () if "addr" in a]
            endpoint = None
            if ep and ep.get("addr") and ep.get("port"):
                endpoint = parse_endpoint(
                    f"[{ep['addr']}]:{ep['port']}"
                    if ":" in ep["addr"]
                    else f"{ep['addr']}:{ep['port']}"
                )
            peers.append(
                PeerSample(
                    public_key=pub.decode() if isinstance(pub, bytes) else str(pub),
                    endpoint=endpoint,
                    allowed_ips=tuple(ips),
                    keepalive=int(p.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0),
                    last_handshake=float(hs.get("tv_sec", 0)) if isinstance(hs, dict) else 0.0,
                    rx_bytes=int(p.get_attr("WGPEER_A_RX_BYTES") or 0),
                    tx_bytes=int(p.get_attr("WGPEER_A_TX_BYTES") or 0),
                )
            )
    return DeviceSample(private_key=private_key, listen_port=int(port), peers=tuple(peers))


def choose(kind: str, ifname: str, runtime_dir: Path) -> Backend:
    """The backend for ``[wireguard] backend`` (auto: the kernel's if it has WireGuard)."""
    if kind == "kernel":
        return KernelWireGuard(ifname)
    if kind == "wireguard-go":
        return WireGuardGo(ifname, runtime_dir)
    if netlink.link_kind(ifname) == "wireguard" or Path("/sys/module/wireguard").exists():
        return KernelWireGuard(ifname)
    return WireGuardGo(ifname, runtime_dir)
