"""The bus in one process: real ZeroMQ IPC sockets, no services."""

from __future__ import annotations

import asyncio
import io
import json
import stat
from pathlib import Path

import zmq
import zmq.asyncio

from punchguard import messages as m
from punchguard.bus import Bus, Incoming, endpoint_path, endpoint_url
from punchguard.tap import TapOptions, format_json, format_line, tap

STATE = m.PunchState(state=m.PunchStateKind.CHECKING, reason="test")


async def receive_until(bus: Bus, want: type[m.Message], limit: float = 5.0) -> Incoming:
    async with asyncio.timeout(limit):
        while True:
            item = await bus.receive()
            if isinstance(item.msg, want):
                return item


async def test_state_reaches_a_subscriber_by_heartbeat(runtime_dir: Path) -> None:
    async with (
        Bus("punchd", runtime_dir, heartbeat=0.05) as pub,
        Bus("guardd", runtime_dir) as sub,
    ):
        sub.subscribe("punchd", ["punch.state"])
        pub.set_state(STATE)  # probably lost: the subscriber is still connecting
        beat = asyncio.create_task(pub.run_heartbeat())
        try:
            item = await receive_until(sub, m.PunchState)
        finally:
            beat.cancel()
        assert item.endpoint == "punchd"
        assert item.env.src == "punchd" and item.env.seq >= 1
        assert item.msg == STATE
        assert pub.state("punch.state") == STATE
        mode = endpoint_path(runtime_dir, "punchd").stat().st_mode
        assert stat.S_IMODE(mode) == 0o660


async def test_prefix_subscription_filters_types(runtime_dir: Path) -> None:
    async with Bus("signald", runtime_dir) as pub, Bus("otrd", runtime_dir) as sub:
        sub.subscribe("signald", ["signal.recv"])
        await asyncio.sleep(0.2)
        for _ in range(50):
            pub.publish(m.SignalState(state=m.SignalStateKind.ONLINE))
            pub.publish(m.SignalRecv(payload=b"x"))
            await asyncio.sleep(0.01)
        item = await receive_until(sub, m.SignalRecv)
        assert item.msg == m.SignalRecv(payload=b"x")
        while (nxt := sub.receive_nowait()) is not None:
            assert isinstance(nxt.msg, m.SignalRecv)


async def test_bad_frames_are_counted_and_the_reader_survives(runtime_dir: Path) -> None:
    ctx = zmq.asyncio.Context()
    raw = ctx.socket(zmq.PUB)
    raw.bind(endpoint_url(runtime_dir, "punchd"))
    drops: list[str] = []
    try:
        async with Bus(
            "guardd", runtime_dir, on_drop=lambda _e, reason, _d: drops.append(reason)
        ) as sub:
            sub.subscribe("punchd")
            good = m.encode(STATE, src="punchd", seq=1)
            liar = m.encode(STATE, src="signald", seq=1)
            liar[0] = b"punchd.punch.state"  # a topic that passes the filter, a forged src
            bad = [
                [b"punchd.x", b"\xc1"],
                [b"punchd.punch.state"],
                [b"punchd.a", b"b", b"c"],
                liar,
                [b"punchd.punch.state", b"\x00" * (m.MAX_FRAME_BYTES + 10)],
            ]
            # wait until connected: a good message arrives
            async with asyncio.timeout(5):
                while sub.receive_nowait() is None:
                    await raw.send_multipart(good)
                    await asyncio.sleep(0.02)
            for frames in bad:
                await raw.send_multipart(frames)
            await raw.send_multipart(good)
            await receive_until(sub, m.PunchState)
            assert drops == ["not_msgpack", "bad_frames", "bad_frames", "topic_mismatch",
                             "too_large"]  # fmt: skip
            assert sum(sub.drops.values()) == 5
            assert sub.stats().dropped == 5
    finally:
        raw.close(linger=0)
        ctx.term()


async def test_forged_src_is_refused(runtime_dir: Path) -> None:
    # A process bound at punchd's endpoint whose frames pass the "punchd." filter but whose
    # envelope names another source: topic and src disagree, or src is not the endpoint's.
    ctx = zmq.asyncio.Context()
    raw = ctx.socket(zmq.PUB)
    raw.bind(endpoint_url(runtime_dir, "punchd"))
    try:
        async with Bus("guardd", runtime_dir, on_drop=lambda *_: None) as sub:
            sub.subscribe("punchd")
            forged_topic = [b"punchd.punch.state", m.encode(STATE, src="signald", seq=1)[1]]
            forged_src = m.encode(STATE, src="punchd.x", seq=1)  # topic b"punchd.x.punch.state"
            async with asyncio.timeout(5):
                while sub.drops["src_mismatch"] == 0 or sub.drops["topic_mismatch"] == 0:
                    await raw.send_multipart(forged_topic)
                    await raw.send_multipart(forged_src)
                    await asyncio.sleep(0.02)
            assert set(sub.drops) == {"src_mismatch", "topic_mismatch"}
            assert sub.receive_nowait() is None
    finally:
        raw.close(linger=0)
        ctx.term()


async def test_stats_are_published_on_the_heartbeat(runtime_dir: Path) -> None:
    async with Bus("otrd", runtime_dir) as node, Bus(None, runtime_dir) as watcher:
        node.subscribe("signald")
        watcher.subscribe("otrd", ["bus.stats"])
        await asyncio.sleep(0.2)
        node.drops["not_msgpack"] += 3
        async with asyncio.timeout(5):
            while True:
                node.beat()
                item = watcher.receive_nowait()
                if item is not None:
                    break
                await asyncio.sleep(0.05)
        assert item.msg == m.BusStats(received=0, dropped=3, drops={"not_msgpack": 3})


async def test_tap_prints_lines_and_json(runtime_dir: Path) -> None:
    out = io.StringIO()
    async with Bus("guardd", runtime_dir, heartbeat=0.05) as pub:
        pub.set_state(m.GuardState(state=m.GuardStateKind.UP, interface="pg0"))
        beat = asyncio.create_task(pub.run_heartbeat())
        try:
            rc = await tap(TapOptions(runtime_dir, as_json=True, count=2, timeout=10), out)
        finally:
            beat.cancel()
    assert rc == 0
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) == 2
    assert lines[0]["src"] == "guardd" and lines[0]["body"]["state"] == "up"
    env = m.Envelope(v=1, type="signal.recv", src="signald", seq=1, ts=0.0)
    item = Incoming("signald", env, m.SignalRecv(payload=b"\x00" * 5))
    assert "<5B>" in format_line(item)
    assert json.loads(format_json(item))["body"]["payload"] == "AAAAAAA="


async def test_tap_times_out_when_nothing_comes(runtime_dir: Path) -> None:
    out = io.StringIO()
    rc = await tap(TapOptions(runtime_dir, count=1, timeout=0.3), out)
    assert rc == 1 and out.getvalue() == ""
