"""Bus benchmark: publish-to-receive latency and throughput between two processes over IPC.

    .venv/bin/python -m bench.bus [--rate 1000] [--seconds 5] [--burst 100000]

Prints one JSON object. Latency: a publisher process sends ``signal.recv`` messages carrying
its CLOCK_MONOTONIC send time (system-wide, so comparable across processes) at ``--rate``
messages/s; this process receives them through ``Bus.receive()`` (decode included) and
reports p50/p99/max in microseconds. Throughput: the publisher sends ``--burst`` messages as
fast as it can; we report the messages/s the subscriber decoded, and how many the publisher
dropped at the high-water mark because it outran the subscriber (PUB semantics: a slow
subscriber loses messages instead of slowing the publisher).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from punchguard import log
from punchguard.bus import Bus
from punchguard.messages import SignalRecv, SignalState, SignalStateKind

END = b"end"


async def publisher(runtime_dir: Path, mode: str, rate: float, count: int) -> None:
    async with Bus("benchpub", runtime_dir) as bus:
        # wait until the subscriber says it is connected (it publishes a state)
        bus.subscribe("benchsub")
        await bus.receive()
        if mode == "latency":
            interval = 1.0 / rate
            start = time.monotonic()
            for i in range(count):
                target = start + i * interval
                delay = target - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                bus.publish(SignalRecv(payload=struct.pack("<Q", time.monotonic_ns())))
        else:
            for i in range(count):
                bus.publish(SignalRecv(payload=b"x" * 64))
                if i % 1000 == 999:
                    await asyncio.sleep(0)  # let the I/O thread drain
        for _ in range(50):
            bus.publish(SignalRecv(payload=END))
            await asyncio.sleep(0.01)


async def subscriber(runtime_dir: Path, mode: str, rate: float, count: int) -> dict[str, float]:
    async with Bus("benchsub", runtime_dir) as bus:
        bus.subscribe("benchpub")
        child = subprocess.Popen(  # noqa: ASYNC220  # starting it is instant; it runs apart
            [
                sys.executable,
                __file__,
                "--role",
                "pub",
                "--mode",
                mode,
                "--dir",
                str(runtime_dir),
                "--rate",
                str(rate),
                "--count",
                str(count),
            ]
        )
        latencies: list[float] = []
        received = 0
        first = last = 0.0
        try:
            # announce ourselves until the publisher starts sending
            while True:
                bus.publish(SignalState(state=SignalStateKind.ONLINE))
                try:
                    item = await asyncio.wait_for(bus.receive(), 0.05)
                    break
                except TimeoutError:
                    continue
            while True:
                assert isinstance(item.msg, SignalRecv)
                payload = item.msg.payload
                if payload == END:
                    break
                now = time.monotonic_ns()
                if received == 0:
                    first = time.monotonic()
                received += 1
                last = time.monotonic()
                if mode == "latency":
                    latencies.append((now - struct.unpack("<Q", payload)[0]) / 1000)
                item = await bus.receive()
        finally:
            await asyncio.to_thread(child.wait, 60)
        if mode == "latency":
            latencies.sort()
            return {
                "messages": received,
                "p50_us": round(statistics.median(latencies), 1),
                "p99_us": round(latencies[int(len(latencies) * 0.99) - 1], 1),
                "max_us": round(latencies[-1], 1),
            }
        return {
            "sent": count,
            "received": received,
            "lost": count - received,
            "messages_per_s": round(received / (last - first)) if last > first else 0,
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate", type=float, default=1000.0, help="latency run: messages/s")
    p.add_argument("--seconds", type=float, default=5.0, help="latency run: duration")
    p.add_argument("--burst", type=int, default=100_000, help="throughput run: messages")
    p.add_argument("--role", default="sub", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="latency", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    log.setup("bench", "warning")
    if args.role == "pub":
        asyncio.run(publisher(Path(args.dir), args.mode, args.rate, args.count))
        return
    with tempfile.TemporaryDirectory(prefix="pg-bench-") as d:
        lat = asyncio.run(subscriber(Path(d), "latency", args.rate, int(args.rate * args.seconds)))
    with tempfile.TemporaryDirectory(prefix="pg-bench-") as d:
        thr = asyncio.run(subscriber(Path(d), "throughput", 0, args.burst))
    result = {
        "bench": "bus",
        "transport": "zeromq ipc, msgpack envelope, asyncio Bus.receive()",
        "latency": {"rate_per_s": args.rate, **lat},
        "throughput": thr,
        "targets": {"p99_us_max": 1000, "throughput_min_per_s": 20000},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
