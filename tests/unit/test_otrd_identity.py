"""The OTR key file: created once, 0600, atomic, re-read; fingerprints."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from otrd.identity import (
    IdentityError,
    ensure_key,
    human_fingerprint,
    key_path,
    load_key,
    load_or_create_key,
    normalize_fingerprint,
)


def test_key_created_once_0600(tmp_path: Path) -> None:
    state = tmp_path / "state"
    fpr = ensure_key(state)
    path = key_path(state)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(state.iterdir()) == [path]  # no temporary file left
    assert ensure_key(state) == fpr
    key = load_or_create_key(state)
    assert key.cfingerprint() == fpr


def test_missing_and_bad_key(tmp_path: Path) -> None:
    assert load_key(tmp_path) is None
    key_path(tmp_path).write_bytes(b"garbage")
    key_path(tmp_path).chmod(0o600)
    with pytest.raises(IdentityError, match="not an OTR DSA private key"):
        load_key(tmp_path)


def test_fingerprint_spellings() -> None:
    f = "0123456789abcdef0123456789abcdef01234567"
    assert normalize_fingerprint(f.upper()) == f
    assert normalize_fingerprint(human_fingerprint(f)) == f
    assert human_fingerprint(f) == "01234567 89ABCDEF 01234567 89ABCDEF 01234567"
    with pytest.raises(ValueError, match="40 hex"):
        normalize_fingerprint("abc")
