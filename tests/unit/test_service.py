"""The daemon skeleton: refusing to start, crashing, stopping."""

from __future__ import annotations

from pathlib import Path

import pytest

from punchguard import messages as m
from punchguard.service import ServiceContext, refuse, run


def test_refuse_exits_2_without_a_traceback(
    runtime_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main(ctx: ServiceContext) -> None:
        await refuse(ctx, m.OtrState(m.OtrStateKind.FAILED, reason="bad key"), "bad key file")

    rc = run("otrd", main, ["--runtime-dir", str(runtime_dir), "--log-level", "info"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "service.refused" in err
    assert "bad key file" in err
    assert "Traceback" not in err


def test_a_crash_exits_1_and_is_logged(
    runtime_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main(ctx: ServiceContext) -> None:
        raise RuntimeError("boom")

    rc = run("otrd", main, ["--runtime-dir", str(runtime_dir)])
    assert rc == 1
    assert "service.crashed" in capsys.readouterr().err


def test_config_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[bus]\nheartbeet = 1\n")

    async def main(ctx: ServiceContext) -> None:  # pragma: no cover - never reached
        raise AssertionError

    assert run("otrd", main, ["--config", str(bad)]) == 2
    assert "did you mean 'heartbeat'" in capsys.readouterr().err
