"""Hostile input on the bus, against the real runners on an in-process bus (no root).

- guardd takes paths from punchd's endpoint only: a perfect ``punch.path`` published on any
  other endpoint never reaches it; forged ``src``/topic and garbage frames on punchd's endpoint
  are dropped by the bus (counted in ``bus.stats``); absurd paths (port 0, multicast,
  broadcast, unspecified, direct loopback, link-local, names) and a flood of them are refused
  and counted (``guard.state.refused``); the path already applied stays, untouched.
- punchd screens the peer's candidates: a huge or bogus list is cut down to usable lines,
  counted by reason.

The lab version of these (real supervisord, real WireGuard, a ping through the tunnel
throughout): tests/integration/test_security_lab.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgpack

from punchd import candidates
from punchguard import messages as m
from punchguard.bus import Bus
from punchguard.messages import GuardState, GuardStateKind
from tests.unit.test_guardd_runner import good_path, running, wait_for

ABSURD = [
    good_path(local_port=0),
    good_path(endpoint_port=0),
    good_path(endpoint_host="224.0.0.1"),
    good_path(endpoint_host="ff02::1"),
    good_path(endpoint_host="255.255.255.255"),
    good_path(endpoint_host="0.0.0.0"),
    good_path(endpoint_host="127.0.0.1"),  # loopback on a direct path
    good_path(endpoint_host="::ffff:127.0.0.1", relayed=True),  # loopback, mapped
    good_path(endpoint_host="169.254.1.1"),
    good_path(endpoint_host="evil.example"),
]


def _raw(env: dict[str, object], topic: bytes = b"punchd.punch.path") -> list[bytes]:
    return [topic, msgpack.packb(env, use_bin_type=True)]


def _forged_and_garbage() -> list[list[bytes]]:
    body = {"local_port": 1, "endpoint_host": "203.0.113.9", "endpoint_port": 9, "role": 1}
    env = {"v": 1, "type": "punch.path", "src": "signald", "seq": 1, "ts": 1.0, "body": body}
    return [
        _raw(env),  # src says signald, on punchd's endpoint: topic_mismatch
        _raw({**env, "src": "punchd", "v": 2}),  # bad_version
        _raw({**env, "src": "punchd", "body": {**body, "local_port": "1"}}),  # bad_field
        [b"punchd.punch.path", b"\xc1garbage"],  # not_msgpack
        [b"punchd.punch.path"],  # bad_frames
        [b"punchd.punch.path", b"\x80" * (m.MAX_FRAME_BYTES + 1)],  # too_large
    ]


async def test_guardd_refuses_foreign_forged_and_absurd_paths_and_keeps_its_path(
    runtime_dir: Path, tmp_path: Path
) -> None:
    async with (
        running(runtime_dir, tmp_path) as (backend, punchd, tap),
        Bus("signald", runtime_dir, group=None) as signald,
    ):
        await wait_for(tap, lambda s: s.state is GuardStateKind.NO_PATH)
        punchd.set_state(good_path())  # the real path, republished on every heartbeat
        up = await wait_for(tap, lambda s: s.state is GuardStateKind.UP)
        applied = len(backend.applied)
        stats: dict[str, int] = {}

        assert punchd._pub is not None
        raw_pub = punchd._pub
        flood = 500
        wanted = {"topic_mismatch", "bad_version", "bad_field", "not_msgpack", "bad_frames",
                  "too_large"}  # fmt: skip

        async def attack() -> None:
            while True:
                # a perfect path, but from another endpoint: guardd does not even follow it
                signald.publish(good_path(endpoint_host="203.0.113.66", endpoint_port=6666))
                for frames in _forged_and_garbage():
                    raw_pub.send_multipart(frames)
                for i in range(flood):
                    punchd.publish(ABSURD[i % len(ABSURD)])
                await asyncio.sleep(0.5)

        task = asyncio.create_task(attack())
        last: GuardState | None = None
        try:
            async with asyncio.timeout(60):
                while last is None or last.refused < 2 * flood or not wanted <= set(stats):
                    inc = await tap.receive()
                    if isinstance(inc.msg, m.BusStats):
                        stats.update(inc.msg.drops)
                    elif isinstance(inc.msg, GuardState):
                        last = inc.msg
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # the path it had is the path it has: nothing from the attack was applied
        assert last.state is GuardStateKind.UP
        assert last.endpoint == up.endpoint == "198.51.100.7:61002"
        assert last.listen_port == up.listen_port
        assert all(c.listen_port is None for c in backend.applied[applied:])
        assert all(c.peer is None or c.peer.endpoint is None for c in backend.applied[applied:]), (
            backend.applied[applied:]
        )
        assert last.last_refused.startswith("bad_")


def test_a_huge_bogus_candidate_list_is_cut_to_usable_lines() -> None:
    good = "1 1 UDP 2130706431 198.51.100.7 40000 typ host"
    bogus = [
        "1 1 UDP 2130706431 198.51.100.7 0 typ host",  # port 0
        "1 1 UDP 2130706431 224.0.0.251 5353 typ host",  # multicast
        "1 1 UDP 2130706431 255.255.255.255 9 typ host",  # broadcast
        "1 1 UDP 2130706431 127.0.0.1 22 typ host",  # our own loopback
        "1 1 UDP 2130706431 0.0.0.0 9 typ host",
        "1 1 UDP 2130706431 fe80::1 9 typ host",
        "1 1 UDP 2130706431 abcd-1234.local 9 typ host",  # mDNS: no multicast lookups for a peer
        "1 1 TCP 2130706431 198.51.100.7 9 typ host tcptype passive",
        "1 2 UDP 2130706431 198.51.100.7 9 typ host",
        "1 1 UDP 2130706431 198.51.100.7 9 typ prflx",
        "garbage",
        "x" * 10_000,
    ]
    kept, refused = candidates.screen([*bogus * 100, *[good] * 500])
    assert kept == (good,) * candidates.MAX_CANDIDATES
    assert refused["too_many"] == 500 - candidates.MAX_CANDIDATES
    assert refused["bad_port"] == 100 and refused["bad_address"] == 600
    assert refused["unsupported_candidate"] == 300 and refused["bad_candidate"] == 200
