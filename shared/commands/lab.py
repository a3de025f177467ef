"""`punchguard lab`: the two-NAT lab on this machine (see punchguard.lab)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import subprocess
import time
import tomllib
from collections.abc import Callable

from punchguard import SERVICES
from punchguard import lab as labmod
from punchguard.bus import Bus
from punchguard.commands import EXIT_FAIL, EXIT_OK, CommandError, example, labfaults
from punchguard.flow import LABELS, MILESTONES, Flow
from punchguard.netlab import LabError, NatBehaviour, NatLab

DEFAULT_TIMEOUT = 90.0  # seconds from both stacks started to tunnel up (measured: ~15 s)


def _say(msg: str) -> None:
    print(msg, flush=True)


async def watch(
    info: labmod.LabInfo, limit: float, say: Callable[[str], None] = _say
) -> dict[str, Flow]:
    """Follow both hosts' buses until both tunnels are up or ``limit`` s; print milestones."""
    flows = {name: Flow() for name in info.hosts}
    async with contextlib.AsyncExitStack() as stack:
        buses: dict[str, Bus] = {}
        for name, host in info.hosts.items():
            bus = await stack.enter_async_context(Bus(None, host.runtime_dir))
            for service in SERVICES:
                bus.subscribe(service)
            buses[name] = bus

        async def follow(name: str) -> None:
            flow = flows[name]
            while "tunnel_up" not in flow.reached:
                item = await buses[name].receive()
                for milestone in flow.feed(item):
                    say(f"[{flow.elapsed(milestone):6.1f}s] {name}: {LABELS[milestone]}")

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await asyncio.gather(*(follow(n) for n in info.hosts))
    return flows


def tunnel_addresses(info: labmod.LabInfo) -> dict[str, str]:
    out = {}
    for name, host in info.hosts.items():
        rec = tomllib.loads((host.state_dir / "peer.toml").read_text())
        out[name] = rec["wireguard"]["address"].split("/")[0]
    return out


def ping(info: labmod.LabInfo, src: str, dst: str, count: int = 3) -> tuple[bool, str]:
    addr = tunnel_addresses(info)[dst]
    r = info.hosts[src].run(["ping", "-c", str(count), "-i", "0.2", "-W", "2", addr], timeout=30)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", r.stdout)
    return r.returncode == 0, (f"{addr}, avg {rtt.group(1)} ms" if rtt else addr)


def up(args: argparse.Namespace) -> tuple[labmod.LabInfo, bool]:
    lab_id = args.name or f"pl{secrets.token_hex(2)}"
    _say(
        f"lab {lab_id}: NAT a {args.nat_a}, NAT b {args.nat_b}, policy {args.policy}"
        + (", TURN" if args.turn else "")
    )
    try:
        info = labmod.build(
            lab_id,
            nat_a=NatBehaviour(args.nat_a),
            nat_b=NatBehaviour(args.nat_b),
            turn=args.turn,
            policy=args.policy,
            say=_say,
        )
    except LabError as e:
        raise CommandError(f"could not build the lab: {e}", EXIT_FAIL) from None
    started = time.monotonic()
    _say(f"waiting for the tunnel (up to {args.timeout:.0f} s)...")
    flows = asyncio.run(watch(info, args.timeout))
    took = time.monotonic() - started
    ok = all("tunnel_up" in f.reached for f in flows.values())
    if not ok:
        _say(f"the tunnel did not come up within {args.timeout:.0f} s. Where each host stands:")
        for name, host in info.hosts.items():
            missing = [LABELS[m] for m in MILESTONES if m not in flows[name].reached]
            _say(f"  {name}: not reached: {', '.join(missing) or '-'}")
            r = host.punchguard("status", timeout=30)
            for line in r.stdout.splitlines():
                _say(f"    {line}")
        return info, False
    _say(f"tunnel up in {took:.1f} s; path: a {flows['a'].path_text()}")
    _say(f"                      b {flows['b'].path_text()}")
    for src, dst in (("a", "b"), ("b", "a")):
        good, text = ping(info, src, dst)
        _say(f"ping {src} -> {dst} ({text}): {'ok' if good else 'FAILED'}")
        ok = ok and good
    return info, ok


def cmd_up(args: argparse.Namespace) -> int:
    info, ok = up(args)
    _say(
        f"\nlab {info.lab_id} is up. Try:\n"
        f"  punchguard lab exec a -- ping {tunnel_addresses(info)['b']}\n"
        "  punchguard lab exec a -- punchguard tap\n"
        "  punchguard lab exec b -- punchguard ctl restart punchguard:otrd\n"
        "  punchguard lab status\n"
        "  punchguard lab down"
        if ok
        else f"\nlab {info.lab_id} is left up for inspection; `punchguard lab down` removes it"
    )
    return EXIT_OK if ok else EXIT_FAIL


def cmd_demo(args: argparse.Namespace) -> int:
    info: labmod.LabInfo | None = None
    try:
        info, ok = up(args)
    finally:
        if info is not None:
            _say(f"removing lab {info.lab_id}...")
            labmod.destroy(info)
    _say("demo passed: tunnel up, ping crossed both ways" if ok else "demo FAILED")
    return EXIT_OK if ok else EXIT_FAIL


