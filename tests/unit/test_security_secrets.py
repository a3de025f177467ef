"""Secrets at rest and in crashes.

- Every stage refuses a key file that others can read (or that is a symlink), at the library
  call and as a process: exit status 2 and a clear error naming the file and the fix (guardd's
  own test: test_guardd_keys.py::test_guardd_refuses_to_start_with_an_unsafe_key).
- No secret in a crash: a service that dies with key material in its exception message and its
  local variables logs a traceback with none of it (``punchguard.log.redact``).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from otrd import identity
from otrd.potr_compat import generate_key
from punchguard import log
from signald import savedata

# -- the key files themselves ----------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_otr_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    identity.ensure_key(tmp_path)
    path = identity.key_path(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    os.chmod(path, mode)
    with pytest.raises(identity.IdentityError, match=f"mode 0{mode:o}.*chmod 600"):
        identity.load_key(tmp_path)


def test_otr_key_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    identity.ensure_key(real)
    tmp_path.joinpath("state").mkdir()
    identity.key_path(tmp_path / "state").symlink_to(identity.key_path(real))
    with pytest.raises(identity.IdentityError, match="cannot read"):
        identity.load_key(tmp_path / "state")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o606])
def test_tox_savedata_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = savedata.path_in(tmp_path)
    savedata.write_atomic(path, b"\x00" * 100)
    assert path.stat().st_mode & 0o777 == 0o600
    assert savedata.load(path) == b"\x00" * 100
    os.chmod(path, mode)
    with pytest.raises(savedata.UnsafeSavedata, match="lets others read the Tox secret key"):
        savedata.load(path)


def test_tox_savedata_symlink_and_directory_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    savedata.write_atomic(target, b"x")
    link = tmp_path / "tox.save"
    link.symlink_to(target)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):  # ELOOP
        savedata.load(link)
    link.unlink()
    link.mkdir()
    with pytest.raises(OSError, match=r"Is a directory|not a regular file"):
        savedata.load(link)


def _run_service(module: str, tmp_path: Path, state: Path) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[bus]\ngroup = ""\n[tox]\nbootstrap_nodes = []\n')
    return subprocess.run(
        [
            *(sys.executable, "-m", module, "--config", str(cfg)),
            *("--state-dir", str(state), "--runtime-dir", str(tmp_path / "run")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("PUNCHGUARD_")},
    )


def test_otrd_refuses_to_start_with_an_unsafe_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    identity.ensure_key(state)
    os.chmod(identity.key_path(state), 0o644)
    done = _run_service("otrd", tmp_path, state)
    assert done.returncode == 2, done.stderr
    assert "otr.no_key" in done.stderr and "chmod 600" in done.stderr
    assert "Traceback" not in done.stderr


def test_signald_refuses_to_start_with_unsafe_savedata(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    savedata.write_atomic(savedata.path_in(state), b"\x00" * 64)
    os.chmod(savedata.path_in(state), 0o640)
    done = _run_service("signald", tmp_path, state)
    assert done.returncode == 2, done.stderr
    assert "signal.cannot_start" in done.stderr and "chmod 600" in done.stderr
    assert "Traceback" not in done.stderr


# -- no secret in a crash --------------------------------------------------------------------

CRASHING_SERVICE = textwrap.dedent(
    """
    import base64, sys
    from punchguard.service import run

    WG, TOX, X, RAW = sys.argv[1], sys.argv[2], int(sys.argv[3]), bytes.fromhex(sys.argv[4])

    async def main(ctx):
        private_key = WG  # in a local variable of the crashing frame too
        secret = TOX
        ctx.log.info("loaded", note=f"wg {WG} tox {TOX}", secret_key=TOX, x=X)
        ctx.log.warning("odd", detail=f"x={X} raw={RAW!r}")
        raise ValueError(f"cannot use {private_key} / {secret} / x={X} / {RAW!r} / {RAW.hex()}")

    sys.exit(run("crashy", main, sys.argv[5:]))
    """
)


def test_no_key_material_in_a_crash_log(tmp_path: Path) -> None:
    raw = os.urandom(32)
    wg = base64.b64encode(os.urandom(32)).decode()
    tox = os.urandom(32).hex().upper()
    x = int(generate_key().priv.x)  # a real OTR DSA private exponent
    cfg = tmp_path / "c.toml"
    cfg.write_text('[bus]\ngroup = ""\n[log]\nformat = "json"\n')
    done = subprocess.run(
        [
            *(sys.executable, "-c", CRASHING_SERVICE, wg, tox, str(x), raw.hex()),
            *("--config", str(cfg), "--runtime-dir", str(tmp_path / "run")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "service.crashed" in done.stderr and "Traceback" in done.stderr
    assert "ValueError" in done.stderr  # the traceback is there, only the secrets are not
    for secret in _spellings(wg, tox, x, raw):
        assert secret not in done.stderr, secret
    assert log.REDACTED in done.stderr


def _spellings(wg: str, tox: str, x: int, raw: bytes) -> list[str]:
    """Every usual spelling of the secrets: base64, hex (both cases), decimal, bytes repr."""
    wg_raw = base64.b64decode(wg)
    out = [wg, wg_raw.hex(), tox, tox.lower(), str(x), raw.hex(), repr(raw)[2:-1]]
    out += [base64.b64encode(raw).decode(), base64.b64encode(bytes.fromhex(tox)).decode()]
    return out


def test_redact_text_catches_each_spelling() -> None:
    raw = os.urandom(32)
    wg = base64.b64encode(os.urandom(32)).decode()
    tox = os.urandom(32).hex()
    x = int(generate_key().priv.x)
    text = " | ".join([wg, tox, str(x), repr(raw), raw.hex(), base64.b64encode(raw).decode()])
    redacted = log.redact_text(text)
    for secret in _spellings(wg, tox, x, raw):
        assert secret not in redacted, secret
    # what is not key material stays readable
    assert log.redact_text("port 40123, seq 17, b'short'") == "port 40123, seq 17, b'short'"
