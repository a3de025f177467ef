"""The TURN forwarder: WireGuard's loopback endpoint on the relayed side of a path.

Theory of operation
-------------------
A relay candidate cannot be given to WireGuard (design 4.3): its address is on the TURN server,
and whatever the peer sends there reaches us only wrapped in TURN on aioice's TURN socket. So
when ICE nominates a pair whose *local* candidate is a relay, punchd keeps that allocation
(relay_adapter.detach_relay) and runs this forwarder, unprivileged, inside punchd::

    wireguard-go 0.0.0.0:P  <--UDP-->  127.0.0.1:F (forwarder)  <--TURN-->  server  <-->  peer

The published ``Path`` then says ``local_port = P`` (a free port punchd picked for WireGuard's
listen port) and ``endpoint = 127.0.0.1:F`` (this forwarder), ``relayed = true``; guardd accepts
a loopback endpoint only on a relayed path. The peer, if it is not relayed itself, talks plain
WireGuard to our relayed address (its path's endpoint); if it is relayed too, its own forwarder
sends to our relayed address through its own allocation.

* Only datagrams from 127.0.0.1:P (WireGuard's socket) are forwarded out; anything else on the
  loopback socket is dropped and counted (another local process cannot inject into the tunnel's
  path this way: WireGuard would reject it anyway, but it never reaches the peer either).
* From the allocation, STUN (the peer's last ICE checks) is dropped; datagrams from another
  *port* of the peer's IP are accepted and the forwarder follows the peer there (the peer's NAT
  mapping changed: WireGuard roams the same way; the TURN permission is per IP, so only the
  peer's IP can reach us at all); other IPs never get here.
* Every ``refresh_every`` seconds the channel to the peer is bound again, which refreshes the
  channel (10 min) and the permission (5 min, RFC 8656); aioice refreshes the allocation itself.
* ICE consent checks (RFC 7675) are not run on a handed-off path: aioice's are cancelled with its
  Connection at the hand-off, as on a direct path. Liveness is guardd's (no bytes for 15 s =
  DOWN, then punchd punches again).
* If the allocation is lost (refresh failed, the server forgot us after a NAT rebinding) the
  forwarder says so (``lost``) and drops; guardd sees the tunnel go DOWN and punchd re-punches.

Throughput is bounded by Python: one recvfrom + one sendto per datagram each way (design 4.3:
about 96 Mbit/s; docs/turn.md has this machine's numbers).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from typing import Any

from punchd.relay_adapter import Address, TurnAllocation, detach_relay, is_stun

LOOPBACK = "127.0.0.1"
REFRESH_EVERY = 120.0  # s between channel/permission refreshes (permission lifetime: 300 s)


def pick_port() -> int:
    """A UDP port free on every address right now, for WireGuard's listen port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        port: int = s.getsockname()[1]
        return port


