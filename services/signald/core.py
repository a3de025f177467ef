"""signald's core: Tox signaling with exactly one peer, as a pure state machine.

Theory of operation. The runner feeds events in (Tox came up, connection changes, packets,
friend requests, bus requests, the clock) and executes the commands that come out (start/stop
Tox, bootstrap, add/delete a friend, save, send a packet, publish). No I/O happens here.

- **State** (``SignalStateKind``) is derived, never set directly: Tox not running -> OFFLINE
  (ERROR if it cannot run); running with no connection -> BOOTSTRAPPING; connected to the DHT ->
  ONLINE; the peer connected (over TCP or UDP, whatever our own status says) -> PEER_ONLINE.
  ``_set_state()`` logs ``old -> new`` and publishes; ``since``/``peer_since`` are the times of the
  last change of the state and of the peer's transport.
- **Policy**: Tox runs while ``want_online``, which is the AND of two level-triggered wishes:
  punchd's last ``signal.policy`` (honoured while punchd's endpoint is alive, i.e. sent anything
  within ``STALE_AFTER`` s), and, under ``policy.mode = on-demand`` only, "guardd's last
  ``guard.state`` is not UP" (also forgotten after ``STALE_AFTER`` s of silence, so a dead guardd
  never keeps us offline).
- **Only the paired peer exists**: when Tox starts, every friend but the peer's public key is
  deleted and the peer is added without a request (both sides do the same). Friend requests are
  never accepted; messages and packets from anyone else, text messages and malformed packets are
  dropped, each counted on ``signal.state``.
- **Payloads** travel as lossless custom packets (reliable, ordered while connected):
  ``[PACKET_ID] + payload``, so a payload is at most ``MAX_PAYLOAD`` = 1372 bytes; a larger one is
  refused with an ``Error`` (``payload_too_large``), never truncated or split (otrd fragments to
  this size). Sending while the peer is not connected is refused (``peer_offline``): the layers
  above retry.
- **Bootstrap backoff**: on start, and whenever our own connection drops to none, bootstrap at
  once, then again after 10, 20, 40, 60, 60 ... s (+-20% jitter) until connected -- and, with a
  peer configured, until the peer is connected: toxcore's own status can say "connected" for
  minutes after every node went away (seen on loopback), so it alone is not trusted. The peer
  going away restarts the schedule at 10 s.
- **Tunnel down, Tox still "connected" over UDP** (issue 9): the tunnel and Tox's direct UDP
  connection to the peer go through the same NATs, so whatever killed the one (a NAT
  rebinding) usually killed the other too, and toxcore only notices after tens of seconds;
  meanwhile the ICE exchange is lost in the dead connection. So when guardd goes from UP to
  DOWN while the peer is connected over UDP, Tox is restarted (stopped cleanly, so the peer
  drops us at once, and started again: the peer is found again in 7-10 s, design 4.1); at most
  once per ``REFRESH_MIN_INTERVAL`` s. (Deleting and re-adding the friend was tried first: the
  re-added friend came back "connected" at once over the same dead UDP path.)
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from punchguard.config import ToxNode
from punchguard.messages import GuardStateKind, SignalState, SignalStateKind, Transport

PACKET_ID = 160  # first byte of our lossless custom packets (toxcore allows 160..191)
MAX_PAYLOAD = 1372  # toxcore's TOX_MAX_CUSTOM_PACKET_SIZE (1373) minus the id byte
ADDRESS_HEX = 76  # a Tox address: 32-byte public key, 4-byte nospam, 2-byte checksum
STALE_AFTER = 5.0  # seconds of silence after which a producer's wish is forgotten
BACKOFF_FIRST = 10.0  # toxcore needs 7-8 s to connect (design 4.1): do not retry sooner
BACKOFF_MAX = 60.0
BACKOFF_JITTER = 0.2
RETRY_FAILED = 30.0  # seconds before starting Tox again after it failed (port busy, bad save)
REFRESH_MIN_INTERVAL = 10.0  # s: Tox is restarted for a dead tunnel at most this often


class PeerAddressError(ValueError):
    """The configured peer Tox address is not a valid address."""


def parse_address(text: str) -> bytes:
    """A 76-hex-digit Tox address as 38 bytes, its checksum verified; else PeerAddressError."""
    text = text.strip()
    if len(text) != ADDRESS_HEX:
        raise PeerAddressError(f"expected {ADDRESS_HEX} hex digits, got {len(text)} characters")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise PeerAddressError("not hexadecimal") from None
    if address_checksum(raw[:36]) != raw[36:]:
        raise PeerAddressError("bad checksum (a typo in the address?)")
    return raw


def address_checksum(key_and_nospam: bytes) -> bytes:
    """Tox's address checksum: the XOR of the 2-byte chunks of public key + nospam."""
    check = bytearray(2)
    for i, b in enumerate(key_and_nospam):
        check[i % 2] ^= b
    return bytes(check)


