"""Tox savedata on disk: ``<state_dir>/tox.save``, 0600, replaced atomically.

The savedata holds the Tox secret key (our identity) and the friend list. A write goes to a
temporary file in the same directory (created 0600, so the secret is never readable by others),
is fsynced, renamed over the old file and the directory is fsynced: a crash at any moment leaves
either the old file or the new one, never a torn one (``punchguard.privatefile``).
"""

from __future__ import annotations

import os
from pathlib import Path

from punchguard import privatefile

FILE_NAME = "tox.save"


def path_in(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


def ensure_state_dir(state_dir: Path) -> None:
    """Create the state directory (0700) if it does not exist; leave an existing one alone."""
    if not state_dir.is_dir():
        state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(state_dir, 0o700)


class UnsafeSavedata(OSError):
    """The savedata file is not a regular file that only its owner (us) can read, or it
    cannot be opened (an ``OSError``: its callers catch ``OSError``)."""


WHAT = "the Tox secret key"  # what the file holds, in errors


def load(path: Path) -> bytes | None:
    """The saved data, or None if there is none yet (a new identity); ``UnsafeSavedata`` if
    the file is readable by others, not ours or cannot be opened (no symlinks followed).
    Root (the pairing CLI) may read the service user's file."""
    data = privatefile.read(path, WHAT, UnsafeSavedata, root_reads_any=True)
    return data or None


def write_atomic(path: Path, data: bytes) -> None:
    """Replace the savedata (0600) atomically; ``OSError`` on failure."""
    privatefile.write_atomic(path, data)
