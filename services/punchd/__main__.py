"""PunchGuard punchd: ICE hole punching and the hand-off to WireGuard (unprivileged)."""

from __future__ import annotations

import asyncio
import sys

from punchguard.messages import PunchState, PunchStateKind
from punchguard.service import ServiceContext, run


async def serve(ctx: ServiceContext) -> None:
    # Placeholder until the service's issue lands: publish a state and idle.
    ctx.bus.set_state(PunchState(PunchStateKind.IDLE, reason="not implemented yet"))
    await asyncio.Event().wait()


def main() -> None:
    sys.exit(
        run(
            "punchd",
            serve,
            description=__doc__ or "",
        )
    )


if __name__ == "__main__":
    main()
