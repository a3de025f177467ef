"""guardd's pure core: path validation, the desired device, and the tunnel's phase.

Theory of operation
-------------------
guardd owns one WireGuard interface with exactly one peer. Everything secret or
security-relevant (private key, tunnel addresses, the peer's public key and allowed IPs) comes
from root-owned config and the key file, never from the bus. The bus can only deliver a *path*
(``punch.path`` from punchd's endpoint): the local listen port, the peer's UDP endpoint and the
ICE role. ``validate_path`` checks it field by field; anything else is refused and counted.

The core is declarative (design 4.4, style 5): ``GuardCore.desired(now)`` is the whole wanted
device (``DeviceWant``), ``diff(want, have)`` (``device.py``) compares it with a ``DeviceSample``
read from the interface and returns only the difference (``DeviceChange``); an empty change means
"nothing to do", so a repeated path is a no-op. Fields the core has no opinion on (no path yet,
e.g. right after a restart that adopted a running interface) are ``None`` and left as they are,
so a new guardd never disturbs a tunnel that is already carrying traffic.

Staggered start (design 4.4): both sides initiating at once can livelock. The CONTROLLING side
turns on persistent keepalive ``INITIATE_DELAY`` after it has the path (turning it on makes
WireGuard send a keepalive, which starts the handshake); the short delay lets the peer's guardd,
which gets its path at about the same moment, bind its listen port first: an initiation that
arrives before that is lost and WireGuard only retries after 5 s (REKEY_TIMEOUT). The CONTROLLED
side sets the endpoint with keepalive off and waits; once it sees the handshake (bytes received
since the path was applied, within a live session) it turns keepalive on too, which keeps its
NAT mapping open.

Liveness, probes and warm restart (``liveness.py``, where the rules and their numbers are
explained): a path is DOWN after ``dead_after`` s without a received byte (15 s with keepalive 5),
or 5 s once the peer has been seen answering guardd's ICMP probes (``probe.py``). A path restored
after a restart (``restore()``, ``lastpath.py``) is initiated by both roles and is DOWN if no
handshake came within ``RESTORE_CHECK`` s; any path from punchd replaces it at once.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from guardd.device import DeviceSample, DeviceWant, Endpoint, IPAddress, format_endpoint
from guardd.liveness import (
    RESTORE_CHECK,
    RESTORE_CONTROLLED_DELAY,
    session_live,
    should_probe,
    silence_limit,
)
from punchguard.messages import GuardState, GuardStateKind, Message, Path, Role

PATH_ENDPOINT = "punchd"  # the only producer guardd takes anything from
INITIATE_DELAY = 0.25  # seconds the controlling side waits before initiating (see the top)


# --------------------------------------------------------------------------------------------
# path validation


@dataclass(frozen=True)
class ValidPath:
    """A path that passed every check, in typed form."""

    listen_port: int
    endpoint: Endpoint
    role: Role
    generation: int
    relayed: bool


class Refused(Exception):
    """A message guardd will not act on; ``code`` is the counter key."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


def _check_port(name: str, value: object) -> int:
    if type(value) is not int or not 1 <= value <= 65535:
        raise Refused("bad_port", f"{name}={value!r}")
    return value


