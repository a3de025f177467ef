"""`punchguard lab cut|rebind|partition|ctl`: faults for the two-NAT lab (issue 9).

Each command finds the lab from ``lab.json`` (``--name``, or the only lab) and works from its
namespace names, so it runs in a process of its own while the lab's stacks keep running. What
each fault does to the network: ``punchguard.faults``.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import time
from types import FrameType

from punchguard import faults
from punchguard import lab as labmod
from punchguard.commands import EXIT_OK, CommandError, example
from punchguard.netlab import LabError


def find(args: argparse.Namespace) -> labmod.LabInfo:
    """The lab named by ``--name`` (or the only one), or a CommandError saying why not."""
    try:
        return labmod.find_lab(args.name)
    except LabError as e:
        raise CommandError(str(e)) from None


def cmd_cut(args: argparse.Namespace) -> int:
    info = find(args)
    try:
        for line in faults.cut(info, args.side):
            print(line)
    except LabError as e:
        raise CommandError(str(e)) from None
    return EXIT_OK


def cmd_rebind(args: argparse.Namespace) -> int:
    info = find(args)
    try:
        print(faults.unrebind(info, args.side) if args.reset else faults.rebind(info, args.side))
    except LabError as e:
        raise CommandError(str(e)) from None
    return EXIT_OK


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def cmd_partition(args: argparse.Namespace) -> int:
    info = find(args)
    try:
        if args.heal:
            print(faults.heal(info))
            return EXIT_OK
        if args.seconds is None or args.seconds <= 0:
            raise CommandError("say how long: --seconds N (N > 0), or --heal")
        # SIGTERM and SIGHUP heal too (Ctrl-C is KeyboardInterrupt): the partition never
        # outlives this command unless it is killed with SIGKILL (then: --heal).
        old = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
        try:
            print(faults.partition(info), flush=True)
            if args.seconds:
                print(f"healing in {args.seconds:g} s (Ctrl-C heals now)", flush=True)
                with contextlib.suppress(KeyboardInterrupt, _Stop):
                    time.sleep(args.seconds)
        finally:
            print(faults.heal(info), flush=True)
            for s, handler in old.items():
                signal.signal(s, handler)
    except LabError as e:
        raise CommandError(str(e)) from None
    return EXIT_OK


def cmd_ctl(args: argparse.Namespace) -> int:
    rest = list(args.rest)
    if rest[:1] == ["--name"] and len(rest) > 1:  # `ctl a --name X -- ARGS` works too
        args.name, rest = rest[1], rest[2:]
    rest = rest[1:] if rest[:1] == ["--"] else rest
    info = find(args)
    if not rest:
        rest = ["status"]
    r = info.hosts[args.host].punchguard("ctl", "--", *rest, timeout=120)
    print(r.stdout, end="")
    print(r.stderr, end="")
    return r.returncode


def register(lsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = lsub.add_parser(
        "cut",
        help="flush a NAT's conntrack table (every mapping forgotten)",
        description="Forget every mapping of one NAT or both (conntrack -F in the NAT's "
        "namespace), as a router reboot does. With a cone NAT the next packet from inside makes "
        "the mapping again, so the tunnel heals within WireGuard's keepalive; meanwhile the "
        "peer's packets hit the NAT's stateful drop.",
        epilog=example(
            "sudo punchguard lab cut               # both NATs",
            "sudo punchguard lab cut --side a",
            "sudo punchguard lab cut --side b --name pl1a2b",
        ),
        formatter_class=fmt,
    )
    p.add_argument("--side", choices=("a", "b", "both"), default="both")
    p.add_argument("--name", help="lab id (default: the only lab)")
    p.set_defaults(func=cmd_cut)

    p = lsub.add_parser(
        "rebind",
        help="move a NAT's public ports to another range: the old path is dead",
        description="The NAT maps its hosts to another public port range (MASQUERADE "
        "--to-ports, alternating 10000-19999 / 20000-29999) and forgets its mappings. The "
        "host's packets now come from a port the peer's NAT never saw: only a new punch "
        "(through signaling) brings the tunnel back.",
        epilog=example(
            "sudo punchguard lab rebind a",
            "sudo punchguard lab rebind b --name X",
            "sudo punchguard lab rebind a --reset   # keep source ports again (path unchanged)",
        ),
        formatter_class=fmt,
    )
    p.add_argument("side", choices=("a", "b"))
    p.add_argument("--reset", action="store_true", help="undo the port range change only")
    p.add_argument("--name", help="lab id (default: the only lab)")
    p.set_defaults(func=cmd_rebind)

    p = lsub.add_parser(
        "partition",
        help="drop all traffic between the two NATs for N seconds",
        description="Drop every packet between the NATs' public addresses, both ways, for "
        "--seconds (raw-table rules tagged pg-partition in each NAT). Tox and STUN traffic to "
        "the public services still flows. The rules are removed when the time is up, on Ctrl-C "
        "and on SIGTERM; after a SIGKILL, --heal removes them.",
        epilog=example(
            "sudo punchguard lab partition --seconds 30",
            "sudo punchguard lab partition --heal",
        ),
        formatter_class=fmt,
    )
    p.add_argument("--seconds", type=float, help="how long the partition lasts")
    p.add_argument("--heal", action="store_true", help="remove a partition now")
    p.add_argument("--name", help="lab id (default: the only lab)")
    p.set_defaults(func=cmd_partition)

    p = lsub.add_parser(
        "ctl",
        help="supervisorctl on one lab host (restart a stage, status, ...)",
        description="Runs `punchguard ctl ARGS` (supervisorctl for the host's stack) in the "
        "host's namespace with its environment.",
        epilog=example(
            "sudo punchguard lab ctl a -- status",
            "sudo punchguard lab ctl b -- restart punchguard:punchd",
            "sudo punchguard lab ctl a -- restart 'punchguard:*'",
        ),
        formatter_class=fmt,
    )
    p.add_argument("host", choices=("a", "b"))
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="-- ARGS")
    p.add_argument("--name", help="lab id (default: the only lab)")
    p.set_defaults(func=cmd_ctl)
