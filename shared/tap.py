"""``punchguard tap``: follow every bus endpoint under a runtime directory and print messages.

It follows the four services plus any other ``*.pub`` endpoint that appears in the runtime
directory (rescanned twice a second), so it can start before or after the services and keeps
following when one restarts (ZeroMQ reconnects). Frames that fail to decode are shown as
``DROP`` lines: the tap is a debugging tool.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import json
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TextIO

from punchguard import SERVICES
from punchguard.bus import SOCKET_SUFFIX, Bus, Incoming
from punchguard.messages import Message

RESCAN_S = 0.5


@dataclass
class TapOptions:
    runtime_dir: Path
    prefix: str = ""  # a topic ("punchd.punch") or type ("guard.") prefix
    as_json: bool = False
    count: int = 0  # stop after this many messages (0 = no limit)
    timeout: float = 0.0  # stop after this many seconds (0 = no limit)
    show_drops: bool = True


def message_fields(msg: Message) -> dict[str, Any]:
    """The message's fields as JSON-friendly values (enums by name, bytes in base64)."""
    return {f.name: _jsonable(getattr(msg, f.name)) for f in fields(msg)}  # type: ignore[arg-type]  # messages are dataclasses


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def format_line(item: Incoming) -> str:
    ts = time.strftime("%H:%M:%S", time.localtime(item.env.ts))
    frac = f"{item.env.ts % 1:.3f}"[1:]
    return f"{ts}{frac} {item.env.src:<8} {item.env.type:<13} {item.msg.summary()}"


def format_json(item: Incoming) -> str:
    return json.dumps(
        {
            "ts": item.env.ts,
            "src": item.env.src,
            "type": item.env.type,
            "seq": item.env.seq,
            "body": message_fields(item.msg),
        },
        separators=(",", ":"),
    )


def matches(item: Incoming, prefix: str) -> bool:
    if not prefix:
        return True
    topic = f"{item.env.src}.{item.env.type}"
    return topic.startswith(prefix) or item.env.type.startswith(prefix)


def discover(runtime_dir: Path) -> set[str]:
    found = set(SERVICES)
    with contextlib.suppress(OSError):
        for p in runtime_dir.glob(f"*{SOCKET_SUFFIX}"):
            found.add(p.name[: -len(SOCKET_SUFFIX)])
    return found


async def tap(opts: TapOptions, out: TextIO = sys.stdout) -> int:
    """Run the tap; returns the exit status (1 if ``count`` was not reached in ``timeout``)."""

    def on_drop(endpoint: str, reason: str, detail: str) -> None:
        if not opts.show_drops:
            return
        if opts.as_json:
            line = json.dumps({"ts": time.time(), "src": endpoint, "drop": reason})
        else:
            line = f"{time.strftime('%H:%M:%S')} {endpoint:<8} DROP          {reason} {detail}"
        print(line, file=out, flush=True)

    seen = 0
    async with Bus(None, opts.runtime_dir, on_drop=on_drop) as bus:

        async def rescan() -> None:
            while True:
                for service in discover(opts.runtime_dir) - set(bus.subscriptions):
                    bus.subscribe(service)
                await asyncio.sleep(RESCAN_S)

        async def follow() -> None:
            nonlocal seen
            while not opts.count or seen < opts.count:
                item = await bus.receive()
                if not matches(item, opts.prefix):
                    continue
                print(format_json(item) if opts.as_json else format_line(item), file=out)
                out.flush()
                seen += 1

        scanner = asyncio.create_task(rescan())
        try:
            if opts.timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(follow(), opts.timeout)
            else:
                await follow()
        finally:
            scanner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scanner
    return 1 if opts.count and seen < opts.count else 0