def parse_endpoint_host(host: object, *, relayed: bool) -> IPAddress:
    """An IP literal fit to be a WireGuard endpoint, or ``Refused``.

    Refused: names (no DNS from guardd), scoped or IPv4-mapped IPv6 (one canonical form),
    unspecified, multicast, broadcast and reserved addresses, link-local. Loopback is accepted
    only for a relayed path: there the endpoint is punchd's local TURN forwarder (design 4.3);
    a direct path to this host's own loopback is nonsense and refused.
    """
    if not isinstance(host, str) or not host or len(host) > 45:
        raise Refused("bad_address", "endpoint_host is not an IP literal")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise Refused("bad_address", f"{host[:45]!r} is not an IP literal") from None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id is not None:
            raise Refused("bad_address", "scoped IPv6 address")
        if addr.ipv4_mapped is not None:
            raise Refused("bad_address", "IPv4-mapped IPv6 address")
    if addr.is_unspecified:
        raise Refused("bad_address", "unspecified address")
    if addr.is_multicast:
        raise Refused("bad_address", "multicast address")
    if isinstance(addr, ipaddress.IPv4Address) and addr == ipaddress.IPv4Address("255.255.255.255"):
        raise Refused("bad_address", "broadcast address")
    if addr.is_loopback:
        if not relayed:
            raise Refused("bad_address", "loopback endpoint on a direct path")
        return addr
    if addr.is_link_local:
        raise Refused("bad_address", "link-local address")
    if addr.is_reserved or (isinstance(addr, ipaddress.IPv4Address) and addr.packed[0] == 0):
        raise Refused("bad_address", "reserved address")
    return addr


def validate_path(endpoint: str, msg: Message) -> ValidPath:
    """``msg`` as a ``ValidPath`` if it is a good ``punch.path`` from punchd, else ``Refused``."""
    if endpoint != PATH_ENDPOINT:
        raise Refused("wrong_endpoint", endpoint[:32])
    if not isinstance(msg, Path):
        raise Refused("wrong_type", msg.TYPE)
    listen_port = _check_port("local_port", msg.local_port)
    port = _check_port("endpoint_port", msg.endpoint_port)
    if type(msg.relayed) is not bool:
        raise Refused("bad_field", "relayed")
    addr = parse_endpoint_host(msg.endpoint_host, relayed=msg.relayed)
    if not isinstance(msg.role, Role) or msg.role not in (Role.CONTROLLING, Role.CONTROLLED):
        raise Refused("bad_role", repr(msg.role))
    if type(msg.generation) is not int or msg.generation < 0:
        raise Refused("bad_field", "generation")
    return ValidPath(listen_port, (addr, port), msg.role, msg.generation, msg.relayed)


# --------------------------------------------------------------------------------------------
# the core: paths in, desired device and state out


class Phase(enum.Enum):
    NO_PATH = "no_path"
    HANDSHAKING = "handshaking"
    UP = "up"
    DOWN = "down"


_KIND = {
    Phase.NO_PATH: GuardStateKind.NO_PATH,
    Phase.HANDSHAKING: GuardStateKind.HANDSHAKING,
    Phase.UP: GuardStateKind.UP,
    Phase.DOWN: GuardStateKind.DOWN,
}


@dataclass(frozen=True)
class Identity:
    """What comes from root-owned config and the key file (never from the bus)."""

    interface: str
    backend: str
    private_key: str
    public_key: str
    peer_public_key: str
    allowed_ips: tuple[str, ...]
    keepalive: int


