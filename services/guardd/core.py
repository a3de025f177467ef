"""guardd's pure core: path validation, the desired device, the diff, and liveness.

Theory of operation
-------------------
guardd owns one WireGuard interface with exactly one peer. Everything secret or
security-relevant (private key, tunnel addresses, the peer's public key and allowed IPs) comes
from root-owned config and the key file, never from the bus. The bus can only deliver a *path*
(``punch.path`` from punchd's endpoint): the local listen port, the peer's UDP endpoint and the
ICE role. ``validate_path`` checks it field by field; anything else is refused and counted.

The core is declarative (design 4.4, style 5): ``GuardCore.desired(now)`` is the whole wanted
device (``DeviceWant``), ``diff(want, have)`` compares it with a ``DeviceSample`` read from the
interface and returns only the difference (``DeviceChange``); an empty change means "nothing to
do", so a repeated path is a no-op. Fields the core has no opinion on (no path yet, e.g. right
after a restart that adopted a running interface) are ``None`` and left as they are, so a new
guardd never disturbs a tunnel that is already carrying traffic.

Staggered start (design 4.4): both sides initiating at once can livelock. The CONTROLLING side
turns on persistent keepalive ``INITIATE_DELAY`` after it has the path (turning it on makes
WireGuard send a keepalive, which starts the handshake); the short delay lets the peer's guardd,
which gets its path at about the same moment, bind its listen port first: an initiation that
arrives before that is lost and WireGuard only retries after 5 s (REKEY_TIMEOUT). The CONTROLLED
side sets the endpoint with keepalive off and waits; once it sees the handshake (bytes received
since the path was applied, within a live session) it turns keepalive on too, which keeps its
NAT mapping open.

Liveness: WireGuard itself only gives up after 180 s (REJECT_AFTER_TIME). With persistent
keepalive K on both sides, an idle tunnel receives a keepalive every K seconds; a one-way flow
makes the receiver answer with a passive keepalive after 10 s (KEEPALIVE_TIMEOUT). So received
bytes advance at least every max(K, 10) seconds on a live path, and ``dead_after`` =
max(3 K, K + 10) seconds without any received byte means the path is dead: 15 s with K = 5.
The same bound applies to a path that never completes a handshake. The runner samples the
interface every ``POLL_INTERVAL`` seconds, so DOWN is reported at most dead_after + 0.5 s after
the last packet arrived.

Probes (issue 9, ``probe.py``): 15 s is long for a path that died (a NAT rebinding, a
partition). So after ``PROBE_AFTER`` s without a received byte guardd sends an ICMP echo to the
peer's tunnel address every ``PROBE_INTERVAL`` s; a live peer answers within a round trip, which
also ends the silence. Once the peer has answered a probe (so it does answer them: a firewall
might not), ``PROBE_AFTER + PROBE_DEAD`` = 5 s of silence with the probes unanswered is DOWN
("no answer to probes for 5 s"); a peer never seen answering keeps the 15 s rule. On an idle
tunnel this costs one probe and its reply about every 3 s, and UP means "something came back
within the last 5 s": packets cross now.

Warm restart (issue 9): when the interface had to be made afresh (a host restart), the runner
hands ``restore()`` the last path that worked (``lastpath.py``). It is applied at once, like a
path from punchd, but both roles initiate: the peer is not starting at the same moment (it kept
running), so there is no crossing to avoid; the controlled side waits
``RESTORE_CONTROLLED_DELAY`` first, so that when both hosts restarted together the controlling
side's initiation still goes first. No handshake within ``RESTORE_CHECK`` s: DOWN ("the
restored path did not answer"), which tells signald and punchd to run the full flow. Any path
from punchd replaces the restored one at once (its generation is punchd's, not the restored
one's), so a stale restored path never blocks a new punch.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from punchguard.messages import GuardState, GuardStateKind, Message, Path, Role

PATH_ENDPOINT = "punchd"  # the only producer guardd takes anything from
POLL_INTERVAL = 0.5  # seconds between samples of the interface
INITIATE_DELAY = 0.25  # seconds the controlling side waits before initiating (see the top)
KEEPALIVE_TIMEOUT = 10  # WireGuard's passive keepalive (protocol constant)
REJECT_AFTER_TIME = 180  # WireGuard's session lifetime (protocol constant)
RESTORE_CONTROLLED_DELAY = 1.0  # s: a restored controlled side initiates too, after this
RESTORE_CHECK = 5.0  # s: a restored path without a handshake by then is reported DOWN
PROBE_AFTER = 3.0  # s without received bytes before guardd probes across the tunnel
PROBE_INTERVAL = 0.5  # s between probes while the silence lasts
PROBE_DEAD = 2.0  # s of unanswered probing after which the path is dead (see the top)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[IPAddress, int]


def dead_after(keepalive: int) -> float:
    """Seconds without received bytes after which a path is declared dead (see the top)."""
    k = max(keepalive, 1)
    return float(max(3 * k, k + KEEPALIVE_TIMEOUT))


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


def format_endpoint(ep: Endpoint) -> str:
    addr, port = ep
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def parse_endpoint(text: str) -> Endpoint | None:
    """``host:port`` / ``[v6]:port`` as WireGuard prints it, or None (also for garbage)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]), int(port)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# device: what we want, what it has, the difference


