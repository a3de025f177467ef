"""``punchguard``: the single command-line entry point."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

from punchguard import __version__
from punchguard import config as configmod
from punchguard.commands import EXIT_CODES_HELP, EXIT_FAIL, EXIT_USAGE, CommandError, example
from punchguard.commands import doctor as doctor_command
from punchguard.commands import host as host_commands
from punchguard.commands import lab as lab_commands
from punchguard.commands import pairing as pairing_commands
from punchguard.commands import status as status_command
from punchguard.tap import TapOptions, tap


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="punchguard",
        description="Peer-to-peer WireGuard through NAT: Tox signaling, OTR, ICE hole punching.",
        epilog=example(
            "sudo punchguard init && punchguard invite   # set this host up, show its code",
            "sudo punchguard pair PG1-...                # trust the other host's code",
            "sudo punchguard start && punchguard status  # run the stack, see how it does",
        )
        + "\n\n"
        + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"punchguard {__version__}")
    p.add_argument("--config", metavar="FILE", help="config file (default: $PUNCHGUARD_CONFIG)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    pairing_commands.register(sub)
    status_command.register(sub)
    host_commands.register(sub)
    doctor_command.register(sub)
    lab_commands.register(sub)

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

    c = sub.add_parser("config", help="check the config file and show where things go")
    c.set_defaults(func=cmd_config)

    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except CommandError as e:
        print(f"punchguard {args.command}: {e}", file=sys.stderr)
        rc = e.code
    except configmod.ConfigError as e:
        print(f"punchguard {args.command}: {e}", file=sys.stderr)
        rc = EXIT_USAGE
    except KeyboardInterrupt:
        rc = 130
    except Exception as e:
        if args.debug:
            raise
        print(
            f"punchguard {args.command}: unexpected error: {type(e).__name__}: {e}"
            " (run with --debug for details)",
            file=sys.stderr,
        )
        rc = EXIT_FAIL
    sys.exit(rc)


if __name__ == "__main__":
    main()