class Mode(enum.Enum):
    ON_DEMAND = "on-demand"
    ALWAYS = "always"


# -- commands (out) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StartTox:
    pass


@dataclass(frozen=True)
class StopTox:
    pass


@dataclass(frozen=True)
class Bootstrap:
    nodes: tuple[ToxNode, ...]


@dataclass(frozen=True)
class AddFriend:
    public_key: bytes  # the runner reports the new friend number with ``friend_added``


@dataclass(frozen=True)
class DeleteFriend:
    friend: int


@dataclass(frozen=True)
class Save:
    pass


@dataclass(frozen=True)
class SendPacket:
    friend: int
    data: bytes
    ref_seq: int  # the signal.send's seq, for an Error if sending fails


@dataclass(frozen=True)
class PublishState:
    state: SignalState


@dataclass(frozen=True)
class PublishRecv:
    payload: bytes


@dataclass(frozen=True)
class PublishError:
    code: str
    reason: str
    ref_type: str = ""
    ref_seq: int = 0


Command = (
    StartTox | StopTox | Bootstrap | AddFriend | DeleteFriend | Save | SendPacket | PublishState
    | PublishRecv | PublishError
)  # fmt: skip


@dataclass
class _Wish:
    value: bool | None = None
    seen: float = 0.0  # when its producer last spoke


