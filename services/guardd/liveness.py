"""When guardd calls a path UP or DOWN: the timing rules, their numbers and why (pure).

``GuardCore`` (``core.py``) keeps the per-path bookkeeping and the phase; the rules it applies
live here.

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
hands ``GuardCore.restore()`` the last path that worked (``lastpath.py``). It is applied at
once, like a path from punchd, but both roles initiate: the peer is not starting at the same
moment (it kept running), so there is no crossing to avoid; the controlled side waits
``RESTORE_CONTROLLED_DELAY`` first, so that when both hosts restarted together the controlling
side's initiation still goes first. No handshake within ``RESTORE_CHECK`` s: DOWN ("the
restored path did not answer"), which tells signald and punchd to run the full flow. Any path
from punchd replaces the restored one at once (its generation is punchd's, not the restored
one's), so a stale restored path never blocks a new punch.
"""

from __future__ import annotations

POLL_INTERVAL = 0.5  # seconds between samples of the interface
KEEPALIVE_TIMEOUT = 10  # WireGuard's passive keepalive (protocol constant)
REJECT_AFTER_TIME = 180  # WireGuard's session lifetime (protocol constant)
RESTORE_CONTROLLED_DELAY = 1.0  # s: a restored controlled side initiates too, after this
RESTORE_CHECK = 5.0  # s: a restored path without a handshake by then is reported DOWN
PROBE_AFTER = 3.0  # s without received bytes before guardd probes across the tunnel
PROBE_INTERVAL = 0.5  # s between probes while the silence lasts
PROBE_DEAD = 2.0  # s of unanswered probing after which the path is dead (see the top)


def dead_after(keepalive: int) -> float:
    """Seconds without received bytes after which a path is declared dead (see the top)."""
    k = max(keepalive, 1)
    return float(max(3 * k, k + KEEPALIVE_TIMEOUT))


def silence_limit(keepalive: int, probe_replies: int) -> tuple[float, bool]:
    """Seconds of silence that make a path DOWN, and whether that is the probe rule (the peer
    has answered probes and the probe rule is the shorter one)."""
    limit = dead_after(keepalive)
    probed = probe_replies > 0 and limit > PROBE_AFTER + PROBE_DEAD
    return (PROBE_AFTER + PROBE_DEAD if probed else limit), probed


def session_live(last_handshake: float, wall: float) -> bool:
    """A WireGuard session exists: a handshake (unix time, 0 = never) within REJECT_AFTER_TIME."""
    return last_handshake > 0 and wall - last_handshake < REJECT_AFTER_TIME


def should_probe(
    now: float, last_rx_change: float, last_probe: float | None, probe_replies: int
) -> bool:
    """Is a probe due on an UP path silent since ``last_rx_change``? (all monotonic times)"""
    if probe_replies == 0 and (last_probe is None or now - last_probe >= 5):
        return True  # learn whether the peer answers probes at all (every 5 s until it does)
    if now - last_rx_change < PROBE_AFTER:
        return False
    return last_probe is None or now - last_probe >= PROBE_INTERVAL - 0.05
