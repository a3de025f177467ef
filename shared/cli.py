"""``punchguard``: the single command-line entry point."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from punchguard import SERVICES, __version__
from punchguard import config as configmod
from punchguard.bus import Bus, endpoint_path
from punchguard.messages import Message
from punchguard.stack import Stack, StackError
from punchguard.tap import TapOptions, message_fields, tap


def _runtime_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "runtime_dir", None):
        return Path(args.runtime_dir)
    return configmod.load(args.config).paths.runtime_dir


def cmd_tap(args: argparse.Namespace) -> int:
    opts = TapOptions(
        runtime_dir=_runtime_dir(args),
        prefix=args.filter or "",
        as_json=args.json,
        count=args.count,
        timeout=args.timeout,
    )
    if not opts.runtime_dir.is_dir():
        print(
            f"punchguard tap: waiting for {opts.runtime_dir} (no services started yet?)",
            file=sys.stderr,
        )
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        return asyncio.run(tap(opts))
    return 0


async def collect_states(runtime_dir: Path, wait: float) -> dict[str, Message]:
    """The latest state of each service heard within ``wait`` seconds (one heartbeat+)."""
    states: dict[str, Message] = {}
    async with Bus(None, runtime_dir) as bus:
        for service in SERVICES:
            bus.subscribe(service)
        deadline = time.monotonic() + wait
        while len(states) < len(SERVICES):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                item = await asyncio.wait_for(bus.receive(), left)
            except TimeoutError:
                break
            if item.env.type.endswith(".state"):
                states[item.env.src] = item.msg
    return states


def cmd_status(args: argparse.Namespace) -> int:
    runtime_dir = _runtime_dir(args)
    states = asyncio.run(collect_states(runtime_dir, args.wait))
    if args.json:
        print(
            json.dumps(
                {
                    s: (
                        {"type": states[s].TYPE, **message_fields(states[s])}
                        if s in states
                        else None
                    )
                    for s in SERVICES
                },
                indent=2,
            )
        )
    else:
        for service in SERVICES:
            msg = states.get(service)
            if msg is None:
                running = endpoint_path(runtime_dir, service).exists()
                why = "no answer" if running else "not running"
                print(f"{service:<8} {why}")
            else:
                print(f"{service:<8} {msg.summary()}")
    return 0 if len(states) == len(SERVICES) else 1


def cmd_lab(args: argparse.Namespace) -> int:
    print(
        "punchguard lab: the two-NAT lab is not built yet (issue 7). It needs the four "
        "services (issues 3-6); today they are placeholders that publish a state and idle.\n"
        "What you can run now: `punchguard tap` against a running stack, and the tests "
        "(scripts/test).",
        file=sys.stderr,
    )
    return 2


def cmd_config(args: argparse.Namespace) -> int:
    try:
        cfg = configmod.load(args.config)
    except configmod.ConfigError as e:
        print(f"punchguard config: {e}", file=sys.stderr)
        return 2
    print(f"config OK ({cfg.source})")
    print(f"  runtime_dir = {cfg.paths.runtime_dir}")
    print(f"  state_dir   = {cfg.paths.state_dir}")
    print(f"  policy      = {cfg.policy.mode}")
    return 0


def _stack(args: argparse.Namespace) -> Stack:
    cfg = configmod.load(args.config)
    return Stack(cfg, configmod.config_file(args.config))


def cmd_start(args: argparse.Namespace) -> int:
    stack = _stack(args)
    try:
        proc = stack.supervisord(foreground=args.foreground)
    except StackError as e:
        print(f"punchguard start: {e}", file=sys.stderr)
        return 2
    rc = proc.wait()
    if rc == 0 and not args.foreground:
        print(f"started: supervisord for {stack.runtime_dir} (logs there)", file=sys.stderr)
    return rc


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop the control plane; the WireGuard interface stays (see `punchguard down`)."""
    return _stack(args).ctl("shutdown").returncode


def cmd_ctl(args: argparse.Namespace) -> int:
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    return _stack(args).ctl(*rest).returncode


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="punchguard",
        description="Peer-to-peer WireGuard through NAT: Tox signaling, OTR, ICE hole punching.",
    )
    p.add_argument("--version", action="version", version=f"punchguard {__version__}")
    p.add_argument("--config", metavar="FILE", help="config file (default: $PUNCHGUARD_CONFIG)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser(
        "tap",
        help="print every message on the bus",
        description="Follow every service's bus endpoint and print one line per message "
        "(time, source, type, summary). Starts before or after the services and keeps "
        "following when one restarts.",
    )
    t.add_argument("--runtime-dir", metavar="DIR", help="where the bus sockets are")
    t.add_argument("--filter", metavar="PREFIX", help="only topics or types with this prefix")
    t.add_argument("--json", action="store_true", help="one JSON object per line")
    t.add_argument("--count", type=int, default=0, metavar="N", help="stop after N messages")
    t.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        metavar="S",
        help="stop after S seconds (exit 1 if --count was not reached)",
    )
    t.set_defaults(func=cmd_tap)

    s = sub.add_parser("status", help="each stage's state, from the bus")
    s.add_argument("--runtime-dir", metavar="DIR", help="where the bus sockets are")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--wait", type=float, default=1.5, help="seconds to listen (default 1.5)")
    s.set_defaults(func=cmd_status)

    st = sub.add_parser(
        "start",
        help="start this host's stack under supervisord",
        description="Prepare the runtime and state directories and start supervisord with "
        "deploy/supervisord.conf (needs root). Paths come from the config file and "
        "$PUNCHGUARD_RUNTIME_DIR / $PUNCHGUARD_STATE_DIR.",
    )
    st.add_argument("--foreground", action="store_true", help="do not daemonize")
    st.set_defaults(func=cmd_start)
    sp = sub.add_parser("stop", help="stop supervisord and the four stages (tunnel stays)")
    sp.set_defaults(func=cmd_stop)
    ctl = sub.add_parser(
        "ctl",
        help="supervisorctl for this host's stack, e.g. `punchguard ctl restart punchguard:otrd`",
    )
    ctl.add_argument("rest", nargs=argparse.REMAINDER, help="supervisorctl arguments")
    ctl.set_defaults(func=cmd_ctl)

    c = sub.add_parser("config", help="check the config file and show where things go")
    c.set_defaults(func=cmd_config)

    lab = sub.add_parser("lab", help="the two-NAT lab on this machine (not built yet)")
    lab.add_argument("rest", nargs=argparse.REMAINDER)
    lab.set_defaults(func=cmd_lab)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except configmod.ConfigError as e:
        print(f"punchguard: {e}", file=sys.stderr)
        rc = 2
    sys.exit(rc)


if __name__ == "__main__":
    main()
