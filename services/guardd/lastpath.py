"""The last working path, kept across restarts: ``<state_dir>/last-path.json`` (issue 9).

guardd writes it when the tunnel is UP (on the transition, then at most every ``REFRESH`` s while
it stays up), root-owned, mode 0600, atomically (``punchguard.privatefile``: a temporary file in
the same directory, fsync, ``os.replace``). When a whole host's stack restarts and the WireGuard
interface had to be made afresh (a reboot, a killed wireguard-go), guardd reads it back and
applies that path at once, before Tox is even online: while the NAT mappings are still warm (the
peer keeps sending keepalives into them) a handshake brings the tunnel back in a second or two.
What is read back goes through ``core.validate_path`` like any path from the bus; a file that
does not parse, belongs to another peer, is unsafe (not ours, group/world-readable, a symlink)
or is older than ``MAX_AGE`` is ignored (with a reason for the log).

Wire form (JSON)::

    {"v": 1, "saved_at": 1764100000.0, "peer_public_key": "<base64>",
     "local_port": 40123, "endpoint_host": "198.51.100.20", "endpoint_port": 61002,
     "role": "controlling", "relayed": false, "generation": 1764099990}
"""

from __future__ import annotations

import json
import os
from pathlib import Path as FsPath

from guardd.core import Refused, ValidPath, validate_path
from punchguard import privatefile
from punchguard.messages import Path, Role

FILE = "last-path.json"
VERSION = 1
REFRESH = 30.0  # s between rewrites while the tunnel stays up (saved_at stays meaningful)
MAX_AGE = 3600.0  # s: older than this, the mappings are surely gone
WHAT = "guardd's private record of the last path"  # what the file holds, in errors


class NoLastPath(Exception):
    """Nothing usable to restore; the message says why."""


def file_path(state_dir: FsPath) -> FsPath:
    return state_dir / FILE


def save(state_dir: FsPath, path: ValidPath, peer_public_key: str, wall: float) -> None:
    host, port = path.endpoint
    data = {
        "v": VERSION,
        "saved_at": round(wall, 3),
        "peer_public_key": peer_public_key,
        "local_port": path.listen_port,
        "endpoint_host": str(host),
        "endpoint_port": port,
        "role": path.role.name.lower(),
        "relayed": path.relayed,
        "generation": path.generation,
    }
    privatefile.write_atomic(file_path(state_dir), json.dumps(data).encode())


def load(state_dir: FsPath, peer_public_key: str, wall: float) -> tuple[ValidPath, float]:
    """The saved path and its age in seconds, or ``NoLastPath`` saying why not."""
    target = file_path(state_dir)
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise NoLastPath("no saved path") from None
    except OSError as e:
        raise NoLastPath(f"cannot open {target}: {e.strerror}") from None
    with os.fdopen(fd, "r") as fh:
        privatefile.check(target, os.fstat(fh.fileno()), WHAT, NoLastPath)
        try:
            data = json.loads(fh.read(4096))
        except (ValueError, UnicodeDecodeError):
            raise NoLastPath(f"{target}: not JSON") from None
    if not isinstance(data, dict) or data.get("v") != VERSION:
        raise NoLastPath(f"{target}: unknown version")
    if data.get("peer_public_key") != peer_public_key:
        raise NoLastPath("saved for another peer")
    saved_at = data.get("saved_at")
    if not isinstance(saved_at, int | float) or not 0 <= wall - saved_at <= MAX_AGE:
        raise NoLastPath("too old")
    role = {"controlling": Role.CONTROLLING, "controlled": Role.CONTROLLED}.get(
        str(data.get("role"))
    )
    if role is None:
        raise NoLastPath(f"{target}: bad role")
    try:
        msg = Path(
            local_port=data.get("local_port"),  # type: ignore[arg-type]  # validated below
            endpoint_host=data.get("endpoint_host"),  # type: ignore[arg-type]  # validated below
            endpoint_port=data.get("endpoint_port"),  # type: ignore[arg-type]  # validated below
            role=role,
            relayed=data.get("relayed"),  # type: ignore[arg-type]  # validated below
            generation=data.get("generation"),  # type: ignore[arg-type]  # validated below
        )
        return validate_path("punchd", msg), wall - float(saved_at)
    except Refused as e:
        raise NoLastPath(f"{target}: {e}") from None
    except (TypeError, ValueError) as e:
        raise NoLastPath(f"{target}: {e}") from None
