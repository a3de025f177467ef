"""guardd's runner on a real in-process bus, with a fake WireGuard backend (no root needed)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import structlog

from guardd import keys
from guardd.backend import ApplyError
from guardd.device import DeviceChange, DeviceSample, PeerSample
from guardd.runner import Guard, Settings
from punchguard.bus import Bus
from punchguard.config import loads
from punchguard.messages import GuardState, GuardStateKind, Role
from punchguard.messages import Path as PunchPath
from punchguard.service import ServiceContext

TAKEN_PORT = 40999
PEER_KEY = "XiYqyRM0KKasWSy92G/NX18VZmgLqa5Gs916/z9ZzgQ="
CONFIG = f"""
[wireguard]
interface = "pgfake0"
address = "10.99.0.1/24"
[peer]
wireguard_public_key = "{PEER_KEY}"
tunnel_address = "10.99.0.2/24"
"""


class FakeBackend:
    """An interface in memory: applies changes like wireguard-go; the peer answers at once."""

    name = "fake"
    ifname = "pgfake0"

    def __init__(self) -> None:
        self.device = DeviceSample()
        self.applied: list[DeviceChange] = []

    async def ensure(self) -> bool:
        return False

    def reap(self) -> None:
        pass

    async def read(self) -> DeviceSample:
        return self.device

    async def apply(self, change: DeviceChange) -> None:
        if change.listen_port == TAKEN_PORT:
            raise ApplyError("UAPI set failed: errno=1")
        self.applied.append(change)
        dev = self.device
        if change.private_key is not None:
            dev = dataclasses.replace(dev, private_key=change.private_key)
        if change.listen_port is not None:
            dev = dataclasses.replace(dev, listen_port=change.listen_port)
        p = change.peer
        if p is not None:
            peer = dev.peer(p.public_key) or PeerSample(p.public_key)
            if p.endpoint is not None:
                peer = dataclasses.replace(peer, endpoint=p.endpoint)
            if p.keepalive is not None:
                peer = dataclasses.replace(peer, keepalive=p.keepalive)
                if p.keepalive:  # keepalive on: a handshake, the peer answers
                    peer = dataclasses.replace(
                        peer, last_handshake=time.time(), rx_bytes=peer.rx_bytes + 92
                    )
            if p.allowed_ips is not None:
                peer = dataclasses.replace(peer, allowed_ips=p.allowed_ips)
            dev = dataclasses.replace(dev, peers=(peer,))
        self.device = dev


@contextlib.asynccontextmanager
async def running(runtime_dir: Path, tmp_path: Path) -> AsyncIterator[tuple[FakeBackend, Bus, Bus]]:
    cfg = loads(CONFIG)
    backend = FakeBackend()
    async with (
        Bus("guardd", runtime_dir, heartbeat=0.2, group=None) as bus,
        Bus("punchd", runtime_dir, heartbeat=0.2, group=None) as punchd,
        Bus(None, runtime_dir, group=None) as tap,
    ):
        tap.subscribe("guardd")
        ctx = ServiceContext("guardd", cfg, bus, structlog.get_logger())
        guard = Guard(ctx, Settings.from_config(cfg), keys.ensure_key(tmp_path), backend)
        tasks = [
            asyncio.create_task(guard.run()),
            asyncio.create_task(bus.run_heartbeat()),
            asyncio.create_task(punchd.run_heartbeat()),
        ]
        try:
            yield backend, punchd, tap
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t


async def wait_for(tap: Bus, pred: Callable[[GuardState], bool]) -> GuardState:
    async with asyncio.timeout(20):
        while True:
            inc = await tap.receive()
            if isinstance(inc.msg, GuardState) and pred(inc.msg):
                return inc.msg


def good_path(**kw: object) -> PunchPath:
    fields: dict[str, object] = {
        "local_port": 40123,
        "endpoint_host": "198.51.100.7",
        "endpoint_port": 61002,
        "role": Role.CONTROLLING,
    }
    fields.update(kw)
    return PunchPath(**fields)  # type: ignore[arg-type]  # loose on purpose for bad values


async def test_path_applied_once_and_up(runtime_dir: Path, tmp_path: Path) -> None:
    async with running(runtime_dir, tmp_path) as (backend, punchd, tap):
        st = await wait_for(tap, lambda s: s.state is GuardStateKind.NO_PATH)
        assert st.public_key == keys.read_public_key(tmp_path) and st.backend == "fake"
        assert backend.applied[0].peer is not None and backend.applied[0].peer.create
        punchd.set_state(good_path())  # republished every 0.2 s: repeats must be no-ops
        st = await wait_for(tap, lambda s: s.state is GuardStateKind.UP)
        assert st.endpoint == "198.51.100.7:61002" and st.listen_port == 40123
        count = len(backend.applied)
        await asyncio.sleep(1.0)  # five more repeats of the same path
        assert len(backend.applied) == count


async def test_bad_paths_refused_and_counted(runtime_dir: Path, tmp_path: Path) -> None:
    async with running(runtime_dir, tmp_path) as (backend, punchd, tap):
        await wait_for(tap, lambda s: s.state is GuardStateKind.NO_PATH)

        async def spam() -> None:  # repeated: the first ones may go out before guardd is connected
            while True:
                punchd.publish(good_path(local_port=0))
                punchd.publish(good_path(endpoint_host="ff02::1"))
                await asyncio.sleep(0.2)

        task = asyncio.create_task(spam())
        try:
            st = await wait_for(tap, lambda s: s.refused >= 2)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert st.state is GuardStateKind.NO_PATH and st.last_refused.startswith("bad_")
        assert all(c.listen_port is None for c in backend.applied)


async def test_refused_change_is_an_error_until_a_good_path(
    runtime_dir: Path, tmp_path: Path
) -> None:
    async with running(runtime_dir, tmp_path) as (_, punchd, tap):
        await wait_for(tap, lambda s: s.state is GuardStateKind.NO_PATH)
        punchd.set_state(good_path(local_port=TAKEN_PORT))
        st = await wait_for(tap, lambda s: s.state is GuardStateKind.ERROR)
        assert "errno=1" in st.reason
        punchd.set_state(good_path(local_port=40124))  # punchd's next path
        st = await wait_for(tap, lambda s: s.state is GuardStateKind.UP)
        assert st.listen_port == 40124
