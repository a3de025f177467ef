"""punchd's timers and its retry schedule after a failed punch (pure).

The relayed path's direct-retry schedule, which uses the ``probe_*`` timers, is in
``relayed.py``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Timers:
    answer_timeout: float = 10.0  # controlling: peer's params must arrive within this
    checks_timeout: float = 15.0  # safety net over aioice's own check timers
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    backoff_jitter: float = 0.2  # +- this fraction
    hopeless_retry: float = 300.0  # both symmetric, no relay: the slow retry
    confirm_timeout: float = 2.0  # controlling: hand off anyway if the peer never confirms
    probe_initial: float = 10.0  # relayed: first direct retry after this (relayed.py)
    probe_max: float = 300.0


def backoff_delay(attempt: int, timers: Timers, rng: random.Random) -> float:
    """Exponential backoff for the ``attempt``-th consecutive failure (1-based), capped, with
    +-jitter so two restarted hosts do not stay in lock-step."""
    base = min(timers.backoff_max, timers.backoff_initial * 2.0 ** max(0, attempt - 1))
    spread = base * timers.backoff_jitter
    return max(0.0, min(timers.backoff_max, base + rng.uniform(-spread, spread)))
