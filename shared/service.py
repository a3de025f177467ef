"""The common skeleton of a PunchGuard daemon: arguments, config, logging, bus, shutdown.

Each service's ``__main__`` calls ``run(name, main)``. ``main`` receives a ``ServiceContext`` and
runs until cancelled; it shares one ``asyncio.TaskGroup`` with the bus heartbeat. SIGTERM and
SIGINT cancel the group, so shutdown takes well under supervisord's ``stopwaitsecs``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import structlog

from punchguard import config as configmod
from punchguard import log as logmod
from punchguard.bus import Bus
from punchguard.messages import Message


@dataclass
class ServiceContext:
    name: str
    config: configmod.Config
    bus: Bus
    log: structlog.stdlib.BoundLogger


ServiceMain = Callable[[ServiceContext], Coroutine[Any, Any, None]]
EXIT_REFUSED = 2


class Refused(Exception):
    """A service refuses to start (an unsafe key file, no peer...): exit status 2, no traceback.

    Exiting well before supervisord's ``startsecs`` makes it a failed start, so after
    ``startretries`` the stage ends FATAL instead of running without what it needs."""


async def refuse(ctx: ServiceContext, state: Message, reason: str) -> NoReturn:
    """Publish ``state`` (which says why), log ``reason`` once, and refuse to start."""
    ctx.log.error("service.refused", reason=reason)
    ctx.bus.set_state(state)
    await asyncio.sleep(0.2)  # connected subscribers (status, tap) see why
    raise Refused(reason)


def parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {name}", description=description)
    p.add_argument("--config", metavar="FILE", help="config file (default: $PUNCHGUARD_CONFIG)")
    p.add_argument("--runtime-dir", metavar="DIR", help="bus sockets and logs (overrides config)")
    p.add_argument("--state-dir", metavar="DIR", help="identities and peer record")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    return p


def load_config(args: argparse.Namespace) -> configmod.Config:
    cfg = configmod.load(args.config)
    paths = cfg.paths
    if args.runtime_dir:
        paths = dataclasses.replace(paths, runtime_dir=Path(args.runtime_dir))
    if args.state_dir:
        paths = dataclasses.replace(paths, state_dir=Path(args.state_dir))
    logcfg = cfg.log
    if args.log_level:
        logcfg = dataclasses.replace(logcfg, level=args.log_level)
    return dataclasses.replace(cfg, paths=paths, log=logcfg)


def run(
    name: str, main: ServiceMain, argv: Sequence[str] | None = None, description: str = ""
) -> int:
    args = parser(name, description or f"PunchGuard {name}").parse_args(argv)
    try:
        cfg = load_config(args)
    except configmod.ConfigError as e:
        print(f"{name}: config error: {e}", file=sys.stderr)
        return 2
    log = logmod.setup(name, cfg.log.level, cfg.log.format)
    try:
        refused = asyncio.run(_amain(name, cfg, main, log))
    except KeyboardInterrupt:
        return 0
    except Exception:
        log.exception("service.crashed")
        return 1
    return EXIT_REFUSED if refused else 0


async def _amain(
    name: str, cfg: configmod.Config, main: ServiceMain, log: structlog.stdlib.BoundLogger
) -> bool:
    loop = asyncio.get_running_loop()
    current = asyncio.current_task()
    assert current is not None
    stopping = False

    def stop(signame: str) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            log.info("service.stopping", signal=signame)
            current.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig.name)
    log.info("service.starting", config=cfg.source, runtime_dir=str(cfg.paths.runtime_dir))
    async with Bus(
        name, cfg.paths.runtime_dir, heartbeat=cfg.bus.heartbeat, group=cfg.bus.group
    ) as bus:
        ctx = ServiceContext(name=name, config=cfg, bus=bus, log=log)
        refused = False
        try:
            with contextlib.suppress(asyncio.CancelledError):
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(bus.run_heartbeat(), name="heartbeat")
                    tg.create_task(main(ctx), name=f"{name}-main")
        except* Refused:
            refused = True
    log.info("service.refused_to_start" if refused else "service.stopped")
    return refused
