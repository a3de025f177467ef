"""PunchGuard guardd: the WireGuard interface (the only privileged stage)."""

from __future__ import annotations

import asyncio
import sys

from punchguard.messages import GuardState, GuardStateKind
from punchguard.service import ServiceContext, run


async def serve(ctx: ServiceContext) -> None:
    # Placeholder until the service's issue lands: publish a state and idle.
    ctx.bus.set_state(GuardState(GuardStateKind.NO_PATH, reason="not implemented yet"))
    await asyncio.Event().wait()


def main() -> None:
    sys.exit(
        run(
            "guardd",
            serve,
            description=__doc__ or "",
        )
    )


if __name__ == "__main__":
    main()