class SignalCore:
    def __init__(
        self,
        *,
        peer_address: str,
        nodes: tuple[ToxNode, ...],
        mode: str,
        log: Any,
        jitter: Callable[[], float] = lambda: 0.5,
    ) -> None:
        self.log = log
        self.nodes = nodes
        self.mode = Mode(mode)
        self._jitter = jitter  # a random number in [0, 1)
        self.peer_key: bytes | None = None
        self.config_error = ""
        if peer_address:
            try:
                self.peer_key = parse_address(peer_address)[:32]
            except PeerAddressError as e:
                self.config_error = f"bad [peer] tox_address: {e}"
        self.running = False
        self.starting = False
        self.fatal = ""
        self.retry_at = 0.0  # when to try again after a failure
        self.address = ""
        self.peer_friend: int | None = None
        self.self_conn = Transport.NONE
        self.peer_conn = Transport.NONE
        self.punchd = _Wish()
        self.guard_up = _Wish()
        self.guard_kind: GuardStateKind | None = None
        self.refreshed_at: float | None = None  # when Tox was last restarted for a dead tunnel
        self.want_online = True
        self.next_bootstrap: float | None = None
        self.backoff = BACKOFF_FIRST
        self.counters = {"requests": 0, "messages": 0}
        self._state = SignalState(
            SignalStateKind.OFFLINE,
            peer_public_key=self.peer_key.hex().upper() if self.peer_key else "",
            max_payload=MAX_PAYLOAD,
        )

    @property
    def state(self) -> SignalState:
        return self._state

    # -- life cycle ---------------------------------------------------------------------------

    def start(self, now: float) -> list[Command]:
        """The first event: publish the initial state and start Tox if we may."""
        self.want_online = self._compute_want(now)
        self._state = replace(self._state, since=now)
        return [*self._publish(now, force=True), *self._converge(now)]

    def tick(self, now: float) -> list[Command]:
        """The clock: stale wishes, bootstrap backoff."""
        cmds = self._update_want(now)
        if self.fatal and now >= self.retry_at:
            self.log.info("tox.retry", after=self.fatal)
            self.fatal = ""
            cmds += self._converge(now)
        if self.running and self.next_bootstrap is not None and now >= self.next_bootstrap:
            self.log.info("tox.rebootstrap", backoff=self.backoff)
            cmds.append(Bootstrap(self.nodes))
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)
            self.next_bootstrap = now + self._spread(self.backoff)
        return cmds

    def tox_started(self, now: float, address: bytes, friends: dict[int, bytes]) -> list[Command]:
        """Tox is up (from savedata or a new identity): reconcile the friend list."""
        self.starting = False
        self.running = True
        self.address = address.hex().upper()
        self.self_conn = self.peer_conn = Transport.NONE
        self.peer_friend = None
        cmds: list[Command] = [Bootstrap(self.nodes)]
        self._restart_backoff(now)
        changed = False
        for friend, key in sorted(friends.items()):
            if key == self.peer_key:
                self.peer_friend = friend
            else:
                self.log.warning("friend.removed_stranger", friend=friend, public_key=key.hex())
                cmds.append(DeleteFriend(friend))
                changed = True
        if self.peer_key is not None and self.peer_friend is None:
            cmds.append(AddFriend(self.peer_key))
            changed = True
        if changed:
            cmds.append(Save())
        return [*cmds, *self._publish(now)]

    def friend_added(self, friend: int) -> None:
        self.peer_friend = friend

    def tox_stopped(self, now: float) -> list[Command]:
        self.running = self.starting = False
        self.self_conn = self.peer_conn = Transport.NONE
        self.peer_friend = None
        self.next_bootstrap = None
        return self._publish(now)

    def tox_failed(self, now: float, reason: str) -> list[Command]:
        """Tox cannot run (bad savedata, no port, own key as peer): ERROR, retry later."""
        self.fatal = reason
        self.retry_at = now + RETRY_FAILED
        cmds: list[Command] = [StopTox()] if self.running else []
        return [*cmds, *self.tox_stopped(now)]

    # -- Tox events ---------------------------------------------------------------------------

    def self_connection(self, now: float, conn: Transport) -> list[Command]:
        if conn == self.self_conn:
            return []
        self.log.info("tox.self_connection", old=self.self_conn.name, new=conn.name)
        was = self.self_conn
        self.self_conn = conn
        if conn == Transport.NONE:
            self._restart_backoff(now)
            return [Bootstrap(self.nodes), *self._publish(now)]
        if was == Transport.NONE and not self._waiting_for_peer():
            self.next_bootstrap = None
        return self._publish(now)

    def friend_connection(self, now: float, friend: int, conn: Transport) -> list[Command]:
        if friend != self.peer_friend:
            return []
        if conn == self.peer_conn:
            return []
        self.log.info("peer.connection", old=self.peer_conn.name, new=conn.name)
        self.peer_conn = conn
        if conn != Transport.NONE:
            self.next_bootstrap = None
        else:
            self._restart_backoff(now)
        self._state = replace(self._state, peer_since=now)
        return self._publish(now, force=True)

    def friend_request(self, now: float, public_key: bytes) -> list[Command]:
        self.counters["requests"] += 1
        self.log.warning(
            "friend_request.ignored", public_key=public_key.hex(), total=self.counters["requests"]
        )
        return self._publish(now)

    def friend_message(self, now: float, friend: int, size: int) -> list[Command]:
        return self._ignore(now, "text_message", friend, size)

    def lossless_packet(self, now: float, friend: int, data: bytes) -> list[Command]:
        if friend != self.peer_friend:
            return self._ignore(now, "stranger_packet", friend, len(data))
        if not data or data[0] != PACKET_ID:
            return self._ignore(now, "bad_packet_id", friend, len(data))
        return [PublishRecv(data[1:])]

    def _ignore(self, now: float, why: str, friend: int, size: int) -> list[Command]:
        self.counters["messages"] += 1
        self.log.warning(
            "message.ignored", why=why, friend=friend, size=size, total=self.counters["messages"]
        )
        return self._publish(now)

    # -- bus events ---------------------------------------------------------------------------

    def send(self, payload: bytes, seq: int) -> list[Command]:
        """A ``signal.send`` from otrd."""

        def refuse(code: str, reason: str) -> list[Command]:
            self.log.info("send.refused", code=code, size=len(payload))
            return [PublishError(code, reason, "signal.send", seq)]

        if len(payload) > MAX_PAYLOAD:
            return refuse(
                "payload_too_large", f"{len(payload)} bytes; signald carries at most {MAX_PAYLOAD}"
            )
        if self.peer_key is None:
            return refuse("no_peer", "no peer configured ([peer] tox_address)")
        if not self.running:
            return refuse("offline", "Tox is offline")
        if self.peer_friend is None or self.peer_conn == Transport.NONE:
            return refuse("peer_offline", "the peer is not connected over Tox")
        return [SendPacket(self.peer_friend, bytes([PACKET_ID]) + payload, seq)]

    def send_failed(self, code: str, seq: int) -> list[Command]:
        return [PublishError(f"tox_{code.lower()}", f"sending failed: {code}", "signal.send", seq)]

    def policy(self, now: float, online: bool, reason: str) -> list[Command]:
        """A ``signal.policy`` from punchd."""
        if online != self.punchd.value:
            self.log.info("policy.punchd", online=online, reason=reason)
        self.punchd = _Wish(online, now)
        return self._update_want(now)

    def punchd_alive(self, now: float) -> list[Command]:
        """Anything at all arrived from punchd's endpoint."""
        self.punchd.seen = now
        return []

    def guard_state(self, now: float, kind: GuardStateKind) -> list[Command]:
        was, self.guard_kind = self.guard_kind, kind
        self.guard_up = _Wish(kind == GuardStateKind.UP, now)
        cmds: list[Command] = []
        if was == GuardStateKind.UP and kind == GuardStateKind.DOWN:
            cmds += self._refresh_peer(now)
        return [*cmds, *self._update_want(now)]

    def _refresh_peer(self, now: float) -> list[Command]:
        """Restart Tox (see the top: tunnel down, Tox still "connected" over UDP)."""
        if not self.running or self.peer_friend is None or self.peer_key is None:
            return []
        if self.peer_conn != Transport.UDP:
            return []
        if self.refreshed_at is not None and now - self.refreshed_at < REFRESH_MIN_INTERVAL:
            return []
        self.refreshed_at = now
        self.log.info("peer.refresh", reason="tunnel went down while Tox said UDP: restart Tox")
        return [StopTox(), StartTox()]  # the runner carries out both at once, in this order

    # -- internals ----------------------------------------------------------------------------

    def _waiting_for_peer(self) -> bool:
        return self.peer_key is not None and self.peer_conn == Transport.NONE

    def _restart_backoff(self, now: float) -> None:
        self.backoff = BACKOFF_FIRST
        self.next_bootstrap = now + self._spread(self.backoff)

    def _spread(self, delay: float) -> float:
        return delay * (1 - BACKOFF_JITTER + 2 * BACKOFF_JITTER * self._jitter())

    def _compute_want(self, now: float) -> bool:
        punchd_says = self.punchd.value if now - self.punchd.seen <= STALE_AFTER else None
        guard_up = self.guard_up.value if now - self.guard_up.seen <= STALE_AFTER else None
        if punchd_says is not None:
            # punchd's explicit wish wins: offline, or online while its path is relayed (it
            # retries a direct punch over signaling: docs/turn.md)
            return punchd_says
        return not (self.mode == Mode.ON_DEMAND and guard_up is True)

    def _update_want(self, now: float) -> list[Command]:
        want = self._compute_want(now)
        if want == self.want_online:
            return []
        self.log.info("policy.want_online", old=self.want_online, new=want)
        self.want_online = want
        # publish the wish first: stopping publishes OFFLINE after it, and must come last
        return [*self._publish(now), *self._converge(now)]

    def _converge(self, now: float) -> list[Command]:
        if self.config_error or self.fatal:
            return []
        if self.want_online and not self.running and not self.starting:
            self.starting = True
            return [StartTox()]
        if not self.want_online and (self.running or self.starting):
            self.starting = False
            return [StopTox()]
        return []

    def _derive(self) -> tuple[SignalStateKind, str]:
        if self.config_error:
            return SignalStateKind.ERROR, self.config_error
        if self.fatal:
            return SignalStateKind.ERROR, self.fatal
        if not self.running:
            return SignalStateKind.OFFLINE, "" if self.want_online else "policy: offline"
        no_peer = "" if self.peer_key else "no peer configured"
        if self.peer_conn != Transport.NONE:
            return SignalStateKind.PEER_ONLINE, ""
        if self.self_conn != Transport.NONE:
            return SignalStateKind.ONLINE, no_peer
        return SignalStateKind.BOOTSTRAPPING, no_peer

    def _publish(self, now: float, force: bool = False) -> list[Command]:
        kind, reason = self._derive()
        old = self._state
        new = replace(
            old,
            state=kind,
            self_conn=self.self_conn if self.running else Transport.NONE,
            peer_conn=self.peer_conn,
            address=self.address,
            want_online=self.want_online,
            reason=reason,
            ignored_requests=self.counters["requests"],
            ignored_messages=self.counters["messages"],
        )
        if kind != old.state:
            self.log.info("state", old=old.state.name, new=kind.name, reason=reason)
            new = replace(new, since=now)
        if new == old and not force:
            return []
        self._state = new
        return [PublishState(new)]
