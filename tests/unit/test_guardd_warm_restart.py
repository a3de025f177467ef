"""guardd's warm restart (issue 9): last-path.json, and the core restoring a saved path."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path as FsPath

import pytest

from guardd import lastpath
from guardd.core import INITIATE_DELAY, GuardCore, Identity, Phase, ValidPath, validate_path
from guardd.device import DeviceSample, PeerSample
from guardd.liveness import RESTORE_CHECK, RESTORE_CONTROLLED_DELAY
from punchguard.messages import Path, Role

PRIV = "0" * 43 + "="
MINE = "A" * 43 + "="
PEER = "B" * 43 + "="
IDENT = Identity("pg0", "wireguard-go", PRIV, MINE, PEER, ("10.99.0.2/32",), keepalive=5)


def valid(role: Role = Role.CONTROLLING, generation: int = 7, port: int = 40123) -> ValidPath:
    msg = Path(port, "198.51.100.20", 61002, role, generation=generation)
    return validate_path("punchd", msg)


# -- the file ---------------------------------------------------------------------------------


def test_save_load_round_trip_private_file(tmp_path: FsPath) -> None:
    now = time.time()
    lastpath.save(tmp_path, valid(Role.CONTROLLED), PEER, now - 12)
    f = tmp_path / lastpath.FILE
    assert f.stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file is gone
    path, age = lastpath.load(tmp_path, PEER, now)
    assert path == valid(Role.CONTROLLED)
    assert 11.9 < age < 12.1


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        ({"peer_public_key": "C" * 43 + "="}, "another peer"),
        ({"v": 2}, "version"),
        ({"saved_at": 0}, "too old"),
        ({"role": "boss"}, "role"),
        ({"endpoint_host": "example.com"}, "bad_address"),
        ({"endpoint_host": "127.0.0.1"}, "bad_address"),  # loopback only when relayed
        ({"local_port": 70000}, "bad_port"),
        ({"generation": -1}, "bad_field"),
    ],
)
def test_bad_files_are_ignored_with_a_reason(
    tmp_path: FsPath, edit: dict[str, object], why: str
) -> None:
    lastpath.save(tmp_path, valid(), PEER, time.time())
    f = tmp_path / lastpath.FILE
    data = json.loads(f.read_text())
    data.update(edit)
    f.write_text(json.dumps(data))
    with pytest.raises(lastpath.NoLastPath, match=why):
        lastpath.load(tmp_path, PEER, time.time())


def test_missing_garbage_and_unsafe_files(tmp_path: FsPath) -> None:
    with pytest.raises(lastpath.NoLastPath, match="no saved path"):
        lastpath.load(tmp_path, PEER, time.time())
    f = tmp_path / lastpath.FILE
    f.write_bytes(b"\xff{not json")
    os.chmod(f, 0o600)
    with pytest.raises(lastpath.NoLastPath, match="not JSON"):
        lastpath.load(tmp_path, PEER, time.time())
    lastpath.save(tmp_path, valid(), PEER, time.time())
    os.chmod(f, 0o644)
    with pytest.raises(lastpath.NoLastPath, match="private"):
        lastpath.load(tmp_path, PEER, time.time())
    f.unlink()
    (tmp_path / "elsewhere").write_text("{}")
    f.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(lastpath.NoLastPath, match="cannot open"):
        lastpath.load(tmp_path, PEER, time.time())


# -- the core ---------------------------------------------------------------------------------


def phase(core: GuardCore) -> Phase:
    return core.phase  # a call, so mypy does not narrow across the events in between


NEW_DEVICE = DeviceSample(PRIV, 0, (PeerSample(PEER, allowed_ips=("10.99.0.2/32",)),))


def sample(rx: int, hs: float) -> DeviceSample:
    peer = PeerSample(PEER, None, ("10.99.0.2/32",), 5, last_handshake=hs, rx_bytes=rx)
    return DeviceSample(PRIV, 40123, (peer,))


@pytest.mark.parametrize(
    ("role", "delay"),
    [(Role.CONTROLLING, INITIATE_DELAY), (Role.CONTROLLED, RESTORE_CONTROLLED_DELAY)],
)
def test_restored_path_is_applied_and_both_roles_initiate(role: Role, delay: float) -> None:
    core = GuardCore(IDENT)
    core.on_sample(NEW_DEVICE, 100.0, 1000.0)
    core.restore(valid(role), 100.0, age=3)
    assert phase(core) is Phase.HANDSHAKING and "restoring" in core.reason
    want = core.desired(100.0)
    assert want.listen_port == 40123 and want.keepalive == 0
    assert core.next_deadline(100.0) == 100.0 + delay
    assert core.desired(100.0 + delay).keepalive == 5  # initiates, whatever the role
    core.on_sample(sample(148, 1001.0), 101.5, 1001.5)
    assert phase(core) is Phase.UP and "restored" in core.reason


def test_restored_path_that_does_not_answer_is_down_soon() -> None:
    core = GuardCore(IDENT)
    core.on_sample(NEW_DEVICE, 100.0, 1000.0)
    core.restore(valid(), 100.0, age=3)
    core.on_sample(NEW_DEVICE, 100.0 + RESTORE_CHECK - 0.5, 1004.5)
    assert phase(core) is Phase.HANDSHAKING
    core.on_sample(NEW_DEVICE, 100.0 + RESTORE_CHECK, 1005.0)
    assert phase(core) is Phase.DOWN and "restored path did not answer" in core.reason
    assert core.state(105.0, 1005.0).generation == 7


def test_punchd_path_replaces_a_restored_one_and_runs_the_staggered_start() -> None:
    core = GuardCore(IDENT)
    core.on_sample(NEW_DEVICE, 100.0, 1000.0)
    core.restore(valid(Role.CONTROLLING), 100.0, age=3)
    core.on_sample(NEW_DEVICE, 106.0, 1006.0)
    assert phase(core) is Phase.DOWN
    new = Path(50000, "198.51.100.20", 12000, Role.CONTROLLED, generation=1764000000)
    core.on_message("punchd", new, 107.0)
    assert not core.restored and phase(core) is Phase.HANDSHAKING
    assert core.reason == "path applied"
    want = core.desired(108.0)
    assert want.listen_port == 50000 and want.keepalive == 0  # controlled: waits again
    assert core.next_deadline(108.0) is None
