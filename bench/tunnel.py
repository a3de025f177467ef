"""End-to-end benchmark in the two-NAT lab (root): time to tunnel and tunnel throughput.

    sudo .venv/bin/python -m bench.tunnel [--runs 3] [--policies on-demand,always]
                                           [--iperf-seconds 5]

For each policy and run: a fresh lab whose hosts are already paired (``lab.build(start=False)``),
then both stacks started at t=0; reported per stage (medians over the runs, seconds from t=0):
Tox peer online, OTR secure, ICE path, WireGuard handshake (guardd "up"), first ping reply
from a to b. ``after_peer_online`` is first ping minus peer online (goal: under 1 s).

Throughput: iperf3 (TCP, a -> b, ``--iperf-seconds``) through PunchGuard's tunnel, then through
wireguard-go configured by hand between the same two hosts on the same punched ports (the NAT
mappings are still warm), and the ratio (goal: about 1.0: no Python on the data plane).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

from punchguard import lab as labmod
from punchguard import log
from punchguard.commands.lab import tunnel_addresses, watch

STAGES = ("peer_online", "otr_secure", "path", "tunnel_up")


def first_ping(info: labmod.LabInfo, dst: str, t0: float, limit: float) -> float | None:
    host = info.hosts["a"]
    deadline = t0 + limit
    while time.monotonic() < deadline:
        try:
            addr = tunnel_addresses(info)[dst]
        except (OSError, KeyError):
            time.sleep(0.1)
            continue
        r = subprocess.run(host.argv(["ping", "-c", "1", "-W", "1", addr]), capture_output=True)
        if r.returncode == 0:
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def one_run(policy: str, lab_id: str, limit: float) -> dict[str, float | None]:
    info = labmod.build(lab_id, policy=policy, say=lambda _m: None, start=False)
    try:
        result: dict[str, float | None] = {}
        t0 = time.monotonic()
        pinger = threading.Thread(
            target=lambda: result.__setitem__("first_ping", first_ping(info, "b", t0, limit))
        )
        labmod.start_stacks(info)
        pinger.start()
        flows = asyncio.run(watch(info, limit, lambda _m: None))
        pinger.join()
        a = flows["a"]
        for stage in STAGES:
            t = a.reached.get(stage)
            result[stage] = None if t is None else round(t - t0, 3)
        fp, po = result.get("first_ping"), result.get("peer_online")
        result["after_peer_online"] = (
            round(fp - po, 3) if fp is not None and po is not None else None
        )
        return result
    finally:
        labmod.destroy(info)


def iperf(info: labmod.LabInfo, addr: str, seconds: int) -> float:
    a, b = info.hosts["a"], info.hosts["b"]
    server = subprocess.Popen(b.argv(["iperf3", "-s", "-1", "-B", addr]), stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        r = subprocess.run(
            a.argv(["iperf3", "-c", addr, "-t", str(seconds), "-J"]),
            capture_output=True, text=True, timeout=seconds + 30, check=True,
        )  # fmt: skip
    finally:
        server.kill()
        server.wait()
    bits: float = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]
    return round(bits / 1e6, 1)


def by_hand(info: labmod.LabInfo, seconds: int) -> float:
    """The same hosts and punched ports, with wireguard-go and `wg` configured by hand."""
    ports: dict[str, tuple[int, str]] = {}
    for name, host in info.hosts.items():
        show = host.run(["wg", "show", host.interface, "dump"]).stdout.splitlines()
        listen_port = int(show[0].split("\t")[2])
        endpoint = show[1].split("\t")[2]
        ports[name] = (listen_port, endpoint)
    for host in info.hosts.values():
        host.punchguard("stop", timeout=30)
        host.punchguard("down", timeout=30)
    addrs = {}
    for name, host in info.hosts.items():
        rec = tomllib.loads((host.state_dir / "peer.toml").read_text())
        key = (host.state_dir / "guardd" / "wg.key").read_text().strip()
        iface = f"{host.interface}h"[-15:]
        keyfile = Path(host.dir) / "hand.key"
        keyfile.write_text(key + "\n")
        keyfile.chmod(0o600)
        listen, endpoint = ports[name]
        steps = [
            ["wireguard-go", iface],
            ["wg", "set", iface, "private-key", str(keyfile), "listen-port", str(listen),
             "peer", rec["peer"]["wireguard_public_key"], "endpoint", endpoint,
             "allowed-ips", rec["peer"]["tunnel_address"].split("/")[0] + "/32",
             "persistent-keepalive", "5"],
            ["ip", "addr", "add", rec["wireguard"]["address"], "dev", iface],
            ["ip", "link", "set", iface, "up"],
        ]  # fmt: skip
        for argv in steps:
            host.run(argv)
        addrs[name] = rec["wireguard"]["address"].split("/")[0]
    subprocess.run(info.hosts["a"].argv(["ping", "-c", "3", "-W", "2", addrs["b"]]),
                   capture_output=True)  # fmt: skip
    try:
        return iperf(info, addrs["b"], seconds)
    finally:
        for host in info.hosts.values():
            host.run(["ip", "link", "del", f"{host.interface}h"[-15:]])


def median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return round(statistics.median(got), 3) if got else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--policies", default="on-demand,always")
    p.add_argument("--iperf-seconds", type=int, default=5)
    p.add_argument("--timeout", type=float, default=90.0)
    args = p.parse_args()
    log.setup("bench", "warning")
    out: dict[str, Any] = {"bench": "tunnel", "runs": args.runs, "policies": {}}
    for policy in args.policies.split(","):
        runs = [one_run(policy, f"pgb{i}{policy[0]}", args.timeout) for i in range(args.runs)]
        out["policies"][policy] = {
            "median": {
                k: median([r.get(k) for r in runs])
                for k in (*STAGES, "first_ping", "after_peer_online")
            },
            "runs": runs,
        }
    info = labmod.build("pgbt", say=lambda _m: None)
    try:
        asyncio.run(watch(info, args.timeout, lambda _m: None))
        through = iperf(info, tunnel_addresses(info)["b"], args.iperf_seconds)
        hand = by_hand(info, args.iperf_seconds)
    finally:
        labmod.destroy(info)
    out["throughput_mbit_s"] = {
        "punchguard": through,
        "wireguard_go_by_hand": hand,
        "ratio": round(through / hand, 2) if hand else None,
    }
    out["goals"] = {"first_ping_s_max": 15, "after_peer_online_s_max": 1}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
