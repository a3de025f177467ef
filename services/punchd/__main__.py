"""PunchGuard punchd: ICE hole punching and the hand-off to WireGuard (unprivileged).

Design: core.py (pure state machine), ice_adapter.py (every aioice internal), runner.py (bus and
asyncio). docs/punchd.md describes the behaviour, the wire messages and the timers.
"""

from __future__ import annotations

import sys

from punchd.runner import Runner
from punchguard.service import ServiceContext, run


async def serve(ctx: ServiceContext) -> None:
    await Runner(ctx).run()


def main() -> None:
    sys.exit(run("punchd", serve, description=__doc__ or ""))


if __name__ == "__main__":
    main()
