"""The config file may hold a TURN password: `punchguard init` writes it 0640 root:punchguard
(0600 without that group), and `punchguard doctor` warns when a config with one is
world-readable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from punchguard import config as configmod
from punchguard import pairing
from punchguard.commands import doctor

TEXT = '[policy]\nmode = "always"\n'


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- punchguard init ---------------------------------------------------------------------------


def test_init_writes_the_config_0640_for_the_service_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gid = os.getegid()  # a group we may give a file to, root or not
    monkeypatch.setattr(pairing, "config_gid", lambda: gid)
    path = tmp_path / "etc" / "config.toml"
    assert pairing.write_config(path, TEXT) == "0640, group punchguard"
    assert mode_of(path) == 0o640
    assert path.stat().st_gid == gid
    assert path.read_text() == TEXT
    assert configmod.loads(path.read_text()).policy.mode == "always"


def test_init_writes_the_config_0600_without_the_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pairing, "CONFIG_GROUP", "no-such-group-pg")
    assert pairing.config_gid() is None
    path = tmp_path / "config.toml"
    assert pairing.write_config(path, TEXT) == "0600"
    assert mode_of(path) == 0o600


def test_init_never_replaces_a_config(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("# mine\n")
    with pytest.raises(FileExistsError):
        pairing.write_config(path, TEXT)
    assert path.read_text() == "# mine\n"
    assert list(tmp_path.iterdir()) == [path]


def test_template_config_is_valid() -> None:
    from punchguard.commands.pairing import CONFIG_TEMPLATE

    text = CONFIG_TEMPLATE.format(runtime_dir="/run/x", state_dir="/var/lib/x", interface="pg9")
    assert configmod.loads(text).wireguard.interface == "pg9"


def test_the_public_files_stay_0644(tmp_path: Path) -> None:
    pairing.write_self(tmp_path, "10.1.2.1/24", "10.1.2.2/24")
    assert mode_of(tmp_path / pairing.SELF_FILE) == 0o644
    assert pairing.read_self(tmp_path) == ("10.1.2.1/24", "10.1.2.2/24")


# -- punchguard doctor -------------------------------------------------------------------------

TURN = """
[[ice.turn_servers]]
host = "turn.example.net"
port = 3478
username = "alice"
password = "{password}"
"""


def config_file(tmp_path: Path, mode: int, password: str = "hunter2") -> configmod.Config:
    path = tmp_path / "config.toml"
    text = (
        f'[paths]\nruntime_dir = "{tmp_path}/run"\nstate_dir = "{tmp_path}/state"\n'
        + TURN.format(password=password)
    )
    path.write_text(text)
    os.chmod(path, mode)
    return configmod.loads(text, source=str(path))


def test_doctor_warns_about_a_world_readable_turn_password(tmp_path: Path) -> None:
    cfg = config_file(tmp_path, 0o644)
    path = tmp_path / "config.toml"
    [check] = doctor.check_config_secret(cfg)
    assert not check.ok and check.warn
    assert "TURN password" in check.what and "0644" in check.what
    assert check.fix == f"chmod 640 {path}; chgrp punchguard {path}"
    # it is one line of the report, a warning (not a failure)
    assert check in doctor.run_checks(cfg, network=False)


@pytest.mark.parametrize("mode", [0o640, 0o600])
def test_doctor_accepts_a_turn_password_others_cannot_read(tmp_path: Path, mode: int) -> None:
    [check] = doctor.check_config_secret(config_file(tmp_path, mode))
    assert check.ok and "TURN password" in check.what


def test_doctor_says_nothing_without_a_turn_password(tmp_path: Path) -> None:
    assert doctor.check_config_secret(config_file(tmp_path, 0o644, password="")) == []
    assert doctor.check_config_secret(configmod.loads("")) == []  # no file, no TURN server
