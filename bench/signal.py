"""signald benchmark on a private Tox network (one tox-bootstrapd on loopback).

    .venv/bin/python bench/signal.py [--runs 3] [--pings 20] [--cpu-seconds 30]

(``python -m bench.signal`` works too.) Prints one JSON object, medians over ``--runs``:
- ``self_online_s``: from starting ``python -m signald`` to its ``signal.state`` saying ONLINE
  (or PEER_ONLINE), as seen by a bus subscriber;
- ``peer_online_fresh_s``: two signald with new identities, paired by config, started together:
  from the start to both saying PEER_ONLINE;
- ``peer_online_friends_s``: the same two stopped (SIGTERM) and started again from savedata;
- ``peer_online_restart_one_s``: one stopped and restarted while the other stays online;
- ``rtt_ms``: payload round trip through both buses (fake otrd publishes ``signal.send``, the
  other side's fake otrd echoes every ``signal.recv``), back to back (signald's fast iteration);
  ``rtt_idle_ms``: the same with 3 s of silence before each ping (the far side iterates at its
  idle rate);
- ``idle_cpu_percent``: CPU of the busier of the two signald, online with the peer connected
  and no traffic, from /proc/<pid>/stat over ``--cpu-seconds`` (first run only).
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:
    # Run as a script, this file's directory comes first on sys.path, and this file would
    # shadow the standard library's ``signal`` module: put the repository root there instead.
    from pathlib import Path as _Path

    sys.path[0] = str(_Path(__file__).resolve().parents[1])

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
from typing import Any

from punchguard import log
from punchguard.messages import SignalStateKind, Transport
from tests.integration.signald_lab import BootstrapNode, BusProbe, SignaldProcess

TIMEOUT = 90.0


def _peer_online(p: BusProbe) -> bool:
    return p.state is not None and p.state.state == SignalStateKind.PEER_ONLINE


def _online(p: BusProbe) -> bool:
    return p.state is not None and p.state.state in (
        SignalStateKind.ONLINE,
        SignalStateKind.PEER_ONLINE,
    )


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _both(pa: BusProbe, pb: BusProbe, cond: Any, what: str) -> float:
    t0 = time.monotonic()
    await pa.wait_for(lambda: cond(pa), TIMEOUT, what)
    await pb.wait_for(lambda: cond(pb), TIMEOUT, what)
    return time.monotonic() - t0


async def _ping(pa: BusProbe, payload: bytes) -> float:
    t0 = time.monotonic()
    pa.send(payload)
    await pa.wait_for(lambda: any(p == payload for _, p in pa.received), 10, "echo")
    return (time.monotonic() - t0) * 1000


async def one_run(run: int, pings: int, cpu_seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with BootstrapNode() as node:
        a, b = SignaldProcess("ba", node), SignaldProcess("bb", node)
        try:
            a.peer_address, b.peer_address = b.address_offline(), a.address_offline()
            t0 = time.monotonic()
            a.start()
            b.start()
            async with BusProbe(a.runtime_dir) as pa, BusProbe(b.runtime_dir) as pb:
                await pa.wait_for(lambda: _online(pa), TIMEOUT, "a online")
                out["self_online_s"] = time.monotonic() - t0
                await _both(pa, pb, _peer_online, "fresh peers online")
                out["peer_online_fresh_s"] = time.monotonic() - t0

                pb.echo = True
                with contextlib.suppress(TimeoutError):  # measure over UDP where it comes up
                    await pa.wait_for(
                        lambda: pa.state is not None and pa.state.peer_conn == Transport.UDP, 10
                    )
                udp = pa.state is not None and pa.state.peer_conn == Transport.UDP
                out["peer_transport_udp"] = float(udp)
                await _ping(pa, b"warm-up")
                rtts = [await _ping(pa, f"{run}-{i}".encode()) for i in range(pings)]
                out["rtt_ms"] = statistics.median(rtts)
                idle = []
                for i in range(3):
                    await asyncio.sleep(3.0)
                    idle.append(await _ping(pa, f"idle-{run}-{i}".encode()))
                out["rtt_idle_ms"] = statistics.median(idle)

                if run == 0 and cpu_seconds > 0:
                    await asyncio.sleep(3.0)  # out of the fast-iteration window
                    assert a.proc is not None and b.proc is not None
                    pids = (a.proc.pid, b.proc.pid)
                    c0, w0 = [_cpu_seconds(pid) for pid in pids], time.monotonic()
                    await asyncio.sleep(cpu_seconds)
                    used = [_cpu_seconds(pid) - c for pid, c in zip(pids, c0, strict=True)]
                    wall = time.monotonic() - w0
                    out["idle_cpu_percent"] = 100 * max(used) / wall  # the busier of the two

                # restart one, the other stays online
                a.stop()
                await pb.wait_for(lambda: not _peer_online(pb), TIMEOUT, "b sees a go")
                pa.state = None
                t0 = time.monotonic()
                a.start()
                await _both(pa, pb, _peer_online, "a restarted, peers online")
                out["peer_online_restart_one_s"] = time.monotonic() - t0

                # both restart from savedata, already friends
                a.stop()
                b.stop()
                pa.state = pb.state = None
                t0 = time.monotonic()
                a.start()
                b.start()
                await _both(pa, pb, _peer_online, "friends online")
                out["peer_online_friends_s"] = time.monotonic() - t0
        finally:
            a.close()
            b.close()
    return out


async def amain(runs: int, pings: int, cpu_seconds: float) -> dict[str, Any]:
    results = [await one_run(i, pings, cpu_seconds) for i in range(runs)]
    summary: dict[str, Any] = {"runs": runs, "pings_per_run": pings}
    for key in results[0]:
        values = [r[key] for r in results if key in r]
        summary[key] = round(statistics.median(values), 3)
        summary[f"{key}_all"] = [round(v, 3) for v in values]
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--pings", type=int, default=20)
    p.add_argument("--cpu-seconds", type=float, default=30.0)
    args = p.parse_args()
    log.setup("bench", "warning", "console")
    print(json.dumps(asyncio.run(amain(args.runs, args.pings, args.cpu_seconds)), indent=2))


if __name__ == "__main__":
    main()
