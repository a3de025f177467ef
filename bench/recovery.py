"""Recovery benchmark in the two-NAT lab (root): time from a fault to the first ping reply.

    sudo .venv/bin/python -m bench.recovery [--rounds 3] [--policies always,on-demand]
                                             [--faults cut_a,cut_b,cut_both,rebind_a,...]
                                             [--partition-seconds 10]

For each policy: one lab, both stacks up, a ping a -> b every 100 ms through the tunnel. Each
round applies every fault in turn (the same functions as ``punchguard lab cut|rebind|
partition``; a host reboot is ``punchguard down`` + ``punchguard start``), waits for the first
reply to a ping *sent* after the fault (for a partition: after it healed), then for both
guardd to say UP, and settles for 3 s. Between rounds the rebindings are undone (``lab rebind
--reset``, then one unmeasured cut of both NATs so that the path is punched again through NATs
that keep source ports), so every round starts from the same state. Reported per fault:
median, min, max (seconds) and the number of recoveries. Prints one JSON object.

Goals (issue 9): under 10 s for a path cut with the always-on policy, under 20 s on-demand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from punchguard import faults, log
from punchguard import lab as labmod
from punchguard.commands.lab import tunnel_addresses, watch
from punchguard.netlab import NatLab

FAULTS = ("cut_a", "cut_b", "cut_both", "partition", "reboot_a", "rebind_a", "rebind_b")


def guards_up(info: labmod.LabInfo) -> bool:
    for host in info.hosts.values():
        r = host.punchguard("status", "--json", timeout=30)
        try:
            if json.loads(r.stdout)["stages"]["guardd"]["state"] != "up":
                return False
        except (ValueError, KeyError, TypeError):
            return False
    return True


def apply_fault(info: labmod.LabInfo, fault: str, partition_s: float) -> float:
    """Apply ``fault``; returns the unix time recovery is measured from."""
    kind, _, side = fault.partition("_")
    if kind == "cut":
        faults.cut(info, side)
    elif kind == "rebind":
        faults.rebind(info, side)  # type: ignore[arg-type]  # "a" / "b" from FAULTS
    elif kind == "partition":
        faults.partition(info)
        try:
            time.sleep(partition_s)
        finally:
            faults.heal(info)
    elif kind == "reboot":
        host = info.hosts[side]
        host.punchguard("down", timeout=60)
        started = time.time()
        host.punchguard("start", timeout=60)
        return started
    else:
        raise SystemExit(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")
    return time.time()


def settle(info: labmod.LabInfo, pinger: faults.Pinger) -> None:
    """Undo the rebindings for the next round (not measured): remove their rules, then cut
    both NATs once, so that the path is punched again through NATs that keep source ports
    (the path in use still has a mapping from the rebound range, and a later cut would be a
    rebinding again)."""
    for side in labmod.HOSTS:
        faults.unrebind(info, side)
    faults.cut(info, "both")
    pinger.wait_reply_after(time.time(), 120)
    deadline = time.monotonic() + 60
    while not guards_up(info) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)


def one_policy(
    policy: str, fault_list: list[str], rounds: int, partition_s: float, say: Callable[[str], None]
) -> dict[str, Any]:
    lab_id = "rb" + secrets.token_hex(2)
    info = labmod.build(lab_id, policy=policy, say=lambda _m: None, start=False)
    times: dict[str, list[float]] = {f: [] for f in fault_list}
    failures: dict[str, int] = {f: 0 for f in fault_list}
    try:
        labmod.start_stacks(info)
        asyncio.run(watch(info, 120, lambda _m: None))
        out = Path(info.workdir) / "ping.txt"
        with faults.Pinger(info, "a", tunnel_addresses(info)["b"], out) as pinger:
            if pinger.wait_reply_after(time.time(), 30) is None:
                raise SystemExit(f"{policy}: the tunnel did not come up")
            for r in range(rounds):
                for fault in fault_list:
                    t = apply_fault(info, fault, partition_s)
                    got = pinger.wait_reply_after(t, 120)
                    if got is None:
                        failures[fault] += 1
                        say(f"{policy} round {r + 1}: {fault}: NOT recovered within 120 s")
                    else:
                        times[fault].append(round(got - t, 3))
                        say(f"{policy} round {r + 1}: {fault}: {got - t:.2f} s")
                    deadline = time.monotonic() + 60
                    while not guards_up(info) and time.monotonic() < deadline:
                        time.sleep(0.5)
                    time.sleep(3)
                if any(f.startswith("rebind") for f in fault_list):
                    settle(info, pinger)
    finally:
        labmod.destroy(info)
        NatLab.cleanup_leftovers(lab_id)
    return {
        f: {
            "median_s": statistics.median(ts) if ts else None,
            "min_s": min(ts) if ts else None,
            "max_s": max(ts) if ts else None,
            "recovered": len(ts),
            "not_recovered": failures[f],
            "times_s": ts,
        }
        for f, ts in times.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--policies", default="always,on-demand")
    p.add_argument("--faults", default=",".join(FAULTS))
    p.add_argument("--partition-seconds", type=float, default=10.0)
    args = p.parse_args()
    log.setup("bench", "warning")

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    fault_list = [f for f in args.faults.split(",") if f]
    out: dict[str, Any] = {
        "rounds": args.rounds,
        "partition_seconds": args.partition_seconds,
        "measured_from": "fault applied (partition: healed; reboot: punchguard start) to the "
        "first reply to a ping sent after it, ping every 100 ms a -> b",
        "policies": {},
    }
    for policy in args.policies.split(","):
        out["policies"][policy] = one_policy(
            policy, fault_list, args.rounds, args.partition_seconds, say
        )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
