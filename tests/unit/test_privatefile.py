"""punchguard.privatefile: what a private file is, reading one safely, writing one atomically."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from punchguard import privatefile


class Unsafe(Exception):
    pass


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """umask 0: a file's mode is whatever the code asked for, nothing is cleared for it."""
    old = os.umask(0)
    yield
    os.umask(old)


def private(path: Path, data: bytes = b"secret") -> Path:
    privatefile.write_atomic(path, data)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(directory: Path) -> list[Path]:
    return sorted(directory.glob(".*tmp"))


# -- write_atomic -----------------------------------------------------------------------------


@pytest.mark.usefixtures("loose_umask")
def test_written_0600_whole_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    privatefile.write_atomic(path, b"one")
    assert mode_of(path) == 0o600
    privatefile.write_atomic(path, b"two, longer")  # replaces
    assert path.read_bytes() == b"two, longer"
    assert mode_of(path) == 0o600
    assert leftovers(tmp_path) == []


def test_requested_mode_and_group_in_spite_of_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    old = os.umask(0o077)  # would clear the group bit
    try:
        privatefile.write_atomic(path, b"x", mode=0o640, gid=os.getegid())
    finally:
        os.umask(old)
    assert mode_of(path) == 0o640
    assert path.stat().st_gid == os.getegid()


def test_replacing_a_symlink_replaces_the_link_not_its_target(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep me")
    link = tmp_path / "key"
    link.symlink_to(target)
    privatefile.write_atomic(link, b"new")
    assert not link.is_symlink() and link.read_bytes() == b"new"
    assert target.read_bytes() == b"keep me"


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = private(tmp_path / "key", b"old")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        privatefile.write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_a_failed_rename_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "key"
    target.mkdir()
    (target / "inside").write_text("x")  # rename over a non-empty directory fails
    with pytest.raises(OSError, match=r"Is a directory|Directory not empty"):
        privatefile.write_atomic(target, b"new")
    assert leftovers(tmp_path) == []
    assert (target / "inside").exists()


def test_exclusive_creates_once_and_refuses_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "wg.key"
    privatefile.write_atomic(path, b"first", exclusive=True)
    assert path.read_bytes() == b"first"
    assert mode_of(path) == 0o600
    with pytest.raises(FileExistsError):
        privatefile.write_atomic(path, b"second", exclusive=True)
    assert path.read_bytes() == b"first"
    assert leftovers(tmp_path) == []


def test_exclusive_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "wg.key"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        privatefile.write_atomic(link, b"x", exclusive=True)
    assert not (tmp_path / "nowhere").exists()
    assert leftovers(tmp_path) == []


# -- check and read ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_readable_by_others_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = private(tmp_path / "key")
    os.chmod(path, mode)
    with pytest.raises(Unsafe) as e:
        privatefile.read(path, "the test key", Unsafe)
    assert str(e.value) == (
        f"{path}: mode {mode:04o} lets others read the test key; run: chmod 600 {path}"
    )


@pytest.mark.parametrize(("mode", "access"), [(0o620, "change"), (0o601, "open")])
def test_other_group_or_world_bits_are_refused_too(tmp_path: Path, mode: int, access: str) -> None:
    path = private(tmp_path / "key")
    os.chmod(path, mode)
    with pytest.raises(Unsafe, match=f"lets others {access} the test key; run: chmod 600"):
        privatefile.check(path, path.stat(), "the test key", Unsafe)


def test_private_file_is_read(tmp_path: Path) -> None:
    path = private(tmp_path / "key", b"0123456789")
    assert privatefile.read(path, "the test key", Unsafe) == b"0123456789"
    assert privatefile.read(path, "the test key", Unsafe, limit=4) == b"0123"
    os.chmod(path, 0o400)
    assert privatefile.read(path, "the test key", Unsafe) == b"0123456789"


def test_missing_file_is_none(tmp_path: Path) -> None:
    assert privatefile.read(tmp_path / "nothing", "the test key", Unsafe) is None


def test_symlink_is_refused(tmp_path: Path) -> None:
    real = private(tmp_path / "real")
    link = tmp_path / "key"
    link.symlink_to(real)
    with pytest.raises(Unsafe, match=f"{link}: cannot read the test key: Too many levels"):
        privatefile.read(link, "the test key", Unsafe)


def test_directory_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "key"
    d.mkdir(mode=0o700)
    with pytest.raises(Unsafe, match=f"{d}: not a regular file"):
        privatefile.read(d, "the test key", Unsafe)


def test_the_callers_exception_type_is_raised(tmp_path: Path) -> None:
    class UnsafeOSError(OSError):
        pass

    path = private(tmp_path / "key")
    os.chmod(path, 0o644)
    with pytest.raises(UnsafeOSError, match="chmod 600"):
        privatefile.read(path, "the test key", UnsafeOSError)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owner_must_be_us_unless_root_may_read_any(tmp_path: Path) -> None:
    path = private(tmp_path / "key")
    os.chown(path, 65534, -1)  # nobody's
    with pytest.raises(Unsafe, match=f"owned by uid 65534, must be 0.*run: chown 0 {path}"):
        privatefile.read(path, "the test key", Unsafe)
    assert privatefile.read(path, "the test key", Unsafe, root_reads_any=True) == b"secret"
