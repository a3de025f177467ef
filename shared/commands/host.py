"""`punchguard start`, `stop`, `ctl`, `down` and `cleanup`: this host's stack."""

from __future__ import annotations

import argparse
import sys

from punchguard import config as configmod
from punchguard.commands import EXIT_OK, CommandError, example
from punchguard.stack import Stack, StackError


def _stack(args: argparse.Namespace) -> Stack:
    cfg = configmod.load(args.config)
    return Stack(cfg, configmod.config_file(args.config))


def cmd_start(args: argparse.Namespace) -> int:
    stack = _stack(args)
    try:
        proc = stack.supervisord(foreground=args.foreground)
    except StackError as e:
        raise CommandError(str(e)) from None
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


def cmd_down(args: argparse.Namespace) -> int:
    from guardd import admin

    stack = _stack(args)
    stack.ctl("shutdown", capture=True)  # the stages first, or guardd would recreate it
    for line in admin.down(stack.config):
        print(line)
    return EXIT_OK


def cmd_cleanup(args: argparse.Namespace) -> int:
    from guardd import admin

    done = admin.cleanup(_stack(args).config)
    for line in done:
        print(line)
    if not done:
        print("nothing to clean up")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    st = sub.add_parser(
        "start",
        help="start this host's stack under supervisord",
        description="Prepare the runtime and state directories and start supervisord with "
        "deploy/supervisord.conf (needs root). Paths come from the config file and "
        "$PUNCHGUARD_RUNTIME_DIR / $PUNCHGUARD_STATE_DIR.",
        epilog=example("sudo punchguard start", "sudo punchguard --config my.toml start"),
        formatter_class=fmt,
    )
    st.add_argument("--foreground", action="store_true", help="do not daemonize")
    st.set_defaults(func=cmd_start)
    sp = sub.add_parser(
        "stop",
        help="stop supervisord and the four stages (the tunnel stays up)",
        description="Stop the control plane. The WireGuard interface keeps running; "
        "`punchguard down` removes it.",
        epilog=example("sudo punchguard stop"),
        formatter_class=fmt,
    )
    sp.set_defaults(func=cmd_stop)
    ctl = sub.add_parser(
        "ctl",
        help="supervisorctl for this host's stack",
        description="Run supervisorctl against this host's supervisord.",
        epilog=example("sudo punchguard ctl status", "sudo punchguard ctl restart punchguard:otrd"),
        formatter_class=fmt,
    )
    ctl.add_argument("rest", nargs=argparse.REMAINDER, help="supervisorctl arguments")
    ctl.set_defaults(func=cmd_ctl)
    dn = sub.add_parser(
        "down",
        help="take PunchGuard down on purpose: stop the stack and remove the interface",
        description="Stop the stages and remove the WireGuard interface (and its "
        "wireguard-go process). The tunnel ends.",
        epilog=example("sudo punchguard down"),
        formatter_class=fmt,
    )
    dn.set_defaults(func=cmd_down)
    cl = sub.add_parser(
        "cleanup",
        help="remove interfaces and sockets a crash left behind",
        description="Remove stale wireguard-go sockets and orphaned PunchGuard interfaces.",
        epilog=example("sudo punchguard cleanup"),
        formatter_class=fmt,
    )
    cl.set_defaults(func=cmd_cleanup)
