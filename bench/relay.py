"""Relayed tunnels (TURN) in the two-NAT lab (root): time to tunnel, throughput relayed against
direct, and the outage when punchd on the relayed side is killed (kill -9).

    sudo .venv/bin/python -m bench.relay [--runs 2] [--iperf-seconds 5] [--policy always]

Cases: cone/symmetric (one side relayed), symmetric/symmetric (both relayed), cone/cone
(direct, TURN configured too). Per run: a fresh lab with the hosts paired, both stacks started
at t=0; ``tunnel_up`` (guardd "up" on host a) and ``first_ping`` (a -> b) in seconds from t=0,
and the path kind. Then iperf3 (TCP, a -> b) through the tunnel, and for relayed cases the
outage of a kill -9 of punchd on the relayed side: from the kill to the first ping reply
(ping -W 0.5 in a loop, so up to 0.5 s too long), then the same after a cut (conntrack flush)
of the relayed side's NAT. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import time
from typing import Any

from bench.tunnel import first_ping, iperf, median
from punchguard import lab as labmod
from punchguard import log
from punchguard.commands.lab import tunnel_addresses, watch
from punchguard.netlab import NatBehaviour

CASES = (("cone", "symmetric"), ("symmetric", "symmetric"), ("cone", "cone"))


def punchd_pid(info: labmod.LabInfo, name: str) -> int:
    return labmod.stage_pid(info, name, "punchd")


def path_of(info: labmod.LabInfo, name: str) -> dict[str, Any]:
    r = info.hosts[name].punchguard("status", "--json", timeout=30)
    found: dict[str, Any] = json.loads(r.stdout)["path"] or {}
    return found


def outage_after_kill(info: labmod.LabInfo, side: str, limit: float) -> float | None:
    addr = tunnel_addresses(info)["b" if side == "a" else "a"]
    src = info.hosts[side]
    os.kill(punchd_pid(info, side), signal.SIGKILL)
    t0 = time.monotonic()
    time.sleep(0.2)
    while time.monotonic() - t0 < limit:
        r = subprocess.run(src.argv(["ping", "-c", "1", "-W", "0.5", addr]), capture_output=True)
        if r.returncode == 0:
            return round(time.monotonic() - t0, 2)
    return None


def outage_after_cut(info: labmod.LabInfo, side: str, limit: float) -> float | None:
    """conntrack -F in the relayed side's NAT (what ``lab cut`` does), then time to a reply."""
    addr = tunnel_addresses(info)["b" if side == "a" else "a"]
    src = info.hosts[side]
    nat_ns = f"{info.lab_id}-nat{side}"
    subprocess.run(["ip", "netns", "exec", nat_ns, "conntrack", "-F"], capture_output=True)
    t0 = time.monotonic()
    time.sleep(0.2)
    while time.monotonic() - t0 < limit:
        r = subprocess.run(src.argv(["ping", "-c", "1", "-W", "0.5", addr]), capture_output=True)
        if r.returncode == 0:
            return round(time.monotonic() - t0, 2)
    return None


def one_run(case: tuple[str, str], lab_id: str, args: argparse.Namespace) -> dict[str, Any]:
    info = labmod.build(
        lab_id, nat_a=NatBehaviour(case[0]), nat_b=NatBehaviour(case[1]), turn=True,
        policy=args.policy, say=lambda _m: None, start=False,
    )  # fmt: skip
    try:
        t0 = time.monotonic()
        labmod.start_stacks(info)
        flows = asyncio.run(watch(info, args.timeout, lambda _m: None))
        up = flows["a"].reached.get("tunnel_up")
        out: dict[str, Any] = {
            "tunnel_up": None if up is None else round(up - t0, 3),
            "first_ping": _round(first_ping(info, "b", t0, args.timeout)),
        }
        paths = {n: path_of(info, n) for n in ("a", "b")}
        out["relayed"] = any(p.get("relayed") for p in paths.values())
        out["relayed_sides"] = [n for n, p in paths.items() if p.get("local_type") == "relay"]
        out["iperf_mbit_s"] = iperf(info, tunnel_addresses(info)["b"], args.iperf_seconds)
        if out["relayed_sides"]:
            side = out["relayed_sides"][-1]
            out["kill9_side"] = side
            out["kill9_outage_s"] = outage_after_kill(info, side, args.timeout)
            time.sleep(3.0)
            out["cut_outage_s"] = outage_after_cut(info, side, args.timeout)
        return out
    finally:
        labmod.destroy(info)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--iperf-seconds", type=int, default=5)
    p.add_argument("--policy", default="always")
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args()
    log.setup("bench", "warning")
    out: dict[str, Any] = {"bench": "relay", "runs": args.runs, "policy": args.policy}
    for case in CASES:
        name = f"{case[0]}/{case[1]}"
        runs = [one_run(case, f"pgr{i}{case[0][0]}{case[1][0]}", args) for i in range(args.runs)]
        keys = ("tunnel_up", "first_ping", "iperf_mbit_s", "kill9_outage_s", "cut_outage_s")
        out[name] = {
            "median": {k: median([r.get(k) for r in runs]) for k in keys},
            "runs": runs,
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