class _Loopback(asyncio.DatagramProtocol):
    def __init__(self, fwd: Forwarder) -> None:
        self.fwd = fwd

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.fwd.from_wireguard(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        self.fwd.counters["loopback_errors"] += 1  # ICMP unreachable: WireGuard not bound yet


class Forwarder:
    """One relayed path: WireGuard's loopback endpoint <-> one TURN allocation."""

    def __init__(self, wg_port: int, *, refresh_every: float = REFRESH_EVERY) -> None:
        self.wg_port = wg_port
        self.refresh_every = refresh_every
        self.port = 0  # our loopback port (WireGuard's endpoint), after open()
        self.allocation: TurnAllocation | None = None
        self.peer: Address | None = None
        self.lost = False
        self.counters: Counter[str] = Counter()
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> int:
        """Bind the loopback socket (before the path is published); returns its port."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Loopback(self), local_addr=(LOOPBACK, 0)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        return self.port

    def attach(self, allocation: TurnAllocation, peer: Address) -> None:
        """Start forwarding between WireGuard and ``peer`` through ``allocation``."""
        self.allocation, self.peer = allocation, peer
        allocation.set_receiver(self.from_relay, self._on_lost)
        self._task = asyncio.get_running_loop().create_task(self._refresher())

    @property
    def via(self) -> str:
        """The TURN server, "host:port" (for status)."""
        a = self.allocation
        return f"{a.server[0]}:{a.server[1]}" if a is not None else ""

    # -- data ---------------------------------------------------------------------------------

    def from_wireguard(self, data: bytes, addr: Address) -> None:
        if addr != (LOOPBACK, self.wg_port):
            self.counters["drop_not_wireguard"] += 1
            return
        if self.allocation is None or self.peer is None:
            self.counters["drop_not_attached"] += 1
            return
        if self.allocation.send(data, self.peer):
            self.counters["out"] += 1
        else:
            self.counters["drop_out"] += 1

    def from_relay(self, data: bytes, addr: Address) -> None:
        if is_stun(data):
            self.counters["drop_stun"] += 1
            return
        if not data:
            return  # our own empty channel-binding datagram's echo, or nothing
        peer = self.peer
        if peer is None or addr[0] != peer[0]:
            self.counters["drop_wrong_peer"] += 1
            return
        if addr != peer:
            self.peer = addr  # the peer's NAT mapping moved: follow it (as WireGuard roams)
            self.counters["peer_moved"] += 1
        if self._transport is not None:
            self._transport.sendto(data, (LOOPBACK, self.wg_port))
            self.counters["in"] += 1

    def _on_lost(self) -> None:
        self.lost = True

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_every)
            if self.allocation is None or self.peer is None or not self.allocation.alive:
                self.lost = True
                return
            try:
                await self.allocation.bind(self.peer)
                self.counters["refreshes"] += 1
            except Exception:  # a TransactionError/ConnectionError: try again next round
                self.counters["refresh_errors"] += 1

    async def close(self) -> None:
        """Stop forwarding, free the allocation and the loopback socket. Idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self.allocation is not None:
            await self.allocation.close()
            self.allocation = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None


GRACE = 10.0  # s an old forwarder keeps running after a new path replaced it (both guardds move)


class Relays:
    """punchd's forwarders: those prepared for a session whose pair is relayed on our side, and
    the one serving the current path. The runner calls these around the core's commands."""

    def __init__(self, log: Any, *, grace: float = GRACE) -> None:
        self.log = log
        self.grace = grace
        self.prepared: dict[int, tuple[Forwarder, Address]] = {}
        self.current: Forwarder | None = None
        self._lost_reported: Forwarder | None = None
        self._orphan_reported = ""
        self._retiring: set[asyncio.Task[None]] = set()
        self._old: set[Forwarder] = set()

    async def prepare(self, sid: int, peer: Address) -> Forwarder:
        """A forwarder (loopback socket bound, not attached) for session ``sid``'s relay pair."""
        old = self.prepared.pop(sid, None)
        if old is not None:
            await old[0].close()
        fwd = Forwarder(pick_port())
        await fwd.open()
        self.prepared[sid] = (fwd, peer)
        return fwd

    def adopt(self, sid: int, conn: Any) -> None:
        """Session ``sid`` became the path: take its TURN allocation (if our side is relayed)
        from aioice before its Connection is closed, and retire the previous forwarder."""
        entry = self.prepared.pop(sid, None)
        new: Forwarder | None = None
        if entry is not None and conn is None:
            self._retire(entry[0], 0.0)
        elif entry is not None:
            fwd, peer = entry
            allocation = detach_relay(conn)
            if allocation is None:
                self.log.error("punch.relay_detach_failed", session=sid)
                self._retire(fwd, 0.0)
            else:
                fwd.attach(allocation, peer)
                new = fwd
                self.log.info(
                    "punch.relay_forwarder", loopback=fwd.port, wg_port=fwd.wg_port,
                    relayed=f"{allocation.relayed[0]}:{allocation.relayed[1]}",
                    server=fwd.via, peer=f"{peer[0]}:{peer[1]}",
                )  # fmt: skip
        if self.current is not None:
            self._retire(self.current, self.grace)
        self.current = new

    async def discard(self, sid: int) -> None:
        entry = self.prepared.pop(sid, None)
        if entry is not None:
            await entry[0].close()

    def lost(self) -> bool:
        """True once when the current forwarder's allocation died."""
        cur = self.current
        if cur is not None and cur.lost and self._lost_reported is not cur:
            self._lost_reported = cur
            self.log.warning("punch.relay_lost", loopback=cur.port, **dict(cur.counters))
            return True
        return False

    def orphaned(self, endpoint: str) -> bool:
        """True once per endpoint when WireGuard points at a loopback forwarder we do not run
        (punchd was restarted and its forwarder died with it)."""
        host, _, port = endpoint.rpartition(":")
        if host != LOOPBACK or not port.isdigit():
            return False
        if self.current is not None and self.current.port == int(port):
            return False
        if any(f.port == int(port) for f, _ in self.prepared.values()):
            return False
        if any(f.port == int(port) for f in self._old):
            return False  # retired, still running its grace period: a new path is on its way
        if self._orphan_reported == endpoint:
            return False
        self._orphan_reported = endpoint
        self.log.warning("punch.relay_orphaned", endpoint=endpoint)
        return True

    def _retire(self, fwd: Forwarder, delay: float) -> None:
        async def later() -> None:
            await asyncio.sleep(delay)
            self.log.info("punch.relay_closed", loopback=fwd.port, **dict(fwd.counters))
            self._old.discard(fwd)
            await fwd.close()

        self._old.add(fwd)
        task = asyncio.get_running_loop().create_task(later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        for old in list(self._old):
            await old.close()
        self._old.clear()
        for fwd, _ in list(self.prepared.values()):
            await fwd.close()
        self.prepared.clear()
        if self.current is not None:
            await self.current.close()
            self.current = None
