"""Relayed paths in punchd's core: why direct failed, direct probes, relay lost (pure).

``PunchCore`` (``core.py``) keeps the state; the rules and texts it applies to a relayed path
are here. docs/turn.md has the whole picture (the forwarder is ``relay.py``).

* A path is relayed when a relay candidate is on either end of the nominated pair
  (``is_relayed``). Its ``punch.state`` reason says via which TURN server and why direct failed:
  the last direct probe's failure, else "no direct candidate pair answered" with both NAT kinds
  (``connected_reason``).
* Direct is always preferred: while relayed the controlling side runs a *direct probe* now and
  then, a normal session gathered without TURN (``StartGather(direct_only=True)``), first
  ``probe_initial`` s after the relayed path came up, then doubling up to ``probe_max`` (+-10 %),
  every ``hopeless_retry`` s when both NATs are symmetric (``probe_delay``). The relayed path
  stays published meanwhile; a probe that finds only a relayed pair failed; a direct pair
  replaces the relayed path with the next generation. The controlled side recognises a probe: a
  new session without relay candidates while its own path is relayed (``is_direct_probe``).
  Probes travel through OTR, so they wait while OTR is not secure (Tox offline by policy).
* Relay lost (``PunchCore.on_relay_lost``): our TURN forwarder or its allocation is gone while
  guardd still points WireGuard at it; the controlling side punches again at once, the
  controlled side asks it to (``IceParams(restart=True)``, session 0 after a restart of punchd).
"""

from __future__ import annotations

import random
import time

from punchd.commands import Selected
from punchd.timers import Timers
from punchguard.messages import CandidateType, IceParams, NatKind, Path


def nat_name(kind: NatKind) -> str:
    return {
        NatKind.NO_NAT: "none",
        NatKind.ENDPOINT_INDEPENDENT: "cone",
        NatKind.ENDPOINT_DEPENDENT: "symmetric",
    }.get(kind, "unknown")


def has_relay(params: IceParams) -> bool:
    return any(" typ relay" in c for c in params.candidates)


def is_relayed(pair: Selected) -> bool:
    return CandidateType.RELAY in (pair.local_type, pair.remote_type)


def is_direct_probe(path: Path | None, params: IceParams) -> bool:
    """Is the peer's new session a direct probe? (our path is relayed, no relay candidates)"""
    return path is not None and path.relayed and not has_relay(params)


def no_direct_pair(nat: NatKind, peer_nat: NatKind) -> str:
    """Why direct failed when a relayed pair won the first punch."""
    return (
        f"no direct candidate pair answered (NAT here {nat_name(nat)}, peer {nat_name(peer_nat)})"
    )


def probe_failure(reason: str, detail: str, hopeless: bool) -> str:
    """Why direct failed after a failed probe (``hopeless``: both NATs symmetric)."""
    text = "both NATs are symmetric (endpoint-dependent)" if hopeless else reason
    return text + (f" ({detail})" if detail else "")


def probe_delay(timers: Timers, probe_attempt: int, hopeless: bool, rng: random.Random) -> float:
    """Seconds until the next direct probe after ``probe_attempt`` failed ones (+-10 %)."""
    step = min(timers.probe_max, timers.probe_initial * 2.0**probe_attempt)
    delay = timers.hopeless_retry if hopeless else step
    return delay * (1 + rng.uniform(-0.1, 0.1))


def connected_reason(
    via: str, direct_failed: str, *, controlling: bool, probe_at: float, now: float
) -> str:
    """The ``punch.state`` reason while CONNECTED over a relay."""
    text = f"relayed via {via or '?'} (TURN); direct failed: {direct_failed}"
    if controlling and probe_at > now:
        text += f"; next direct try at {time.strftime('%H:%M:%S', time.gmtime(probe_at))}"
    elif controlling and probe_at:
        text += "; next direct try as soon as OTR is secure (Tox online)"
    return text
