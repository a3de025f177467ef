"""This host's OTR identity: the DSA key in ``<state_dir>/otr.key`` and its fingerprint.

The key is generated once (``ensure_key``), written atomically (temporary file in the same
directory, fsync, rename) with mode 0600, and read by otrd at start. The file holds potr's
private key serialization (OTR's public key type 0x0000 followed by the MPIs p, q, g, y, x).
A key file that group or others can read, that is not ours, or that is a symlink is
refused (``IdentityError`` naming the fix); otrd then refuses to start (docs/security.md).

Fingerprints are SHA-1 over the public key's MPIs (OTR v2), shown as 40 lowercase hex digits;
``normalize_fingerprint`` also accepts libotr's human form ("12345678 9ABCDEF0 ...").
The pairing CLI uses ``ensure_key(state_dir) -> fingerprint``; so does
``python -m otrd --print-fingerprint``.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from pathlib import Path

from otrd.potr_compat import OtrDSAKey, generate_key, parse_private_key

KEY_FILE = "otr.key"
_HEX40 = re.compile(r"[0-9a-f]{40}")


class IdentityError(Exception):
    """The key file cannot be read, parsed or written; the message says which and why."""


def key_path(state_dir: Path) -> Path:
    return Path(state_dir) / KEY_FILE


def fingerprint(key: OtrDSAKey) -> str:
    """The key's OTR fingerprint: 40 lowercase hex digits."""
    fpr: str = key.cfingerprint()
    return fpr


def normalize_fingerprint(text: str) -> str:
    """40 lowercase hex digits from any usual spelling, or ``ValueError``."""
    compact = re.sub(r"[\s:]", "", text).lower()
    if not _HEX40.fullmatch(compact):
        raise ValueError(f"not an OTR fingerprint (40 hex digits): {text!r}")
    return compact


def human_fingerprint(fpr: str) -> str:
    """libotr's display form: five groups of eight upper-case hex digits."""
    f = normalize_fingerprint(fpr).upper()
    return " ".join(f[i : i + 8] for i in range(0, 40, 8))


def load_key(state_dir: Path) -> OtrDSAKey | None:
    """The stored key, ``None`` if there is none, ``IdentityError`` if it is unusable."""
    path = key_path(state_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise IdentityError(f"{path}: cannot read the OTR key: {e.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        check_private_file(path, os.fstat(fh.fileno()), IdentityError)
        data = fh.read(64 * 1024)
    try:
        return parse_private_key(data)
    except Exception as e:  # potr's parser raises whatever the bytes provoke
        raise IdentityError(f"{path}: not an OTR DSA private key ({type(e).__name__})") from None


def check_private_file(path: Path, st: os.stat_result, error: type[Exception]) -> None:
    """Raise ``error`` unless ``st`` (of ``path``) is a regular file that only its owner can
    read, owned by us (root, the pairing CLI, may read the service user's file)."""
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: not a regular file")
    euid = os.geteuid()
    if st.st_uid != euid and euid != 0:
        raise error(f"{path}: owned by uid {st.st_uid}, must be {euid}")
    if st.st_mode & 0o077:
        raise error(
            f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets others read the private key; "
            f"run: chmod 600 {path}"
        )


def load_or_create_key(state_dir: Path) -> OtrDSAKey:
    key = load_key(state_dir)
    if key is None:
        key = generate_key()
        _write_atomic(key_path(state_dir), key.serializePrivateKey())
    return key


def ensure_key(state_dir: Path) -> str:
    """Create the key if there is none; return its fingerprint (for pairing)."""
    return fingerprint(load_or_create_key(state_dir))


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise IdentityError(f"{path}: cannot write the OTR key: {e.strerror}") from None
