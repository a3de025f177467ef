"""The aioice (0.13.0) TURN internals punchd's relay forwarder relies on (design 4.3).

When ICE nominates a pair whose local candidate is a ``relay``, WireGuard cannot use it: the
relayed address lives on the TURN server, and what arrives there reaches us only wrapped in TURN
(ChannelData or Data indications) on aioice's TURN client socket. So at the hand-off punchd keeps
that allocation instead of closing it, and a userspace forwarder (relay.py) moves datagrams
between a loopback socket (WireGuard's endpoint) and the allocation.

What we rely on, pinned by tests/unit/test_punchd_relay_adapter.py:

* ``Connection._nominated[1].protocol`` is the ``StunProtocol`` of the nominated pair; for a relay
  pair its ``transport`` is an ``aioice.turn.TurnTransport`` whose name-mangled
  ``_TurnTransport__inner_protocol`` is the ``TurnClientUdpProtocol`` (or TCP) owning the TURN
  socket. ``Connection.close()`` closes every protocol in ``Connection._protocols`` (deleting the
  allocation): removing ours from that list first keeps the allocation alive.
* The inner protocol hands each relayed datagram to ``inner.receiver.datagram_received(payload,
  peer)`` (ChannelData by channel number, Data indications only from an IP with a channel) and
  calls ``receiver.connection_lost`` when its socket closes (refresh failed, deleted).
* ``inner.peer_to_channel`` / ``channel_to_peer`` / ``channel_refresh_at`` are its channel maps,
  ``inner.channel_bind(number, peer)`` (a STUN transaction) binds or refreshes one, and
  ``inner._send(bytes)`` writes one TURN frame to the server (padding it on TCP).
* ``inner.refresh_task`` refreshes the *allocation* by itself (at 5/6 of its lifetime, 600 s
  asked); on failure it closes the socket. It does not refresh channels or permissions unless
  ``send_data`` is called after ``channel_refresh_time`` (500 s): but a permission lives only
  300 s (RFC 8656 9), and our fast path does not go through ``send_data``. So ``bind()`` below is
  called periodically by the forwarder (a ChannelBind refreshes the channel and the permission).
* ``inner.delete()`` refreshes with LIFETIME 0 (frees the allocation) and closes the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable
from typing import Any, cast

import aioice
import aioice.turn

Address = tuple[str, int]
STUN_MAGIC = b"\x21\x12\xa4\x42"  # bytes 4..8 of every RFC 5389+ STUN message


def is_stun(data: bytes) -> bool:
    """A STUN message (first two bits zero, the magic cookie): never a WireGuard datagram, whose
    first byte is its type (1..4) followed by three zero bytes."""
    return len(data) >= 20 and data[0] < 4 and data[4:8] == STUN_MAGIC


class _Receiver(asyncio.DatagramProtocol):
    """Stands in for aioice's StunProtocol as the TURN client's receiver."""

    def __init__(self, on_data: Callable[[bytes, Address], None], on_lost: Callable[[], None]):
        self.on_data = on_data
        self.on_lost = on_lost

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.on_data(data, (addr[0], addr[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost()

    def error_received(self, exc: Exception) -> None:
        pass  # a failed channel bind on a send: the next send binds again


class TurnAllocation:
    """A TURN allocation taken over from aioice (see the module docstring)."""

    def __init__(self, inner: Any, relayed: Address, server: Address) -> None:
        self._inner = inner
        self.relayed = relayed  # our relayed transport address, on the TURN server
        self.server = server  # the TURN server
        self._binding: asyncio.Task[None] | None = None

    def set_receiver(
        self, on_data: Callable[[bytes, Address], None], on_lost: Callable[[], None]
    ) -> None:
        self._inner.receiver = _Receiver(on_data, on_lost)

    @property
    def alive(self) -> bool:
        transport = getattr(self._inner, "transport", None)
        return transport is not None and not transport.is_closing()

    def channel(self, peer: Address) -> int | None:
        ch: int | None = self._inner.peer_to_channel.get(peer)
        return ch

    def send(self, data: bytes, peer: Address) -> bool:
        """One datagram to ``peer`` as ChannelData (4-byte header); False if it was dropped
        (allocation gone, or the channel to a new peer address is still being bound)."""
        if not self.alive:
            return False
        ch = self.channel(peer)
        if ch is None:
            if self._binding is None or self._binding.done():
                self._binding = asyncio.get_running_loop().create_task(self.bind(peer))
            return False
        self._inner._send(struct.pack("!HH", ch, len(data)) + data)
        return True

    async def bind(self, peer: Address) -> None:
        """Bind (or refresh) the channel to ``peer``; this refreshes its permission too."""
        inner = self._inner
        ch = inner.peer_to_channel.get(peer)
        if ch is None:
            # aioice's own send path picks a number and binds; the datagram is an empty
            # ChannelData frame, which the server relays as an empty UDP datagram (dropped
            # by WireGuard as too short).
            await inner.send_data(b"", peer)
            return
        await inner.channel_bind(ch, peer)
        inner.channel_refresh_at[ch] = time.time() + inner.channel_refresh_time

    async def close(self) -> None:
        """Delete the allocation (at most ~2 s) and close its socket. Idempotent."""
        if self._binding is not None:
            self._binding.cancel()
        with contextlib.suppress(Exception, asyncio.TimeoutError):
            await asyncio.wait_for(self._inner.delete(), 2.0)
        with contextlib.suppress(Exception):
            self._inner.transport.close()


def detach_relay(conn: aioice.Connection) -> TurnAllocation | None:
    """Take the nominated pair's TURN allocation away from ``conn`` (whose ``close()`` would
    delete it). None if the nominated local candidate is not a relay."""
    pair = conn._nominated.get(1)
    if pair is None or pair.local_candidate.type != "relay":
        return None
    protocol = pair.protocol
    outer = cast(aioice.turn.TurnTransport, protocol.transport)
    inner = outer._TurnTransport__inner_protocol  # type: ignore[attr-defined]  # name-mangled private
    if protocol in conn._protocols:
        conn._protocols.remove(protocol)
    local = pair.local_candidate
    return TurnAllocation(inner, (local.host, local.port), tuple(inner.server))
