"""PunchGuard signald: Tox signaling with the paired peer (unprivileged)."""

from __future__ import annotations

import asyncio
import sys

from punchguard.messages import SignalState, SignalStateKind
from punchguard.service import ServiceContext, run


async def serve(ctx: ServiceContext) -> None:
    # Placeholder until the service's issue lands: publish a state and idle.
    ctx.bus.set_state(SignalState(SignalStateKind.OFFLINE, reason="not implemented yet"))
    await asyncio.Event().wait()


def main() -> None:
    sys.exit(
        run(
            "signald",
            serve,
            description=__doc__ or "",
        )
    )


if __name__ == "__main__":
    main()
