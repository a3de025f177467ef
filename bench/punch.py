"""Benchmark punchd in the NAT lab (root): time to a path, time to a reported failure.

    .venv/bin/python bench/punch.py [--runs 5]

Prints one JSON object. Times are seconds from the moment OTR says SECURE on both hosts (both
punchd already running; the ICE messages are bridged at once, so no Tox/OTR latency is in them)
to the moment the state arrives on the bus:
- cone_cone.to_path: both sides have published their ``punch.path`` (median, min, max);
- symmetric_symmetric.to_failure: the controlling side reports FAILED (both NATs symmetric, no
  TURN), with the reason it gave and the retry delay it chose.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics

from punchd.lab_pair import PunchPair
from punchguard import log
from punchguard.messages import PunchStateKind
from punchguard.netlab import NatBehaviour, NatLab


def summary(values: list[float]) -> dict[str, float | int]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "runs": len(values),
    }


async def one(nat: NatBehaviour, want_path: bool) -> tuple[float, str, float]:
    run_id = "pgbench" + secrets.token_hex(2)
    lab = NatLab(run_id, nat_a=nat, nat_b=nat)
    try:
        lab.up()
        coturn = lab.start_coturn()
        async with PunchPair(lab, coturn.stun_servers) as pair:
            a, b = pair.hosts["a"], pair.hosts["b"]
            if want_path:
                await pair.wait_for(lambda: a.path is not None and b.path is not None, 60)
                return max(a.path_at, b.path_at) - pair.secure_at, "", 0.0

            def failed() -> bool:
                return any(s.state == PunchStateKind.BACKOFF for s in a.states)

            await pair.wait_for(failed, 60)
            i = next(i for i, s in enumerate(a.states) if s.state == PunchStateKind.FAILED)
            backoff = next(s for s in a.states if s.state == PunchStateKind.BACKOFF)
            t = a.times[i] - pair.secure_at
            return t, a.states[i].reason, backoff.retry_at - a.states[i].since
    finally:
        lab.teardown()
        NatLab.cleanup_leftovers(run_id)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    log.setup("bench", "warning")  # logs to stderr; stdout is the JSON
    paths = [(await one(NatBehaviour.CONE, True))[0] for _ in range(args.runs)]
    fails = [await one(NatBehaviour.SYMMETRIC, False) for _ in range(max(1, args.runs // 2))]
    result = {
        "cone_cone": {"to_path": summary(paths)},
        "symmetric_symmetric": {
            "to_failure": summary([f[0] for f in fails]),
            "reason": fails[0][1],
            "retry_in": round(fails[0][2], 1),
        },
        "timers": {"check_rto": 0.1, "check_retries": 4},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
