"""signald's runner against a real in-process bus and a fake Tox (the wiring, not Tox)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import structlog

from punchguard import config
from punchguard.bus import Bus
from punchguard.messages import (
    Error,
    Message,
    SignalPolicy,
    SignalRecv,
    SignalSend,
    SignalState,
    SignalStateKind,
)
from punchguard.service import ServiceContext
from signald import core, savedata, toxcore
from signald.runner import SignalRunner

PEER_KEY = bytes(range(32))
_NOSPAM = b"\x01\x02\x03\x04"
PEER_ADDRESS = (PEER_KEY + _NOSPAM + core.address_checksum(PEER_KEY + _NOSPAM)).hex()
OWN_ADDRESS = bytes([0xAA] * 38)


class FakeTox:
    """The methods of ``toxcore.Tox`` that the runner calls; events are queued by the test."""

    instances: list[FakeTox] = []

    def __init__(self, options: toxcore.ToxOptions) -> None:
        self.options = options
        self.events: list[toxcore.ToxEvent] = []
        self.sent: list[tuple[int, bytes]] = []
        self.friend_list: dict[int, bytes] = {}
        self.bootstrapped: list[tuple[str, int]] = []
        self.alive = True
        self.send_error: toxcore.ToxError | None = None
        FakeTox.instances.append(self)

    def address(self) -> bytes:
        return OWN_ADDRESS

    def friends(self) -> dict[int, bytes]:
        return dict(self.friend_list)

    def savedata(self) -> bytes:
        return b"fake savedata"

    def kill(self) -> None:
        self.alive = False

    def iterate(self) -> list[toxcore.ToxEvent]:
        events, self.events = self.events, []
        return events

    def bootstrap(self, host: str, port: int, public_key: bytes) -> None:
        self.bootstrapped.append((host, port))

    def add_tcp_relay(self, host: str, port: int, public_key: bytes) -> None:
        pass

    def friend_add_norequest(self, public_key: bytes) -> int:
        n = len(self.friend_list)
        self.friend_list[n] = public_key
        return n

    def friend_delete(self, friend: int) -> None:
        del self.friend_list[friend]

    def friend_send_lossless_packet(self, friend: int, data: bytes) -> None:
        if self.send_error is not None:
            raise self.send_error
        self.sent.append((friend, data))


async def until(cond: Callable[[], object], what: str, within: float = 10.0) -> None:
    """Poll ``cond`` every 10 ms; TimeoutError naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    for _ in itertools.count():
        if cond():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


async def test_runner_wiring(runtime_dir: Path, tmp_path: Path) -> None:
    cfg = config.loads(
        f'[policy]\nmode = "on-demand"\n[peer]\ntox_address = "{PEER_ADDRESS}"\n'
        '[[tox.bootstrap_nodes]]\nhost = "127.0.0.1"\nport = 33445\n'
        f'public_key = "{"AB" * 32}"\ntcp_port = 3389\n'
    )
    state_dir = tmp_path / "state"
    cfg = dataclasses.replace(
        cfg, paths=config.PathsConfig(runtime_dir=runtime_dir, state_dir=state_dir)
    )
    seen: list[Message] = []

    async def collect(bus: Bus) -> None:
        while True:
            seen.append((await bus.receive()).msg)

    def last_state() -> SignalState | None:
        states = [m for m in seen if isinstance(m, SignalState)]
        return states[-1] if states else None

    FakeTox.instances.clear()
    async with (
        Bus("signald", runtime_dir, group=None) as bus,
        Bus("otrd", runtime_dir, group=None) as otrd,
        Bus("punchd", runtime_dir, group=None) as punchd,
    ):
        otrd.subscribe("signald")
        ctx = ServiceContext("signald", cfg, bus, structlog.get_logger())
        factory = cast(Callable[[toxcore.ToxOptions], toxcore.Tox], FakeTox)
        runner = asyncio.create_task(SignalRunner(ctx, tox_factory=factory).run())
        reader = asyncio.create_task(collect(otrd))
        try:
            await until(lambda: FakeTox.instances, "Tox started")
            fake = FakeTox.instances[0]
            # a new identity is saved at once, 0600; the peer added; the node bootstrapped
            save = savedata.path_in(state_dir)
            await until(save.exists, "savedata written")
            assert stat.S_IMODE(os.stat(save).st_mode) == 0o600
            assert fake.friend_list == {0: PEER_KEY}
            await until(lambda: fake.bootstrapped == [("127.0.0.1", 33445)], "bootstrap")

            fake.events += [
                toxcore.SelfConnection(toxcore.Connection.UDP),
                toxcore.FriendConnection(0, toxcore.Connection.UDP),
            ]

            def peer_online() -> bool:
                s = last_state()
                return s is not None and s.state == SignalStateKind.PEER_ONLINE

            await until(peer_online, "PEER_ONLINE on the bus")

            async def send_until(payload: bytes, cond: Callable[[], object]) -> None:
                # the first publications may precede the subscription (ZeroMQ slow joiner)
                for _ in range(200):
                    otrd.publish(SignalSend(payload))
                    with contextlib.suppress(TimeoutError):
                        await until(cond, "sent", 0.05)
                        return
                raise AssertionError(f"{payload!r} never handled")

            await send_until(b"hi", lambda: (0, b"\xa0hi") in fake.sent)
            # signal.send from anyone but otrd is not taken
            n = len(fake.sent)
            punchd.publish(SignalSend(b"not from otrd"))
            await asyncio.sleep(0.2)
            assert all(p != b"\xa0not from otrd" for _, p in fake.sent[n:])

            fake.send_error = toxcore.ToxError("tox_friend_send_lossless_packet", 7)
            await send_until(
                b"x", lambda: any(isinstance(m, Error) and m.code == "tox_sendq" for m in seen)
            )
            fake.send_error = None

            fake.events.append(toxcore.FriendLosslessPacket(0, b"\xa0yo"))
            await until(lambda: SignalRecv(b"yo") in seen, "signal.recv")
            fake.events.append(toxcore.FriendLosslessPacket(5, b"\xa0stranger"))
            await until(
                lambda: (s := last_state()) is not None and s.ignored_messages == 1, "counted"
            )
            assert SignalRecv(b"stranger") not in seen

            # punchd asks for offline: Tox is killed (saved first), the state says OFFLINE
            for _ in range(200):
                punchd.publish(SignalPolicy(False, "test"))
                await asyncio.sleep(0.02)
                if not fake.alive:
                    break
            assert not fake.alive
            await until(
                lambda: (s := last_state()) is not None and s.state == SignalStateKind.OFFLINE,
                "OFFLINE",
            )
        finally:
            for task in (runner, reader):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    assert all(not t.alive for t in FakeTox.instances)