class GuardCore:
    """Events in (paths, samples, time), desired device and state out. No I/O."""

    def __init__(
        self, ident: Identity, on_transition: Callable[[Phase, Phase, str], None] | None = None
    ) -> None:
        self.ident = ident
        self.on_transition = on_transition
        self.path: ValidPath | None = None
        self.applied_at: float | None = None  # monotonic time the current path arrived
        self.rx_at_apply = 0
        self.handshake_seen = False  # since the current path (or at adoption)
        self.restored = False  # the current path came from last-path.json, not from punchd
        self.last_probe: float | None = None  # monotonic time of the last probe sent
        self.probe_replies = 0  # answers to probes since start: the peer does answer them
        self.ever_up = False  # since the current path
        self.last_rx = -1
        self.last_rx_change: float | None = None
        self.sample: DeviceSample | None = None
        self.phase = Phase.NO_PATH
        self.reason = "waiting for a path from punchd"
        self.since: float | None = None  # monotonic time of the last phase change
        self.refused: Counter[str] = Counter()
        self.last_refused = ""

    # -- events -------------------------------------------------------------------------------

    def on_message(self, endpoint: str, msg: Message, now: float) -> ValidPath:
        """Take a bus message; returns the accepted path or raises ``Refused`` (counted)."""
        try:
            path = validate_path(endpoint, msg)
        except Refused as e:
            self.refused[e.code] += 1
            self.last_refused = f"{e.code}: {e.detail}" if e.detail else e.code
            raise
        if self.path is not None and (path.endpoint, path.listen_port, path.role) == (
            self.path.endpoint,
            self.path.listen_port,
            self.path.role,
        ):
            # The same path again (level-triggered republication): nothing new to track.
            self.path = path
            return path
        if self.path is None and self.applied_at is not None and self._device_has(path):
            # After a restart: the adopted interface already runs this path; keep tracking it.
            self.path = path
            return path
        self.path = path
        self.applied_at = now
        self.rx_at_apply = self._peer_rx()
        self.handshake_seen = False
        self.ever_up = False
        self.last_rx_change = None
        self.restored = False
        if self.phase is not Phase.HANDSHAKING or self.reason != "path applied":
            self._set_phase(Phase.HANDSHAKING, "path applied", now)
        return path

    def restore(self, path: ValidPath, now: float, age: float) -> None:
        """Apply the last working path saved before a restart (see the top: warm restart)."""
        self.path = path
        self.applied_at = now
        self.rx_at_apply = self._peer_rx()
        self.handshake_seen = self.ever_up = False
        self.last_rx_change = None
        self.restored = True
        self._set_phase(
            Phase.HANDSHAKING, f"restoring the last working path (saved {age:.0f} s ago)", now
        )

    def on_recreated(self, now: float) -> None:
        """The interface was lost and created afresh: the path (if any) is applied anew, so the
        staggered start runs again (both sides initiating at once could livelock)."""
        self.sample = DeviceSample()
        self.last_rx = 0
        self.rx_at_apply = 0
        self.last_rx_change = None
        self.handshake_seen = self.ever_up = False
        if self.path is not None:
            self.applied_at = now
            self._set_phase(Phase.HANDSHAKING, "interface recreated", now)
        else:
            self.applied_at = None
            self._set_phase(Phase.NO_PATH, "interface recreated, waiting for a path", now)

    def on_sample(self, sample: DeviceSample, now: float, wall: float) -> None:
        """Take a fresh reading of the interface and re-assess liveness."""
        first = self.sample is None
        self.sample = sample
        peer = sample.peer(self.ident.peer_public_key)
        rx = peer.rx_bytes if peer else 0
        session = session_live(peer.last_handshake if peer else 0.0, wall)
        if first:
            # Adoption of a running interface: a live session counts as progress now.
            self.last_rx = rx
            if peer is not None and peer.endpoint is not None and session and rx > 0:
                self.handshake_seen = self.ever_up = True
                self.last_rx_change = now
                self.applied_at = now
            elif peer is not None and peer.endpoint is not None:
                self.applied_at = now
                self._set_phase(Phase.HANDSHAKING, "adopted, waiting for a handshake", now)
            self._assess(now, session)
            return
        if rx != self.last_rx:
            self.last_rx = rx
            self.last_rx_change = now
        if self.applied_at is not None and session and rx > self.rx_at_apply:
            self.handshake_seen = True  # the peer's handshake (or data) reached us
        self._assess(now, session)

    # -- outputs ------------------------------------------------------------------------------

    def desired(self, now: float) -> DeviceWant:
        ident = self.ident
        want = DeviceWant(ident.private_key, ident.peer_public_key, ident.allowed_ips)
        if self.path is None:
            return want  # leave port, endpoint and keepalive as the interface has them
        if self.handshake_seen or (
            (self.path.role is Role.CONTROLLING or self.restored)
            and self.next_deadline(now) is None
        ):
            keepalive = ident.keepalive
        else:
            keepalive = 0  # controlled: wait for the peer's handshake (design 4.4)
        return dataclasses.replace(
            want,
            listen_port=self.path.listen_port,
            endpoint=self.path.endpoint,
            keepalive=keepalive,
        )

    def probe_due(self, now: float) -> bool:
        """Should a probe go out now? (UP, silent for ``PROBE_AFTER`` s, none sent lately)"""
        if self.phase is not Phase.UP or self.last_rx_change is None:
            return False
        return should_probe(now, self.last_rx_change, self.last_probe, self.probe_replies)

    def on_probe_sent(self, now: float) -> None:
        self.last_probe = now

    def on_probe_reply(self) -> None:
        self.probe_replies += 1

    def next_deadline(self, now: float) -> float | None:
        """When the controlling side may initiate, if that is still ahead; else None."""
        if self.path is None or self.handshake_seen:
            return None
        if self.path.role is Role.CONTROLLING:
            due = (self.applied_at or 0.0) + INITIATE_DELAY
        elif self.restored:
            due = (self.applied_at or 0.0) + RESTORE_CONTROLLED_DELAY
        else:
            return None
        return due if now < due else None

    def state(self, now: float, wall: float) -> GuardState:
        peer = self.sample.peer(self.ident.peer_public_key) if self.sample else None
        age = -1.0
        if peer is not None and peer.last_handshake > 0:
            age = max(0.0, round(wall - peer.last_handshake, 1))
        endpoint = peer.endpoint if peer is not None else None
        return GuardState(
            state=_KIND[self.phase],
            interface=self.ident.interface,
            backend=self.ident.backend,
            public_key=self.ident.public_key,
            listen_port=self.sample.listen_port if self.sample else 0,
            endpoint=format_endpoint(endpoint) if endpoint else "",
            last_handshake_age=age,
            rx_bytes=peer.rx_bytes if peer else 0,
            tx_bytes=peer.tx_bytes if peer else 0,
            generation=self.path.generation if self.path else 0,
            since=round(wall - (now - self.since), 3) if self.since is not None else 0.0,
            reason=self.reason,
            refused=sum(self.refused.values()),
            last_refused=self.last_refused,
        )

    # -- liveness -----------------------------------------------------------------------------

    def _device_has(self, path: ValidPath) -> bool:
        sample = self.sample
        peer = sample.peer(self.ident.peer_public_key) if sample else None
        return (
            sample is not None
            and peer is not None
            and peer.endpoint == path.endpoint
            and sample.listen_port == path.listen_port
        )

    def _peer_rx(self) -> int:
        peer = self.sample.peer(self.ident.peer_public_key) if self.sample else None
        return peer.rx_bytes if peer else 0

    def _assess(self, now: float, session: bool) -> None:
        if self.applied_at is None:
            return  # no path yet, nothing adopted: NO_PATH stays
        limit, probed = silence_limit(self.ident.keepalive, self.probe_replies)
        fresh = self.last_rx_change is not None and now - self.last_rx_change < limit
        if self.handshake_seen and session and fresh:
            self.ever_up = True
            how = " (restored path)" if self.restored else ""
            self._set_phase(Phase.UP, f"handshake done, receiving{how}", now)
        elif self.ever_up and probed:
            self._set_phase(Phase.DOWN, f"no answer to probes for {limit:.0f} s", now)
        elif self.ever_up:
            self._set_phase(Phase.DOWN, f"no bytes received for {limit:.0f} s", now)
        elif self.restored and now - self.applied_at >= RESTORE_CHECK:
            self._set_phase(
                Phase.DOWN, f"the restored path did not answer within {RESTORE_CHECK:.0f} s", now
            )
        elif now - self.applied_at >= limit:
            self._set_phase(Phase.DOWN, f"no handshake within {limit:.0f} s", now)

    def _set_phase(self, new: Phase, reason: str, now: float) -> None:
        if new is self.phase and reason == self.reason:
            return
        old = self.phase
        self.phase = new
        self.reason = reason
        self.since = now
        if self.on_transition is not None:
            self.on_transition(old, new, reason)
