"""The bus: one ZeroMQ PUB socket per service, SUB sockets to the services it listens to.

No broker (design 2). Service ``x`` binds ``ipc://$RUNTIME_DIR/x.pub``; a consumer opens one SUB
socket per producer it follows, so every incoming message is known to come from that producer's
endpoint (guardd takes paths from punchd's endpoint only). ZeroMQ reconnects by itself when a
producer restarts, so a restarted stage is followed again within one heartbeat.

Level-triggered: ``set_state()`` publishes a service's state now and the heartbeat republishes
it every ``heartbeat`` seconds, with the subscriber counters (``bus.stats``) when they changed.
Bad frames are dropped, counted by reason and logged one line each; a reader never dies of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import zmq
import zmq.asyncio

from punchguard.messages import BusStats, DecodeError, Envelope, Message, decode, encode

SOCKET_SUFFIX = ".pub"
#: ZeroMQ's own cap: a larger frame closes the connection (a memory guard, not the limit we
#: count; that is ``messages.MAX_FRAME_BYTES``).
ZMQ_MAX_MSG = 1024 * 1024
HWM = 10_000
STATS_EVERY = 10  # heartbeats: republish unchanged stats this often
#: The runtime directory: group members create their sockets; the sticky bit stops them from
#: removing or replacing each other's (zmq unlinks a stale socket before binding).
RUNTIME_DIR_MODE = 0o1770

DropHandler = Callable[[str, str, str], None]


@dataclass(frozen=True)
class Incoming:
    """A decoded message and the producer endpoint it arrived on."""

    endpoint: str  # service name of the endpoint (trustworthy: we chose what to connect to)
    env: Envelope
    msg: Message


def endpoint_path(runtime_dir: Path, service: str) -> Path:
    return runtime_dir / f"{service}{SOCKET_SUFFIX}"


def endpoint_url(runtime_dir: Path, service: str) -> str:
    return f"ipc://{endpoint_path(runtime_dir, service)}"


def group_id(group: str | None) -> int | None:
    if not group:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def ensure_runtime_dir(path: Path, group: str | None) -> None:
    """Create the runtime directory (1770, group ``group``) if we can; leave an existing one."""
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, RUNTIME_DIR_MODE)
    gid = group_id(group)
    if gid is not None:
        with contextlib.suppress(PermissionError):
            os.chown(path, -1, gid)


class Bus:
    """A service's connection to the bus. Use as ``async with Bus(...) as bus:``."""

    def __init__(
        self,
        service: str | None,
        runtime_dir: Path,
        *,
        heartbeat: float = 1.0,
        group: str | None = "punchguard",
        on_drop: DropHandler | None = None,
        queue_size: int = 4096,
        ctx: zmq.asyncio.Context | None = None,
    ) -> None:
        self.service = service  # None: subscribe only (the tap)
        self.runtime_dir = runtime_dir
        self.heartbeat = heartbeat
        self.group = group
        self.log = structlog.get_logger().bind(bus=service or "-")
        self._on_drop = on_drop
        self._ctx = ctx or zmq.asyncio.Context()
        self._own_ctx = ctx is None
        self._pub: zmq.Socket[bytes] | None = None
        self._subs: dict[str, zmq.asyncio.Socket] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._queue: asyncio.Queue[Incoming] = asyncio.Queue(maxsize=queue_size)
        self._states: dict[str, Message] = {}
        self._seq = 0
        self.received = 0
        self.drops: Counter[str] = Counter()
        self._last_stats: tuple[int, int] | None = None
        self._beats = 0

    # -- life cycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Bus:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        if self.service is None:
            return
        ensure_runtime_dir(self.runtime_dir, self.group)
        # A plain (blocking-API) socket on the same context: PUB never blocks, so publishing
        # is a synchronous call that services can make from anywhere.
        sync_ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.shadow(self._ctx.underlying)
        pub = sync_ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, HWM)
        path = endpoint_path(self.runtime_dir, self.service)
        pub.bind(f"ipc://{path}")
        self._secure_socket_file(path)
        self._pub = pub
        self.log.debug("bus.bound", endpoint=str(path))

    def _secure_socket_file(self, path: Path) -> None:
        # Connecting to a UNIX socket needs write permission on it (design 2): 0660, our group.
        os.chmod(path, 0o660)
        gid = group_id(self.group)
        if gid is not None:
            try:
                os.chown(path, -1, gid)
            except PermissionError:
                self.log.warning("bus.chgrp_failed", endpoint=str(path), group=self.group)

    async def close(self) -> None:
        readers = list(self._readers.values())
        for task in readers:
            task.cancel()
        for task in readers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._readers.clear()
        for sock in self._subs.values():
            sock.close(linger=0)
        self._subs.clear()
        if self._pub is not None:
            self._pub.close(linger=0)
            self._pub = None
        if self._own_ctx:
            self._ctx.term()

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, msg: Message) -> None:
        """Publish ``msg`` now (never blocks; a subscriber past its high-water mark loses it)."""
        if self._pub is None or self.service is None:
            raise RuntimeError("this bus has no publisher (service=None or not started)")
        self._seq += 1
        self._pub.send_multipart(encode(msg, src=self.service, seq=self._seq))

    def set_state(self, msg: Message) -> None:
        """Record ``msg`` as the latest of its type, publish it now and on every heartbeat."""
        self._states[msg.TYPE] = msg
        self.publish(msg)

    def clear_state(self, msg_type: str) -> None:
        """Stop republishing the state of ``msg_type`` (consumers let it go stale)."""
        self._states.pop(msg_type, None)

    def state(self, msg_type: str) -> Message | None:
        return self._states.get(msg_type)

    async def run_heartbeat(self) -> None:
        """Republish every recorded state each ``heartbeat`` seconds; run it as a task."""
        while True:
            await asyncio.sleep(self.heartbeat)
            self.beat()

    def beat(self) -> None:
        for msg in list(self._states.values()):
            self.publish(msg)
        self._beats += 1
        now = (self.received, sum(self.drops.values()))
        if self._subs and (now != self._last_stats or self._beats % STATS_EVERY == 0):
            self._last_stats = now
            self.publish(self.stats())

    def stats(self) -> BusStats:
        return BusStats(
            received=self.received, dropped=sum(self.drops.values()), drops=dict(self.drops)
        )

    # -- subscribing --------------------------------------------------------------------------

    def subscribe(self, service: str, types: Iterable[str] = ()) -> None:
        """Follow ``service``'s endpoint: the given message types, or everything if none.

        Call it from inside the event loop. The endpoint need not exist yet.
        """
        sock = self._subs.get(service)
        if sock is None:
            sock = self._ctx.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, HWM)
            sock.setsockopt(zmq.MAXMSGSIZE, ZMQ_MAX_MSG)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            sock.connect(endpoint_url(self.runtime_dir, service))
            self._subs[service] = sock
            self._readers[service] = asyncio.get_running_loop().create_task(
                self._read(service, sock), name=f"bus-read-{service}"
            )
        prefixes = [f"{service}.{t}" for t in types] or [f"{service}."]
        for prefix in prefixes:
            sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())

    @property
    def subscriptions(self) -> list[str]:
        return list(self._subs)

    async def receive(self) -> Incoming:
        """The next decoded message from any followed endpoint."""
        return await self._queue.get()

    def receive_nowait(self) -> Incoming | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def _read(self, service: str, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames: list[Any] = await sock.recv_multipart()
            try:
                env, msg = decode(frames)
                if env.src != service:
                    raise DecodeError("src_mismatch", f"src {env.src!r} on {service}'s endpoint")
            except DecodeError as e:
                self._drop(service, e.reason, e.detail)
                continue
            self.received += 1
            # Backpressure: a full queue stops this reader; ZeroMQ then queues up to HWM and
            # the publisher drops beyond it (PUB semantics; level-triggered state tolerates it).
            await self._queue.put(Incoming(service, env, msg))

    def _drop(self, service: str, reason: str, detail: str) -> None:
        self.drops[reason] += 1
        if self._on_drop is not None:
            self._on_drop(service, reason, detail)
        else:
            self.log.warning(
                "bus.drop", endpoint=service, reason=reason, detail=detail[:200],
                dropped=sum(self.drops.values()),
            )  # fmt: skip
