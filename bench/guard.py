"""guardd benchmark (root): path-to-handshake time, and throughput through guardd's tunnel
against the same namespaces with wireguard-go configured by hand (``wg set``).

Run from the repository root: ``.venv/bin/python -m bench.guard [--rounds 5] [--seconds 5]``.
Prints one JSON object. The ratio should be about 1.0: guardd is not in the data plane.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import subprocess
import time
from typing import Any

from guardd import keys, uapi
from punchguard.messages import GuardStateKind
from tests.integration.guardd_lab import TUNNEL, UNDERLAY, Lab, sh

MANUAL_TUNNEL = {"a": "10.78.0.1", "b": "10.78.0.2"}
MANUAL_PORT = {"a": 52101, "b": 52102}


def iperf_server(lab: Lab) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        lab.netns_exec("b", "iperf3", "-s", "-p", "5301"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        listening = sh(*lab.netns_exec("b", "ss", "-Hltn", "sport = :5301")).stdout
        if listening.strip():
            break
        time.sleep(0.05)
    return server


def iperf(lab: Lab, server_addr: str, seconds: int) -> float:
    """Mbit/s from host a to host b's ``server_addr`` (iperf3, one TCP stream)."""
    client = ("iperf3", "-J", "-c", server_addr, "-p", "5301", "-t", str(seconds))
    done = subprocess.run(
        lab.netns_exec("a", *client), capture_output=True, text=True, timeout=seconds + 30
    )
    result: dict[str, Any] = json.loads(done.stdout)
    if "error" in result:
        raise RuntimeError(f"iperf3 to {server_addr}: {result['error']}")
    return float(result["end"]["sum_received"]["bits_per_second"]) / 1e6


def manual_tunnel(lab: Lab) -> list[subprocess.Popen[bytes]]:
    """A second wireguard-go pair in the same namespaces, configured by hand with ``wg set``."""
    procs = []
    pairs = {n: keys.ensure_key(lab.hosts[n].root / "manual") for n in "ab"}
    for n in "ab":
        peer = "b" if n == "a" else "a"
        ifname = f"{lab.run_id}m{n}"
        procs.append(
            subprocess.Popen(
                lab.netns_exec(n, "wireguard-go", "-f", ifname),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        for _ in range(500):
            if uapi.socket_path(ifname).exists():
                break
            time.sleep(0.01)
        sh(*lab.netns_exec(n, "ip", "addr", "add", f"{MANUAL_TUNNEL[n]}/24", "dev", ifname))
        sh(*lab.netns_exec(n, "ip", "link", "set", ifname, "up"))
        sh(
            *lab.netns_exec(n, "wg", "set", ifname, "private-key"),
            str(keys.key_path(lab.hosts[n].root / "manual")),
            *("listen-port", str(MANUAL_PORT[n]), "peer", pairs[peer].public_key),
            *("endpoint", f"{UNDERLAY[peer]}:{MANUAL_PORT[peer]}"),
            *("allowed-ips", f"{MANUAL_TUNNEL[peer]}/32", "persistent-keepalive", "5"),
        )
    return procs


async def handshake_round(run_id: str) -> dict[str, float]:
    async with Lab(run_id) as lab:
        for h in lab.hosts.values():
            h.start_guardd()
        for n in "ab":
            await lab.wait_state(n, lambda s: s.state is GuardStateKind.NO_PATH)
        t0 = time.time()
        lab.give_path("a")
        lab.give_path("b")
        await lab.wait_state("a", lambda s: s.state is GuardStateKind.UP)
        t_up = time.time()
        dev = await uapi.get(uapi.socket_path(lab.hosts["a"].ifname))
        return {"handshake_s": dev.peers[0].last_handshake - t0, "up_reported_s": t_up - t0}


async def throughput(run_id: str, rounds: int, seconds: int) -> dict[str, Any]:
    async with Lab(run_id) as lab:
        for h in lab.hosts.values():
            h.start_guardd()
        lab.give_path("a")
        lab.give_path("b")
        for n in "ab":
            await lab.wait_state(n, lambda s: s.state is GuardStateKind.UP)
        procs = manual_tunnel(lab)
        procs.append(iperf_server(lab))
        try:
            ping = lab.netns_exec("a", "ping", "-c", "1", "-W", "5", MANUAL_TUNNEL["b"])
            sh(*ping)
            guarded, manual = [], []
            for _ in range(rounds):
                guarded.append(await asyncio.to_thread(iperf, lab, TUNNEL["b"], seconds))
                manual.append(await asyncio.to_thread(iperf, lab, MANUAL_TUNNEL["b"], seconds))
            underlay = await asyncio.to_thread(iperf, lab, UNDERLAY["b"], seconds)
        finally:
            for p in procs:
                p.kill()
                p.wait()
            for n in "ab":
                uapi.socket_path(f"{lab.run_id}m{n}").unlink(missing_ok=True)
        g, m = statistics.median(guarded), statistics.median(manual)
        return {
            "guardd_mbit_s": [round(x) for x in guarded],
            "manual_mbit_s": [round(x) for x in manual],
            "guardd_median_mbit_s": round(g),
            "manual_median_mbit_s": round(m),
            "ratio_guardd_over_manual": round(g / m, 3),
            "underlay_mbit_s": round(underlay),
        }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    hs = [await handshake_round("pg" + secrets.token_hex(3)) for _ in range(args.rounds)]
    tp = await throughput("pg" + secrets.token_hex(3), args.rounds, args.seconds)
    print(
        json.dumps(
            {
                "bench": "guardd",
                "rounds": args.rounds,
                "path_to_handshake_s": [round(r["handshake_s"], 4) for r in hs],
                "path_to_handshake_median_s": round(
                    statistics.median(r["handshake_s"] for r in hs), 4
                ),
                "path_to_up_reported_median_s": round(
                    statistics.median(r["up_reported_s"] for r in hs), 4
                ),
                "throughput": tp,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