def cmd_status(args: argparse.Namespace) -> int:
    info = labfaults.find(args)
    result = {}
    all_up = True
    for name, host in info.hosts.items():
        r = host.punchguard("status", *(("--json",) if args.json else ()), timeout=30)
        all_up = all_up and r.returncode == 0
        if args.json:
            result[name] = json.loads(r.stdout) if r.stdout.strip() else None
        else:
            print(f"== host {name} ({host.ns})")
            print(r.stdout.rstrip())
    if args.json:
        print(json.dumps({"lab": info.lab_id, "hosts": result}, indent=2))
    return EXIT_OK if all_up else EXIT_FAIL


def cmd_exec(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd[:1] == ["--name"] and len(cmd) > 1:  # `exec a --name X -- CMD` works too
        args.name, cmd = cmd[1], cmd[2:]
    cmd = cmd[1:] if cmd[:1] == ["--"] else cmd
    info = labfaults.find(args)
    if not cmd:
        raise CommandError("nothing to run: punchguard lab exec a -- CMD ...")
    host = info.hosts[args.host]
    with contextlib.suppress(KeyboardInterrupt):
        return subprocess.call(host.argv(cmd), env=host.env())
    return 130


def cmd_down(args: argparse.Namespace) -> int:
    labs = labmod.find_labs()
    if args.name:
        labs = [x for x in labs if x.lab_id == args.name]
        if not labs:
            # after a crash lab.json may be gone: clean up by name
            for line in NatLab.cleanup_leftovers(args.name):
                print(f"removed namespace {line}")
            print(f"lab {args.name}: nothing (more) to remove")
            return EXIT_OK
    if not labs:
        print("no lab is up")
        return EXIT_OK
    for info in labs:
        for line in labmod.destroy(info):
            print(line)
        print(f"lab {info.lab_id} removed")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    lab = sub.add_parser(
        "lab",
        help="the two-NAT lab on this machine (network namespaces; root)",
        description="Two PunchGuard hosts behind two NATs on this machine, with a private Tox "
        "network, coturn, and one supervisord per host. See README: The lab.",
        epilog=example(
            "sudo punchguard lab demo                 # up, ping both ways, down",
            "sudo punchguard lab up --nat-b symmetric --turn",
            "sudo punchguard lab exec a -- punchguard tap",
            "sudo punchguard lab cut --side a        # faults: cut, rebind, partition",
            "sudo punchguard lab down",
        ),
        formatter_class=fmt,
    )
    lsub = lab.add_subparsers(dest="lab_command", metavar="SUBCOMMAND", required=True)

    def common_up(p: argparse.ArgumentParser) -> None:
        p.add_argument("--nat-a", choices=("cone", "symmetric"), default="cone")
        p.add_argument("--nat-b", choices=("cone", "symmetric"), default="cone")
        p.add_argument("--turn", action="store_true", help="run coturn as TURN too")
        p.add_argument("--policy", choices=("on-demand", "always"), default="on-demand")
        p.add_argument("--name", help="lab id (default: random); names every namespace")
        p.add_argument(
            "--timeout",
            type=float,
            default=DEFAULT_TIMEOUT,
            help=f"seconds to wait for the tunnel (default {DEFAULT_TIMEOUT:.0f})",
        )

    p = lsub.add_parser(
        "up",
        help="build the lab, pair the hosts, start both stacks, wait for the tunnel",
        description="Build the public network (Tox bootstrap node, coturn), two NATs and "
        "hosts a and b; create and pair their identities with punchguard init/invite/pair; "
        "start supervisord on both; show progress; ping across. Exit 1 with the reason if "
        "the tunnel is not up within --timeout (the lab is then left up for inspection).",
        epilog=example("sudo punchguard lab up", "sudo punchguard lab up --policy always"),
        formatter_class=fmt,
    )
    common_up(p)
    p.set_defaults(func=cmd_up)
    p = lsub.add_parser(
        "demo",
        help="lab up, ping across both ways, lab down (the quick-start main job)",
        description="Like `lab up`, then removes the lab whatever happened.",
        epilog=example("sudo punchguard lab demo"),
        formatter_class=fmt,
    )
    common_up(p)
    p.set_defaults(func=cmd_demo)
    p = lsub.add_parser("status", help="both hosts' punchguard status")
    p.add_argument("--name", help="lab id (default: the only lab)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = lsub.add_parser(
        "exec",
        help="run a command in a host's namespace with its environment",
        epilog=example(
            "sudo punchguard lab exec a -- punchguard tap",
            "sudo punchguard lab exec b -- punchguard ctl restart punchguard:otrd",
        ),
        formatter_class=fmt,
    )
    p.add_argument("host", choices=("a", "b"))
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.add_argument("--name", help="lab id (default: the only lab)")
    p.set_defaults(func=cmd_exec)
    p = lsub.add_parser(
        "down",
        help="remove every namespace, process, interface and file of the lab(s)",
        description="Remove the lab named --name, or every lab. Safe to run twice, and "
        "after a crash.",
    )
    p.add_argument("--name", help="lab id (default: every lab)")
    p.set_defaults(func=cmd_down)
    labfaults.register(lsub)  # cut, rebind, partition, ctl (issue 9)
