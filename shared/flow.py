"""Watching the flow of design 1 on one host's bus: when each milestone was first reached.

Milestones, in the order the flow reaches them: ``tox_online`` -> ``peer_online`` ->
``otr_secure`` -> ``path`` -> ``tunnel_up`` (and ``tox_offline_after_up`` under the on-demand
policy). Used by ``punchguard lab up`` for its progress lines, by the lab tests and by
``bench/tunnel.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from punchguard.bus import Incoming
from punchguard.messages import (
    GuardState,
    GuardStateKind,
    OtrState,
    OtrStateKind,
    Path,
    SignalState,
    SignalStateKind,
)

MILESTONES = ("tox_online", "peer_online", "otr_secure", "path", "tunnel_up")
LABELS = {
    "tox_online": "Tox online",
    "peer_online": "peer online on Tox",
    "otr_secure": "OTR secure (fingerprint verified)",
    "path": "ICE path found",
    "tunnel_up": "WireGuard handshake: tunnel UP",
    "tox_offline_after_up": "Tox offline (on-demand policy)",
}


@dataclass
class Flow:
    """Milestone times (``time.monotonic()``) for one host, from its bus messages."""

    start: float = field(default_factory=time.monotonic)
    reached: dict[str, float] = field(default_factory=dict)
    path: Path | None = None
    last: dict[str, str] = field(default_factory=dict)  # service -> short state text

    def feed(self, item: Incoming) -> list[str]:
        """Record ``item``; returns the milestones it reached for the first time."""
        msg, new = item.msg, []
        now = time.monotonic()

        def hit(name: str) -> None:
            if name not in self.reached:
                self.reached[name] = now
                new.append(name)

        if isinstance(msg, SignalState):
            self.last["signald"] = msg.state.name.lower()
            if msg.state in (SignalStateKind.ONLINE, SignalStateKind.PEER_ONLINE):
                hit("tox_online")
            if msg.state == SignalStateKind.PEER_ONLINE:
                hit("peer_online")
            if msg.state == SignalStateKind.OFFLINE and "tunnel_up" in self.reached:
                hit("tox_offline_after_up")
        elif isinstance(msg, OtrState):
            self.last["otrd"] = msg.state.name.lower()
            if msg.state == OtrStateKind.SECURE and msg.verified:
                hit("otr_secure")
        elif isinstance(msg, Path) and item.endpoint == "punchd":
            self.path = msg
            hit("path")
        elif isinstance(msg, GuardState):
            self.last["guardd"] = msg.state.name.lower()
            if msg.state == GuardStateKind.UP:
                hit("tunnel_up")
        return new

    def elapsed(self, name: str) -> float | None:
        t = self.reached.get(name)
        return None if t is None else t - self.start

    def in_order(self) -> bool:
        """Did the milestones come in the flow's order?"""
        times = [self.reached[m] for m in MILESTONES if m in self.reached]
        return times == sorted(times)

    def path_text(self) -> str:
        p = self.path
        if p is None:
            return "no path"
        kind = "relayed" if p.relayed else "direct"
        return (
            f"{kind}, {p.local_type.name.lower()} -> {p.remote_type.name.lower()}, "
            f"{p.role.name.lower()}, endpoint {p.endpoint_host}:{p.endpoint_port}"
        )
