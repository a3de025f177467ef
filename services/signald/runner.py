"""signald's runner: wires the pure core to the bus and to libtoxcore.

Threading: toxcore is not thread-safe, so one thread must make every call. We run ``tox_iterate``
from the asyncio event loop itself (``await asyncio.sleep(iterate_sleep)`` between iterations)
instead of a dedicated Tox thread: the event loop thread is then the one owner, every toxcore
call (iterate, send, friend changes) happens between two awaits with no locks or cross-thread
queues, and "iterate right after sending" is a plain call. ``tox_iterate`` never blocks (a few
tens of microseconds when idle), so the bus is not held up; the one blocking step, resolving
bootstrap node names, is done with the loop's resolver (``getaddrinfo`` in an executor) before
the addresses are handed to toxcore.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable

from punchguard.config import Config, ToxNode
from punchguard.messages import (
    Error,
    GuardState,
    SignalPolicy,
    SignalRecv,
    SignalSend,
    SignalState,
    SignalStateKind,
    Transport,
)
from punchguard.service import ServiceContext, refuse
from signald import savedata, toxcore
from signald.core import (
    AddFriend,
    Bootstrap,
    Command,
    DeleteFriend,
    PublishError,
    PublishRecv,
    PublishState,
    Save,
    SendPacket,
    SignalCore,
    StartTox,
    StopTox,
)

OFFLINE_TICK = 0.25  # seconds between clock ticks while Tox is not running
# After a payload in or out, iterate every ``iterate_sleep`` for this long, then every
# ``iterate_idle_sleep``: 5 ms costs ~1.2% of a core here, 20 ms well under 1%, and a reply to a
# payload we just sent (the common case: OTR, ICE exchanges) arrives while we are still fast.
FAST_WINDOW = 2.0


class SignalRunner:
    def __init__(
        self,
        ctx: ServiceContext,
        tox_factory: Callable[[toxcore.ToxOptions], toxcore.Tox] = toxcore.Tox,
    ) -> None:
        self._tox_factory = tox_factory  # tests pass a fake with the same methods
        self.ctx = ctx
        self.bus = ctx.bus
        self.log = ctx.log
        cfg: Config = ctx.config
        self.tox_cfg = cfg.tox
        self.state_dir = cfg.paths.state_dir
        self.save_path = savedata.path_in(cfg.paths.state_dir)
        self.core = SignalCore(
            peer_address=cfg.peer.tox_address,
            nodes=cfg.tox.bootstrap_nodes,
            mode=cfg.policy.mode,
            log=ctx.log,
            jitter=random.random,
        )
        self.tox: toxcore.Tox | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._generation = 0  # of the Tox instance, so a late bootstrap task skips a new one
        self._fast_until = 0.0  # monotonic time until which we iterate every iterate_sleep

    async def run(self) -> None:
        self.bus.subscribe("otrd", types=("signal.send",))
        self.bus.subscribe("punchd")  # signal.policy, and any message as a sign of life
        self.bus.subscribe("guardd", types=("guard.state",))
        try:
            self.execute(self.core.start(time.time()))
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._bus_loop(), name="signald-bus")
                tg.create_task(self._tox_loop(), name="signald-tox")
        finally:
            for task in self._tasks:
                task.cancel()
            self._stop_tox()

    # -- loops ----------------------------------------------------------------------------------

    async def _tox_loop(self) -> None:
        while True:
            if self.tox is not None:
                self._iterate()
            self.execute(self.core.tick(time.time()))
            await asyncio.sleep(self._sleep())

    def _sleep(self) -> float:
        if self.tox is None:
            return OFFLINE_TICK
        if time.monotonic() < self._fast_until:
            return self.tox_cfg.iterate_sleep
        return max(self.tox_cfg.iterate_sleep, self.tox_cfg.iterate_idle_sleep)

    def _busy(self) -> None:
        self._fast_until = time.monotonic() + FAST_WINDOW

    async def _bus_loop(self) -> None:
        while True:
            inc = await self.bus.receive()
            now = time.time()
            msg = inc.msg
            if inc.endpoint == "otrd" and isinstance(msg, SignalSend):
                self.execute(self.core.send(msg.payload, inc.env.seq))
                if self.tox is not None:
                    self._iterate()  # one hop, not one tick (design 4.1)
            elif inc.endpoint == "punchd":
                self.core.punchd_alive(now)
                if isinstance(msg, SignalPolicy):
                    self.execute(self.core.policy(now, msg.online, msg.reason))
            elif inc.endpoint == "guardd" and isinstance(msg, GuardState):
                self.execute(self.core.guard_state(now, msg.state))

    def _iterate(self) -> None:
        assert self.tox is not None
        try:
            events = self.tox.iterate()
        except Exception:
            self.log.exception("tox.callback_failed")
            return
        for ev in events:
            now = time.time()
            if isinstance(ev, toxcore.SelfConnection):
                self.execute(self.core.self_connection(now, Transport(ev.status)))
            elif isinstance(ev, toxcore.FriendConnection):
                self.execute(self.core.friend_connection(now, ev.friend, Transport(ev.status)))
            elif isinstance(ev, toxcore.FriendRequest):
                self.execute(self.core.friend_request(now, ev.public_key))
            elif isinstance(ev, toxcore.FriendMessage):
                self.execute(self.core.friend_message(now, ev.friend, len(ev.message)))
            elif isinstance(ev, toxcore.FriendLosslessPacket):
                self.execute(self.core.lossless_packet(now, ev.friend, ev.data))

    # -- commands -------------------------------------------------------------------------------

    def execute(self, cmds: list[Command]) -> None:
        for cmd in cmds:
            self._execute_one(cmd)

    def _execute_one(self, cmd: Command) -> None:
        if isinstance(cmd, PublishState):
            self.bus.set_state(cmd.state)
        elif isinstance(cmd, PublishRecv):
            self._busy()
            self.bus.publish(SignalRecv(cmd.payload))
        elif isinstance(cmd, PublishError):
            self.bus.publish(Error(cmd.code, cmd.reason, cmd.ref_type, cmd.ref_seq))
        elif isinstance(cmd, SendPacket):
            assert self.tox is not None
            self._busy()
            try:
                self.tox.friend_send_lossless_packet(cmd.friend, cmd.data)
            except toxcore.ToxError as e:
                self.execute(self.core.send_failed(e.code, cmd.ref_seq))
        elif isinstance(cmd, StartTox):
            self._start_tox()
        elif isinstance(cmd, StopTox):
            self._stop_tox()
            self.execute(self.core.tox_stopped(time.time()))
        elif isinstance(cmd, Bootstrap):
            task = asyncio.get_running_loop().create_task(
                self._bootstrap(cmd.nodes, self._generation)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif isinstance(cmd, AddFriend):
            assert self.tox is not None
            try:
                self.core.friend_added(self.tox.friend_add_norequest(cmd.public_key))
            except toxcore.ToxError as e:
                self.execute(self.core.tox_failed(time.time(), f"cannot add the peer: {e}"))
        elif isinstance(cmd, DeleteFriend):
            assert self.tox is not None
            try:
                self.tox.friend_delete(cmd.friend)
            except toxcore.ToxError as e:
                self.log.error("friend.delete_failed", friend=cmd.friend, error=str(e))
        elif isinstance(cmd, Save):
            self._save()

    # -- Tox life cycle -------------------------------------------------------------------------

    def _start_tox(self) -> None:
        cfg = self.tox_cfg
        try:
            savedata.ensure_state_dir(self.state_dir)
            data = savedata.load(self.save_path)
            self.tox = self._tox_factory(
                toxcore.ToxOptions(
                    udp=cfg.udp,
                    ipv6=cfg.ipv6,
                    local_discovery=cfg.local_discovery,
                    start_port=cfg.start_port,
                    end_port=cfg.end_port,
                    savedata=data or b"",
                )
            )
        except (toxcore.ToxError, OSError) as e:
            self.log.error("tox.start_failed", error=str(e), savedata=str(self.save_path))
            self.execute(self.core.tox_failed(time.time(), f"cannot start Tox: {e}"))
            return
        self._generation += 1
        address = self.tox.address()
        self.log.info("tox.started", address=address.hex().upper(), new_identity=data is None)
        if data is None:
            self._save()
        self.execute(self.core.tox_started(time.time(), address, self.tox.friends()))

    def _stop_tox(self) -> None:
        if self.tox is None:
            return
        self._save()
        self.tox.kill()  # friends see us offline at once (design 4.1)
        self.tox = None
        self.log.info("tox.stopped")

    def _save(self) -> None:
        if self.tox is None:
            return
        try:
            savedata.write_atomic(self.save_path, self.tox.savedata())
        except OSError as e:
            self.log.error("savedata.write_failed", path=str(self.save_path), error=str(e))

    async def _bootstrap(self, nodes: tuple[ToxNode, ...], generation: int) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_UNSPEC if self.tox_cfg.ipv6 else socket.AF_INET
        for node in nodes:
            try:
                infos = await loop.getaddrinfo(node.host, node.port, family=family)
                key = bytes.fromhex(node.public_key)
            except (OSError, ValueError) as e:
                self.log.warning("tox.bootstrap_node_skipped", host=node.host, error=str(e))
                continue
            host = str(infos[0][4][0])
            if self.tox is None or generation != self._generation:
                return
            try:
                self.tox.bootstrap(host, node.port, key)
                if node.tcp_port:
                    self.tox.add_tcp_relay(host, node.tcp_port, key)
            except (toxcore.ToxError, ValueError) as e:
                self.log.warning("tox.bootstrap_failed", host=node.host, error=str(e))


async def serve(ctx: ServiceContext) -> None:
    try:
        savedata.load(savedata.path_in(ctx.config.paths.state_dir))
    except OSError as e:
        # Refuse to start with an unsafe (readable by others, not ours) or unreadable
        # identity: say why, then exit 2 before supervisord's startsecs so the stage ends
        # FATAL (the same path as guardd's and otrd's refusals).
        ctx.log.error("signal.cannot_start", reason=str(e))
        state = SignalState(SignalStateKind.ERROR, since=time.time(), reason=str(e))
        await refuse(ctx, state, str(e))
    await SignalRunner(ctx).run()
