"""Configuration: defaults, typed validation, errors that name the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from punchguard import config as c


def test_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(c.ENV_RUNTIME_DIR, raising=False)
    monkeypatch.delenv(c.ENV_STATE_DIR, raising=False)
    cfg = c.from_dict({}, source="<none>")
    assert cfg.paths.runtime_dir == Path("/run/punchguard")
    assert cfg.policy.mode == "on-demand"
    assert len(cfg.tox.bootstrap_nodes) >= 2
    assert all(len(n.public_key) == 64 for n in cfg.tox.bootstrap_nodes)
    assert cfg.ice.stun_servers


def test_file_values_and_tables(tmp_path: Path) -> None:
    f = tmp_path / "pg.toml"
    f.write_text(
        """
[paths]
runtime_dir = "/tmp/x/run"
[bus]
heartbeat = 1
[tox]
udp = false
bootstrap_nodes = [{host = "198.51.100.2", port = 33445, public_key = "%s"}]
[ice]
stun_servers = ["198.51.100.3:3478"]
turn_servers = [{host = "198.51.100.3", port = 3478, username = "u", password = "p"}]
"""
        % ("AB" * 32)
    )
    cfg = c.load(f, env=False)
    assert cfg.source == str(f)
    assert cfg.paths.runtime_dir == Path("/tmp/x/run")
    assert cfg.bus.heartbeat == 1.0 and isinstance(cfg.bus.heartbeat, float)
    assert cfg.tox.udp is False
    assert cfg.tox.bootstrap_nodes == (c.ToxNode("198.51.100.2", 33445, "AB" * 32),)
    assert cfg.ice.turn_servers[0].username == "u"


def test_environment_overrides_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(c.ENV_RUNTIME_DIR, "/tmp/a")
    monkeypatch.setenv(c.ENV_STATE_DIR, "/tmp/b")
    cfg = c.loads('[paths]\nruntime_dir = "/elsewhere"', env=True)
    assert cfg.paths.runtime_dir == Path("/tmp/a")
    assert cfg.paths.state_dir == Path("/tmp/b")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[bus]\nheartbeet = 1", "unknown key 'heartbeet' (did you mean 'heartbeat'?)"),
        ("[nope]\n", "unknown key 'nope'"),
        ('[bus]\nheartbeat = "1"', "bus.heartbeat: expected a number, got a string '1'"),
        ("[tox]\nudp = 1", "tox.udp: expected true or false"),
        ('[policy]\nmode = "sometimes"', "expected one of on-demand, always"),
        ("[tox]\nbootstrap_nodes = [{host = 'h', port = 1}]", "missing required key 'public_key'"),
        ("[tox]\nbootstrap_nodes = [{host = 'h', port = '1', public_key = 'k'}]", "port"),
        ("bus = 3", "[bus]: expected a table"),
        ("[bus\n", "not valid TOML"),
    ],
)
def test_errors_name_file_key_and_expectation(text: str, fragment: str) -> None:
    with pytest.raises(c.ConfigError) as info:
        c.loads(text, source="test.toml")
    assert "test.toml" in str(info.value)
    assert fragment in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(c.ConfigError, match="no such config file"):
        c.load(tmp_path / "absent.toml")


def test_config_file_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(c.ENV_CONFIG, str(tmp_path / "env.toml"))
    assert c.config_file("explicit.toml") == Path("explicit.toml")
    assert c.config_file() == tmp_path / "env.toml"
