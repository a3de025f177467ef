"""Tox savedata on disk: ``<state_dir>/tox.save``, 0600, replaced atomically.

The savedata holds the Tox secret key (our identity) and the friend list. A write goes to a
temporary file in the same directory (created 0600, so the secret is never readable by others),
is fsynced, renamed over the old file and the directory is fsynced: a crash at any moment leaves
either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

FILE_NAME = "tox.save"


def path_in(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


def ensure_state_dir(state_dir: Path) -> None:
    """Create the state directory (0700) if it does not exist; leave an existing one alone."""
    if not state_dir.is_dir():
        state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(state_dir, 0o700)


class UnsafeSavedata(OSError):
    """The savedata file is not a regular file that only its owner (us) can read."""


def check(path: Path, st: os.stat_result) -> None:
    """``UnsafeSavedata`` unless ``path`` (stat ``st``) is a regular file, mode 0600 or
    stricter, owned by us (root, the pairing CLI, may read the service user's file)."""
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeSavedata(f"{path}: not a regular file")
    euid = os.geteuid()
    if st.st_uid != euid and euid != 0:
        raise UnsafeSavedata(f"{path}: owned by uid {st.st_uid}, must be {euid}")
    if st.st_mode & 0o077:
        raise UnsafeSavedata(
            f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets others read the Tox secret key; "
            f"run: chmod 600 {path}"
        )


def load(path: Path) -> bytes | None:
    """The saved data, or None if there is none yet (a new identity); ``UnsafeSavedata`` if
    the file is readable by others or not ours (no symlinks followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fh:
        check(path, os.fstat(fh.fileno()))
        data = fh.read()
    return data or None


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)  # in case an old tmp of ours existed with other bits
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
