"""Taking the interface down on purpose, and cleaning up after a crash.

For ``punchguard down`` / ``punchguard cleanup`` (run as root, in the network namespace of the
interface, with guardd stopped first: a running guardd would recreate the interface)::

    from guardd.admin import cleanup, down
    for line in down(config): print(line)       # config: punchguard.config.Config
    for line in cleanup(config): print(line)

Both are synchronous, idempotent, and return one human-readable line per action taken (an empty
list: nothing to do). ``down`` removes the interface (kernel or wireguard-go), which stops its
wireguard-go and with it the tunnel. ``cleanup`` removes only leftovers: a UAPI socket whose
wireguard-go is gone, a stale pid file, a wireguard-go of ours that no longer answers, and a
TUN interface of ours that no wireguard-go serves. A working interface is never touched by it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

from guardd import netlink, uapi
from guardd.backend import pid_file
from punchguard.config import Config


def socket_answers(path: Path, limit: float = 1.0) -> bool:
    """True if a wireguard-go answers ``get=1`` on ``path`` (synchronous probe)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(limit)
            s.connect(str(path))
            s.sendall(b"get=1\n\n")
            reply = b""
            while not reply.endswith(b"\n\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        uapi.parse_get(reply.decode(errors="replace"))
    except (OSError, uapi.UapiError):
        return False
    return True


def _recorded_pid(runtime_dir: Path, ifname: str) -> int | None:
    """The pid in our pid file if that process is still a wireguard-go."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file(runtime_dir, ifname).read_text().strip())
        if b"wireguard-go" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    return None


def _stop_pid(pid: int, timeout: float = 3.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


def down(config: Config) -> list[str]:
    """Remove this host's WireGuard interface on purpose (the tunnel stops)."""
    ifname = config.wireguard.interface
    runtime = config.paths.runtime_dir
    done: list[str] = []
    pid = _recorded_pid(runtime, ifname)
    if netlink.delete_link(ifname):
        done.append(f"removed interface {ifname}")
    sock = uapi.socket_path(ifname)
    if sock.exists():
        sock.unlink(missing_ok=True)  # wireguard-go exits when its socket goes away
        done.append(f"removed {sock}")
    if pid is not None:
        _stop_pid(pid)
        done.append(f"stopped wireguard-go (pid {pid})")
    if pid_file(runtime, ifname).exists():
        pid_file(runtime, ifname).unlink(missing_ok=True)
    return done


def cleanup(config: Config) -> list[str]:
    """Remove what a crash left behind; a working interface is left alone."""
    ifname = config.wireguard.interface
    runtime = config.paths.runtime_dir
    done: list[str] = []
    sock = uapi.socket_path(ifname)
    alive = sock.exists() and socket_answers(sock)
    pid = _recorded_pid(runtime, ifname)
    if not alive:
        if sock.exists():
            sock.unlink(missing_ok=True)
            done.append(f"removed stale socket {sock}")
        if pid is not None:
            _stop_pid(pid)
            done.append(f"stopped unresponsive wireguard-go (pid {pid})")
            pid = None
        if netlink.link_kind(ifname) == "tun":
            netlink.delete_link(ifname)
            done.append(f"removed orphaned interface {ifname}")
    if pid is None and pid_file(runtime, ifname).exists():
        pid_file(runtime, ifname).unlink(missing_ok=True)
        done.append("removed stale pid file")
    return done