@dataclass(frozen=True)
class PeerSample:
    public_key: str  # base64
    endpoint: Endpoint | None = None
    allowed_ips: tuple[str, ...] = ()  # canonical CIDRs
    keepalive: int = 0
    last_handshake: float = 0.0  # unix time, 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass(frozen=True)
class DeviceSample:
    """What the interface has now (read through a backend adapter)."""

    private_key: str | None = None  # base64
    listen_port: int = 0
    peers: tuple[PeerSample, ...] = ()

    def peer(self, public_key: str) -> PeerSample | None:
        for p in self.peers:
            if p.public_key == public_key:
                return p
        return None


@dataclass(frozen=True)
class DeviceWant:
    """The whole desired device. ``None`` = no opinion: leave what the interface has."""

    private_key: str
    peer_public_key: str
    allowed_ips: tuple[str, ...]
    listen_port: int | None = None
    endpoint: Endpoint | None = None
    keepalive: int | None = None


@dataclass(frozen=True)
class PeerChange:
    public_key: str
    create: bool = False
    endpoint: Endpoint | None = None
    keepalive: int | None = None
    allowed_ips: tuple[str, ...] | None = None  # replace the list with this


@dataclass(frozen=True)
class DeviceChange:
    """Only the difference to apply; ``bool(change)`` is False when there is nothing to do."""

    private_key: str | None = None
    listen_port: int | None = None
    remove_peers: tuple[str, ...] = ()
    peer: PeerChange | None = None

    def __bool__(self) -> bool:
        return bool(
            self.private_key is not None
            or self.listen_port is not None
            or self.remove_peers
            or self.peer is not None
        )


def canonical_cidr(text: str) -> str:
    return str(ipaddress.ip_network(text, strict=False))


def host_cidr(address_cidr: str) -> str:
    """The host route (/32 or /128) of an interface address such as ``10.99.0.2/24``."""
    iface = ipaddress.ip_interface(address_cidr)
    return f"{iface.ip}/{iface.max_prefixlen}"


def diff(want: DeviceWant, have: DeviceSample) -> DeviceChange:
    """The change that turns ``have`` into ``want``, touching nothing else."""
    private_key = want.private_key if have.private_key != want.private_key else None
    listen_port = (
        want.listen_port
        if want.listen_port is not None and want.listen_port != have.listen_port
        else None
    )
    remove = tuple(p.public_key for p in have.peers if p.public_key != want.peer_public_key)
    current = have.peer(want.peer_public_key)
    wanted_ips = tuple(sorted(canonical_cidr(c) for c in want.allowed_ips))
    peer: PeerChange | None
    if current is None:
        peer = PeerChange(
            want.peer_public_key,
            create=True,
            endpoint=want.endpoint,
            keepalive=want.keepalive or None,
            allowed_ips=wanted_ips,
        )
    else:
        changes = PeerChange(
            want.peer_public_key,
            endpoint=want.endpoint
            if want.endpoint is not None and want.endpoint != current.endpoint
            else None,
            keepalive=want.keepalive
            if want.keepalive is not None and want.keepalive != current.keepalive
            else None,
            allowed_ips=wanted_ips
            if tuple(sorted(canonical_cidr(c) for c in current.allowed_ips)) != wanted_ips
            else None,
        )
        empty = PeerChange(want.peer_public_key)
        peer = None if changes == empty else changes
    return DeviceChange(private_key, listen_port, remove, peer)


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
        hs = peer.last_handshake if peer else 0.0
        session = hs > 0 and wall - hs < REJECT_AFTER_TIME
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
        if self.probe_replies == 0 and (self.last_probe is None or now - self.last_probe >= 5):
            return True  # learn whether the peer answers probes at all (every 5 s until it does)
        if now - self.last_rx_change < PROBE_AFTER:
            return False
        return self.last_probe is None or now - self.last_probe >= PROBE_INTERVAL - 0.05

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
        limit = dead_after(self.ident.keepalive)
        probed = self.probe_replies > 0 and limit > PROBE_AFTER + PROBE_DEAD
        if probed:
            limit = PROBE_AFTER + PROBE_DEAD
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
