"""Private files: key material and state that only their owner may read (design 3).

One place for what every stage does with its secrets on disk:

- ``check``: a file is private if it is a regular file, owned by us, and neither group nor
  others have any permission on it (``mode & 0o077 == 0``). Anything else is an error naming
  the path, the mode, what the file holds and the fix (``chmod 600 PATH``).
- ``read``: open without following a symlink (``O_NOFOLLOW``), check the open file (``fstat``,
  so nothing can be swapped in between) and read it; ``None`` if there is no file.
- ``write_atomic``: write a temporary file in the same directory (``O_EXCL | O_NOFOLLOW``,
  created with the final mode, so a secret is never readable by others, not even briefly),
  fsync it, rename it over the target (or, ``exclusive``, link it: create-once, never replacing
  a file someone else just made), fsync the directory. A crash leaves the old file or the new
  one, never a torn one; a failure removes the temporary file.

Each caller passes its own exception type, so its callers keep catching what they caught.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

PRIVATE_MODE = 0o600
OTHERS = 0o077  # any permission bit for group or others


def check(
    path: Path,
    st: os.stat_result,
    what: str,
    error: type[Exception],
    *,
    root_reads_any: bool = False,
) -> None:
    """Raise ``error`` unless ``st`` (of ``path``, holding ``what``) is a private file of ours.

    ``root_reads_any``: root may also read a file owned by another user (the pairing CLI reads
    the service user's keys); otherwise the owner must be our effective uid, root included.
    """
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: not a regular file (it should hold {what})")
    euid = os.geteuid()
    if st.st_uid != euid and not (root_reads_any and euid == 0):
        raise error(
            f"{path}: owned by uid {st.st_uid}, must be {euid} (it holds {what}); "
            f"run: chown {euid} {path}"
        )
    if st.st_mode & OTHERS:
        access = "read" if st.st_mode & 0o044 else "change" if st.st_mode & 0o022 else "open"
        raise error(
            f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets others {access} {what}; "
            f"run: chmod 600 {path}"
        )


def read(
    path: Path,
    what: str,
    error: type[Exception],
    *,
    limit: int = -1,
    root_reads_any: bool = False,
) -> bytes | None:
    """The contents of the private file ``path`` (at most ``limit`` bytes if given), ``None``
    if it does not exist; ``error`` if it cannot be opened (a symlink among others) or is not
    private (``check``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise error(f"{path}: cannot read {what}: {e.strerror}") from None
    try:
        check(path, os.fstat(fd), what, error, root_reads_any=root_reads_any)
        with open(fd, "rb", closefd=False) as fh:
            return fh.read(limit)
    finally:
        os.close(fd)


def write_atomic(
    path: Path,
    data: bytes,
    mode: int = PRIVATE_MODE,
    *,
    exclusive: bool = False,
    gid: int | None = None,
) -> None:
    """Replace ``path`` with ``data`` atomically, as a file of ``mode`` (and group ``gid`` if
    given). ``exclusive``: create it only if it does not exist, else ``FileExistsError``.
    ``OSError`` on failure, with no temporary file left behind."""
    # unique per call: two threads of one process never share a temporary file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # the umask may have cleared bits of ``mode``
            if gid is not None:
                os.fchown(fh.fileno(), -1, gid)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)  # atomic, and never replaces an existing file
            tmp.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable: fsync the directory that holds the new name."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
