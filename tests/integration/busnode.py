"""A minimal bus node for the bus integration tests, run as a real process.

    python busnode.py NAME RUNTIME_DIR [--follow SERVICE ...] [--heartbeat S]

Publishes a state (``signal.state`` whose reason carries its pid) and ``bus.stats`` on the
heartbeat, follows the given endpoints and prints one JSON line per message it receives.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from punchguard import log
from punchguard.bus import Bus
from punchguard.messages import SignalState, SignalStateKind


async def run(args: argparse.Namespace) -> None:
    async with Bus(args.name, Path(args.runtime_dir), heartbeat=args.heartbeat) as bus:
        for service in args.follow:
            bus.subscribe(service)
        bus.set_state(SignalState(state=SignalStateKind.ONLINE, reason=f"pid={os.getpid()}"))
        beat = asyncio.create_task(bus.run_heartbeat())
        try:
            while True:
                item = await bus.receive()
                line = {"endpoint": item.endpoint, "type": item.env.type, "seq": item.env.seq}
                print(json.dumps(line), flush=True)
        finally:
            beat.cancel()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("runtime_dir")
    p.add_argument("--follow", action="append", default=[])
    p.add_argument("--heartbeat", type=float, default=0.2)
    args = p.parse_args()
    log.setup(args.name, "warning", "json")
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
