"""OTR benchmark: key generation, AKE, per-message encrypt+decrypt, SMP (otrd's session core).

    .venv/bin/python bench/otr.py [--keys 5] [--akes 20] [--messages 200] [--smps 3]

Prints one JSON object; times in milliseconds (median, and max for the AKE). Everything runs
in-process through ``otrd.session.OtrSession`` (potr + the pycryptodome adapter), two sessions
connected by a list: no bus, no Tox latency, so these are the CPU costs otrd adds.
- ``keygen_ms``: one DSA-1024 key (``otrd.potr_compat.generate_key``), done once per host.
- ``ake_ms``: from the initiator's first move to both sides SECURE (4 AKE messages, 2 DSA
  signatures and verifications, 1536-bit DH on both sides).
- ``message_ms``: ``send`` on one side plus ``wire_received`` of all its fragments on the
  other, per payload size (base64 and OTR framing included); ``fragments`` is how many Tox
  messages one payload became. One direction only reuses the DH keys; ``1000_alternating``
  sends each message the other way, so every message also rotates a 1536-bit DH key pair.
- ``smp_ms``: a whole SMP run with the right secret (both sides' work).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time

import structlog

from otrd.identity import fingerprint
from otrd.potr_compat import OtrDSAKey, generate_key
from otrd.session import OtrSession
from punchguard.messages import Message, OtrRecv, OtrStateKind, SignalSend

SIZES = (100, 1000, 2048, 8000)


def pump(a: OtrSession, b: OtrSession, first: list[Message], src: OtrSession) -> list[bytes]:
    """Deliver messages between a and b until quiet; returns the payloads delivered."""
    delivered: list[bytes] = []
    queue = [(src, m) for m in first]
    while queue:
        s, m = queue.pop(0)
        if isinstance(m, SignalSend):
            dst = b if s is a else a
            queue += [(dst, x) for x in dst.wire_received(m.payload, 0.0)]
        elif isinstance(m, OtrRecv):
            delivered.append(m.payload)
    return delivered


def pair(ka: OtrDSAKey, kb: OtrDSAKey, secret: bytes | None = None) -> tuple[OtrSession, ...]:
    a = OtrSession(ka, fingerprint(kb), now=0.0, smp_secret=secret)
    b = OtrSession(kb, fingerprint(ka), now=0.0, smp_secret=secret)
    return (a, b) if fingerprint(ka) < fingerprint(kb) else (b, a)  # initiator first


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--keys", type=int, default=5)
    p.add_argument("--akes", type=int, default=20)
    p.add_argument("--messages", type=int, default=200)
    p.add_argument("--smps", type=int, default=3)
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    keygen = []
    keys = []
    for _ in range(max(args.keys, 2)):
        t = time.perf_counter()
        keys.append(generate_key())
        keygen.append(time.perf_counter() - t)

    akes = []
    for _ in range(args.akes):
        init, resp = pair(keys[0], keys[1])
        t = time.perf_counter()
        pump(init, resp, init.peer_online(0.0), init)
        akes.append(time.perf_counter() - t)
        assert init.state == resp.state == OtrStateKind.SECURE

    init, resp = pair(keys[0], keys[1])
    pump(init, resp, init.peer_online(0.0), init)
    messages = {}
    for size in SIZES:
        payload = os.urandom(size)
        costs = []
        frags = 0
        for _ in range(args.messages):
            t = time.perf_counter()
            out = init.send(payload, 0.0)
            got = pump(init, resp, out, init)
            costs.append(time.perf_counter() - t)
            assert got == [payload]
            frags = sum(1 for m in out if isinstance(m, SignalSend))
        messages[str(size)] = {"median_ms": ms(statistics.median(costs)), "fragments": frags}

    # alternating directions: every reply makes both sides rotate their DH keys (1536-bit)
    pingpong = []
    payload = os.urandom(1000)
    for i in range(args.messages):
        src, dst = (init, resp) if i % 2 == 0 else (resp, init)
        t = time.perf_counter()
        assert pump(src, dst, src.send(payload, 0.0), src) == [payload]
        pingpong.append(time.perf_counter() - t)
    messages["1000_alternating"] = {"median_ms": ms(statistics.median(pingpong)), "fragments": 2}

    smps = []
    for _ in range(args.smps):
        init, resp = pair(keys[0], keys[1], secret=b"pairing secret")
        pump(init, resp, init.peer_online(0.0), init)
        t = time.perf_counter()
        pump(init, resp, init.smp_start(b"pairing secret", 0.0), init)
        smps.append(time.perf_counter() - t)
        assert init.smp_result is True and resp.smp_result is True

    json.dump(
        {
            "python": sys.version.split()[0],
            "keygen_ms": {"median": ms(statistics.median(keygen)), "n": len(keygen)},
            "ake_ms": {
                "median": ms(statistics.median(akes)),
                "max": ms(max(akes)),
                "n": len(akes),
            },
            "message_ms": messages,
            "messages_per_size": args.messages,
            "smp_ms": {"median": ms(statistics.median(smps)), "n": len(smps)} if smps else None,
        },
        sys.stdout,
        indent=2,
    )
    print()


if __name__ == "__main__":
    main()
