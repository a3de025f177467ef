"""This host's WireGuard identity: ``<state_dir>/wg.key``, root-owned, mode 0600.

The key pair is made by wireguard-tools (``wg genkey`` / ``wg pubkey``): no cryptography here.
The private key never leaves this module's callers in guardd (it goes to the interface only and
is redacted from logs); the public key is published in ``guard.state`` and used by pairing.

API for the pairing CLI::

    from guardd.keys import ensure_key, read_public_key
    pair = ensure_key(state_dir)      # creates wg.key on first use; KeyFileError if unsafe
    pair.public_key                   # base64, 44 characters
    read_public_key(state_dir)        # the public key of an existing key file
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from punchguard import privatefile

KEY_FILE = "wg.key"
WHAT = "the private key"  # what the file holds, in errors


class KeyFileError(Exception):
    """The key file is missing, unsafe (readable by others, wrong owner) or malformed."""


@dataclass(frozen=True)
class KeyPair:
    private_key: str = field(repr=False)  # base64; never log it
    public_key: str


def key_path(state_dir: Path) -> Path:
    return state_dir / KEY_FILE


def check_key(text: str) -> str:
    """``text`` stripped if it is a base64 WireGuard key (32 bytes), else ``KeyFileError``."""
    key = text.strip()
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError("not a base64 WireGuard key") from None
    if len(raw) != 32:
        raise KeyFileError(f"a WireGuard key is 32 bytes, not {len(raw)}")
    return key


def _wg(args: list[str], stdin: str = "") -> str:
    try:
        done = subprocess.run(
            ["wg", *args], input=stdin, capture_output=True, text=True, timeout=10, check=False
        )
    except FileNotFoundError:
        raise KeyFileError("wg (wireguard-tools) is not installed") from None
    if done.returncode != 0:
        raise KeyFileError(f"wg {args[0]} failed: {done.stderr.strip()[:200]}")
    return done.stdout.strip()


def generate_private_key() -> str:
    return check_key(_wg(["genkey"]))


def public_key(private_key: str) -> str:
    return check_key(_wg(["pubkey"], check_key(private_key) + "\n"))


def load_private_key(path: Path) -> str:
    """The private key in ``path``; ``KeyFileError`` if it is not safe or not a key."""
    data = privatefile.read(path, WHAT, KeyFileError, limit=200)
    if data is None:
        raise KeyFileError(f"{path}: no such key file")
    try:
        return check_key(data.decode("ascii", errors="replace"))
    except KeyFileError as e:
        raise KeyFileError(f"{path}: {e}") from None


def ensure_key(state_dir: Path) -> KeyPair:
    """This host's key pair, creating ``<state_dir>/wg.key`` (0600) if it does not exist."""
    path = key_path(state_dir)
    if not path.exists():
        private = generate_private_key()
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # create-once: never replaces a key someone else just made (we then read theirs)
            with contextlib.suppress(FileExistsError):
                privatefile.write_atomic(path, (private + "\n").encode(), exclusive=True)
        except OSError as e:  # a read-only or full disk: a clear refusal, not a traceback
            raise KeyFileError(f"{path}: cannot create the private key: {e.strerror}") from None
    private = load_private_key(path)
    return KeyPair(private, public_key(private))


def read_public_key(state_dir: Path) -> str:
    return public_key(load_private_key(key_path(state_dir)))
