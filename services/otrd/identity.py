"""This host's OTR identity: the DSA key in ``<state_dir>/otr.key`` and its fingerprint.

The key is generated once (``ensure_key``), written atomically (temporary file in the same
directory, fsync, rename) with mode 0600, and read by otrd at start. The file holds potr's
private key serialization (OTR's public key type 0x0000 followed by the MPIs p, q, g, y, x).
A key file that group or others can read, that is not ours, or that is a symlink is
refused (``IdentityError`` naming the fix); otrd then refuses to start (docs/security.md).
Reading, checking and writing are ``punchguard.privatefile``'s.

Fingerprints are SHA-1 over the public key's MPIs (OTR v2), shown as 40 lowercase hex digits;
``normalize_fingerprint`` also accepts libotr's human form ("12345678 9ABCDEF0 ...").
The pairing CLI uses ``ensure_key(state_dir) -> fingerprint``; so does
``python -m otrd --print-fingerprint``.
"""

from __future__ import annotations

import re
from pathlib import Path

from otrd.potr_compat import OtrDSAKey, generate_key, parse_private_key
from punchguard import privatefile

KEY_FILE = "otr.key"
WHAT = "the OTR key"  # what the file holds, in errors
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
    # root (the pairing CLI) may read the service user's key
    data = privatefile.read(path, WHAT, IdentityError, limit=64 * 1024, root_reads_any=True)
    if data is None:
        return None
    try:
        return parse_private_key(data)
    except Exception as e:  # potr's parser raises whatever the bytes provoke
        raise IdentityError(f"{path}: not an OTR DSA private key ({type(e).__name__})") from None


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
    try:
        privatefile.write_atomic(path, data)
    except OSError as e:
        raise IdentityError(f"{path}: cannot write {WHAT}: {e.strerror}") from None
