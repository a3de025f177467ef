"""Fixtures shared by every tier."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests marked ``root`` need network namespaces and WireGuard: skip them, saying why.
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, WireGuard)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def run_id() -> str:
    """A short name unique to this test run: prefix namespaces, interfaces and sockets with it
    (wireguard-go's UAPI sockets are shared by every namespace on the machine)."""
    return "pg" + secrets.token_hex(3)


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A private runtime directory for one host's bus, with a short path (a UNIX socket path
    has at most 107 bytes, and pytest's tmp_path can be longer than that)."""
    d = Path(tempfile.mkdtemp(prefix="pg-run-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """A test that configures logging (``punchguard.log.setup``) binds structlog to that test's
    captured stderr; later tests must not write to the closed stream."""
    yield
    structlog.reset_defaults()
