"""guardd's key file and settings: created 0600, unsafe files refused with a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from guardd import keys
from guardd.runner import Settings, StartError
from punchguard.config import loads


def test_key_created_0600_and_stable(tmp_path: Path) -> None:
    state = tmp_path / "state"
    pair = keys.ensure_key(state)
    path = keys.key_path(state)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert pair == keys.ensure_key(state)  # not regenerated
    expected = subprocess.run(
        ["wg", "pubkey"], input=path.read_text(), capture_output=True, text=True, check=True
    ).stdout.strip()
    assert pair.public_key == expected == keys.read_public_key(state)
    assert pair.private_key not in repr(pair)
    assert list(state.iterdir()) == [path]  # no temp file left


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    keys.ensure_key(tmp_path)
    os.chmod(keys.key_path(tmp_path), 0o644)
    with pytest.raises(keys.KeyFileError, match="lets others read the private key; run: chmod"):
        keys.ensure_key(tmp_path)


def test_key_that_cannot_be_created_is_a_clear_refusal(tmp_path: Path) -> None:
    # was a bare OSError (a traceback from guardd) when the state directory could not be made
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(keys.KeyFileError, match="cannot create the private key"):
        keys.ensure_key(tmp_path / "file" / "state")


@pytest.mark.parametrize("content", ["", "hello\n", "AAAA\n", "A" * 44 + "\n"])
def test_malformed_key_file(tmp_path: Path, content: str) -> None:
    path = keys.key_path(tmp_path)
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(keys.KeyFileError):
        keys.load_private_key(path)


def test_symlinked_key_file_is_refused(tmp_path: Path) -> None:
    keys.ensure_key(tmp_path / "real")
    (tmp_path / "state").mkdir()
    os.symlink(keys.key_path(tmp_path / "real"), keys.key_path(tmp_path / "state"))
    with pytest.raises(keys.KeyFileError):
        keys.load_private_key(keys.key_path(tmp_path / "state"))


PEER_KEY = "XiYqyRM0KKasWSy92G/NX18VZmgLqa5Gs916/z9ZzgQ="
GOOD = f"""
[wireguard]
interface = "pg7"
address = "10.99.0.1/24"
[peer]
wireguard_public_key = "{PEER_KEY}"
tunnel_address = "10.99.0.2/24"
"""


def test_settings_from_config() -> None:
    s = Settings.from_config(loads(GOOD))
    assert (s.interface, s.address, s.peer_address, s.keepalive) == (
        "pg7",
        "10.99.0.1/24",
        "10.99.0.2/32",
        5,
    )


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ('interface = "pg7"', 'interface = "a-very-long-name0"', "interface"),
        ('interface = "pg7"', 'interface = "../x"', "interface"),
        ('address = "10.99.0.1/24"', 'address = ""', r"\[wireguard\] address"),
        ('tunnel_address = "10.99.0.2/24"', 'tunnel_address = "fd00::2/64"', "same family"),
        ('tunnel_address = "10.99.0.2/24"', 'tunnel_address = "10.99.0.1/24"', "differ"),
        (PEER_KEY, "not-a-key", "wireguard_public_key"),
    ],
)
def test_bad_settings(old: str, new: str, match: str) -> None:
    with pytest.raises(StartError, match=match):
        Settings.from_config(loads(GOOD.replace(old, new)))


def test_guardd_refuses_to_start_with_an_unsafe_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    keys.ensure_key(state)
    os.chmod(keys.key_path(state), 0o640)
    (tmp_path / "c.toml").write_text(GOOD.replace('"pg7"', '"pgunsafe0"') + '[bus]\ngroup = ""\n')
    done = subprocess.run(
        [
            *(sys.executable, "-m", "guardd", "--config", str(tmp_path / "c.toml")),
            *("--state-dir", str(state), "--runtime-dir", str(tmp_path / "run")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "lets others read the private key" in done.stderr
    assert "Traceback" not in done.stderr
