"""The bus between real processes: restarts, the tap, and a flood of malformed frames."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import msgpack
import pytest
import zmq

from punchguard import messages as m
from punchguard.bus import endpoint_url

BUSNODE = Path(__file__).with_name("busnode.py")
HEARTBEAT = 0.2


class Proc:
    """A child process whose stdout lines (JSON) are collected by a thread."""

    def __init__(self, argv: list[str], stderr: TextIO | int = subprocess.DEVNULL) -> None:
        self.popen = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
        )
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                self.lines.append((time.monotonic(), json.loads(line)))
            except json.JSONDecodeError:
                continue

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
        self.popen.wait(timeout=10)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def node(name: str, runtime_dir: Path, *follow: str, stderr: TextIO | int = -3) -> Proc:
    argv = [sys.executable, str(BUSNODE), name, str(runtime_dir), "--heartbeat", str(HEARTBEAT)]
    for f in follow:
        argv += ["--follow", f]
    return Proc(argv, stderr=stderr)


def tap_proc(runtime_dir: Path) -> Proc:
    exe = Path(sys.executable).with_name("punchguard")
    return Proc([str(exe), "tap", "--json", "--runtime-dir", str(runtime_dir)])


def test_subscriber_and_tap_follow_a_publisher_through_kill_9(
    runtime_dir: Path, procs: list[Proc]
) -> None:
    sub = node("nodes", runtime_dir, "nodea", "nodeb")
    tap = tap_proc(runtime_dir)  # the tap starts before the publishers
    procs += [sub, tap]
    a = node("nodea", runtime_dir)
    b = node("nodeb", runtime_dir)
    procs += [a, b]

    def heard(p: Proc, src: str, since: float = 0.0) -> bool:
        return any(
            t >= since and (line.get("endpoint") or line.get("src")) == src for t, line in p.lines
        )

    wait_for(lambda: heard(sub, "nodea") and heard(sub, "nodeb"), 10, "subscriber hears both")
    wait_for(lambda: heard(tap, "nodea") and heard(tap, "nodeb"), 10, "tap hears both")

    a.kill()
    killed = time.monotonic()
    time.sleep(3 * HEARTBEAT)  # the publisher is really gone for a while
    # nodeb still flows while nodea is dead
    wait_for(lambda: heard(sub, "nodeb", killed + HEARTBEAT), 5, "nodeb during the outage")

    a2 = node("nodea", runtime_dir)
    procs.append(a2)
    restarted = time.monotonic()
    pid = f"pid={a2.popen.pid}"
    wait_for(lambda: heard(sub, "nodea", restarted), 10, "subscriber hears the new nodea")
    wait_for(
        lambda: any(
            line.get("src") == "nodea" and line["body"].get("reason") == pid
            for _, line in tap.lines
        ),
        10,
        "tap hears the new nodea",
    )
    first = min(t for t, line in sub.lines if t >= restarted and line["endpoint"] == "nodea")
    # Not a timing assertion (machines are noisy), but say what we saw.
    print(f"subscriber heard the restarted publisher {first - restarted:.3f} s after its start")
    assert sub.popen.poll() is None
    assert tap.popen.poll() is None


def _bad_frames(i: int) -> list[bytes]:
    """Ten kinds of malformed frames, all passing the "evil." subscription filter."""
    ok_env = {"v": 1, "type": "signal.state", "src": "evil", "seq": i, "ts": 1.0, "body": {}}
    pack = msgpack.packb
    kinds: list[list[bytes]] = [
        [b"evil.x", os.urandom(16)],
        [b"evil.x"],
        [b"evil.a", b"b", b"c"],
        [b"evil.x", pack([1, 2, 3])],
        [b"evil.signal.state", pack({**ok_env, "v": 9})],
        [b"evil.nope", pack({**ok_env, "type": "nope"})],
        [b"evil.signal.state", pack({**ok_env, "body": {"state": "online"}})],
        [b"evil.signal.state", pack({**ok_env, "body": {"state": 1, "since": "now"}})],
        [b"evil.signal.state", b"\x00" * (m.MAX_FRAME_BYTES + 1)],
        [b"evil.x.signal.state", pack({**ok_env, "src": "evil.x", "body": {"state": 1}})],
    ]
    return kinds[i % len(kinds)]


def test_ten_thousand_malformed_frames(
    runtime_dir: Path, procs: list[Proc], tmp_path: Path
) -> None:
    n = 10_000
    log_path = tmp_path / "nodes.log"
    with open(log_path, "w") as log_file:
        sub = node("nodes", runtime_dir, "evil", stderr=log_file)
    procs.append(sub)
    ctx = zmq.Context()
    evil = ctx.socket(zmq.PUB)
    evil.setsockopt(zmq.SNDHWM, 0)  # never drop at the sender: every frame must arrive
    evil.setsockopt(zmq.LINGER, 0)
    evil.bind(endpoint_url(runtime_dir, "evil"))
    watch = ctx.socket(zmq.SUB)
    watch.setsockopt(zmq.LINGER, 0)
    watch.connect(endpoint_url(runtime_dir, "nodes"))
    watch.setsockopt(zmq.SUBSCRIBE, b"nodes.bus.stats")
    try:
        good = m.encode(m.SignalState(state=m.SignalStateKind.ONLINE), src="evil", seq=1)
        # the subscriber is connected once a good frame comes through
        deadline = time.monotonic() + 10
        while not any(line["endpoint"] == "evil" for _, line in sub.lines):
            assert time.monotonic() < deadline, "subscriber never connected"
            evil.send_multipart(good)
            time.sleep(0.05)
        for i in range(n):
            evil.send_multipart(_bad_frames(i))
        evil.send_multipart(good)

        stats = m.BusStats(received=0, dropped=0)
        deadline = time.monotonic() + 30
        while stats.dropped < n and time.monotonic() < deadline:
            if watch.poll(200):
                _, msg = m.decode(watch.recv_multipart())
                assert isinstance(msg, m.BusStats)
                stats = msg
        assert stats.dropped == n, stats
        assert sub.popen.poll() is None, "the subscriber died"
        # still working: a good frame after the flood is received
        seen = len(sub.lines)
        wait_for(lambda: len(sub.lines) > seen or bool(evil.send_multipart(good)), 10, "good")
        assert set(stats.drops) == {
            "not_msgpack",
            "bad_frames",
            "bad_envelope",
            "bad_version",
            "unknown_type",
            "bad_field",
            "too_large",
            "src_mismatch",
        }
    finally:
        evil.close()
        watch.close()
        ctx.term()
        sub.kill()
    drop_lines = [x for x in log_path.read_text().splitlines() if '"bus.drop"' in x]
    assert len(drop_lines) == n  # one structured log line per dropped frame
