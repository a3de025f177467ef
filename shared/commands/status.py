"""`punchguard status`: one screen with each stage's state and, for anything wrong, why.

``explain()`` is pure (states in, lines and problems out) and unit-tested; the command
listens to the bus for a little over one heartbeat to collect the states.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from punchguard import SERVICES
from punchguard import config as configmod
from punchguard.bus import Bus, endpoint_path
from punchguard.commands import EXIT_FAIL, EXIT_OK, example
from punchguard.messages import (
    GuardState,
    GuardStateKind,
    Message,
    NatKind,
    OtrState,
    OtrStateKind,
    PunchState,
    PunchStateKind,
    SignalState,
    SignalStateKind,
    Transport,
)
from punchguard.messages import Path as PathMsg
from punchguard.tap import message_fields


@dataclass
class Report:
    lines: list[tuple[str, str]] = field(default_factory=list)  # (label, text)
    problems: list[str] = field(default_factory=list)
    tunnel_up: bool = False


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts > 0 else "?"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def _nat(kind: NatKind) -> str:
    return {
        NatKind.UNKNOWN: "unknown",
        NatKind.ENDPOINT_INDEPENDENT: "endpoint-independent (cone)",
        NatKind.ENDPOINT_DEPENDENT: "endpoint-dependent (symmetric)",
        NatKind.NO_NAT: "no NAT",
    }[kind]


def explain(
    states: dict[str, Message],
    path: PathMsg | None,
    cfg: configmod.Config,
    running: dict[str, bool],
) -> Report:
    """What each stage says, in words, and why anything is not working."""
    r = Report()
    peer = cfg.peer
    if peer.tox_address:
        r.lines.append(
            (
                "peer",
                f"Tox {peer.tox_address[:16]}…  OTR {peer.otr_fingerprint[:8].upper()}…  "
                f"WireGuard {peer.wireguard_public_key[:10]}…  tunnel {peer.tunnel_address}",
            )
        )
    else:
        r.lines.append(("peer", "not paired"))
        r.problems.append("not paired: run `punchguard pair CODE` with the other host's code")

    for service in SERVICES:
        if service not in states:
            why = "no answer on the bus" if running.get(service) else "not running"
            r.lines.append((service, why))
            r.problems.append(
                f"{service} {why} (see `punchguard ctl status` and its log in "
                f"{cfg.paths.runtime_dir}/{service}.log)"
            )

    guard = states.get("guardd")
    sig = states.get("signald")
    otr = states.get("otrd")
    punch = states.get("punchd")

    if isinstance(guard, GuardState):
        text = guard.state.name.lower().replace("_", " ")
        if guard.interface:
            text += f": {guard.interface} ({guard.backend})"
        if guard.endpoint:
            text += f", endpoint {guard.endpoint}"
        if guard.last_handshake_age >= 0:
            text += f", last handshake {guard.last_handshake_age:.0f} s ago"
        text += f", rx {_bytes(guard.rx_bytes)} tx {_bytes(guard.tx_bytes)}"
        r.lines.append(("guardd", text))
        r.tunnel_up = guard.state == GuardStateKind.UP
        if guard.state in (GuardStateKind.DOWN, GuardStateKind.ERROR):
            r.problems.append(f"WireGuard {guard.state.name.lower()}: {guard.reason or '?'}")

    if isinstance(sig, SignalState):
        text = {
            SignalStateKind.OFFLINE: "Tox offline",
            SignalStateKind.BOOTSTRAPPING: "connecting to the Tox network",
            SignalStateKind.ONLINE: f"online ({sig.self_conn.name}), peer offline",
            SignalStateKind.PEER_ONLINE: f"peer online ({sig.peer_conn.name})",
            SignalStateKind.ERROR: "error",
        }[sig.state]
        text += f" since {_clock(sig.since)}"
        r.lines.append(("signald", text))
        if sig.state == SignalStateKind.OFFLINE and r.tunnel_up and not sig.want_online:
            pass  # the on-demand policy: no open door while the tunnel is up
        elif sig.state == SignalStateKind.ERROR:
            r.problems.append(f"Tox: {sig.reason or 'error'}")
        elif sig.state == SignalStateKind.ONLINE and not r.tunnel_up:
            r.problems.append(
                f"peer offline on Tox since {_clock(sig.peer_since or sig.since)}: is its stack "
                "running, and has it paired with this host's code (`punchguard invite`)?"
            )
        elif sig.state == SignalStateKind.BOOTSTRAPPING and not r.tunnel_up:
            r.problems.append(
                "not connected to the Tox network yet: check the bootstrap nodes "
                "(`punchguard doctor`)"
            )
        elif sig.state == SignalStateKind.OFFLINE and not r.tunnel_up:
            r.problems.append(f"Tox is offline: {sig.reason or 'policy'}")
        if sig.peer_conn == Transport.TCP and sig.state == SignalStateKind.PEER_ONLINE:
            pass  # a TCP relay is fine for signaling

    if isinstance(otr, OtrState):
        text = otr.state.name.lower().replace("_", " ")
        if otr.state == OtrStateKind.SECURE:
            text += ", fingerprint verified" if otr.verified else ", fingerprint NOT verified"
        r.lines.append(("otrd", text + (f" ({otr.reason})" if otr.reason else "")))
        if otr.state == OtrStateKind.FAILED:
            r.problems.append(f"OTR failed: {otr.reason or '?'}")
        elif otr.state == OtrStateKind.SECURE and not otr.verified:
            r.problems.append("OTR fingerprint mismatch: the peer is not the one you paired with")

    if isinstance(punch, PunchState):
        text = punch.state.name.lower()
        if punch.role is not None:
            text += f", {punch.role.name.lower()}"
        text += f"; NAT here {_nat(punch.nat)}, peer {_nat(punch.peer_nat)}"
        r.lines.append(("punchd", text))
        both_symmetric = (
            punch.nat == NatKind.ENDPOINT_DEPENDENT and punch.peer_nat == NatKind.ENDPOINT_DEPENDENT
        )
        if both_symmetric and not cfg.ice.turn_servers:
            r.problems.append("both sides behind symmetric NAT and no TURN server configured")
        elif punch.state in (PunchStateKind.FAILED, PunchStateKind.BACKOFF) and not r.tunnel_up:
            retry = f", next try at {_clock(punch.retry_at)}" if punch.retry_at else ""
            r.problems.append(f"hole punching failed: {punch.reason or '?'}{retry}")

    if path is not None:
        kind = "relayed" if path.relayed else "direct"
        r.lines.append(
            (
                "path",
                f"{kind}: local port {path.local_port} -> {path.endpoint_host}:"
                f"{path.endpoint_port} ({path.local_type.name.lower()} -> "
                f"{path.remote_type.name.lower()})",
            )
        )
        if path.relayed and isinstance(punch, PunchState) and " via " in punch.reason:
            # punchd's reason on a relayed path: "relayed via HOST:PORT (TURN); direct failed:
            # WHY[; next direct try in N s]" (docs/turn.md)
            r.lines.append(("relay", punch.reason[punch.reason.index("via ") :]))
    r.lines.append(("tunnel", "UP" if r.tunnel_up else "DOWN"))
    return r


async def collect(runtime_dir: Path, wait: float) -> tuple[dict[str, Message], PathMsg | None]:
    states: dict[str, Message] = {}
    path: PathMsg | None = None
    async with Bus(None, runtime_dir) as bus:
        for service in SERVICES:
            bus.subscribe(service)
        deadline = time.monotonic() + wait
        while len(states) < len(SERVICES) or path is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                item = await asyncio.wait_for(bus.receive(), left)
            except TimeoutError:
                break
            if item.env.type.endswith(".state"):
                states[item.endpoint] = item.msg
            elif isinstance(item.msg, PathMsg) and item.endpoint == "punchd":
                path = item.msg
    return states, path


def cmd_status(args: argparse.Namespace) -> int:
    cfg = configmod.load(args.config)
    runtime_dir = Path(args.runtime_dir) if args.runtime_dir else cfg.paths.runtime_dir
    wait = args.wait if args.wait is not None else cfg.bus.heartbeat * 1.5 + 0.2
    states, path = asyncio.run(collect(runtime_dir, wait))
    running = {s: endpoint_path(runtime_dir, s).exists() for s in SERVICES}
    report = explain(states, path, cfg, running)
    if args.json:
        print(
            json.dumps(
                {
                    "tunnel": "up" if report.tunnel_up else "down",
                    "problems": report.problems,
                    "stages": {
                        s: ({"type": m.TYPE, **message_fields(m)} if (m := states.get(s)) else None)
                        for s in SERVICES
                    },
                    "path": message_fields(path) if path else None,
                },
                indent=2,
            )
        )
    else:
        for label, text in report.lines:
            print(f"{label:<8} {text}")
        for problem in report.problems:
            print(f"why:     {problem}")
    return EXIT_OK if report.tunnel_up else EXIT_FAIL


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser(
        "status",
        help="each stage's state, the path, and why anything is not working",
        description="Listen to the bus for one heartbeat and show each stage's state, the "
        "peer, the path (direct or relayed, candidate types, NAT types), the last handshake, "
        "bytes in/out, and for anything not working, why. Exit 0 when the tunnel is up.",
        epilog=example("punchguard status", "punchguard status --json | jq .problems"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--runtime-dir", metavar="DIR", help="where the bus sockets are")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--wait", type=float, help="seconds to listen (default: 1.5 heartbeats)")
    s.set_defaults(func=cmd_status)
