"""This host's identities and the peer record: what `punchguard init` and `pair` manage.

Files, under the state root (``[paths] state_dir``; each stage sees only its subdirectory):

    signald/tox.save      Tox identity (savedata), 0600, user punchguard   (signald's)
    otrd/otr.key          OTR DSA key, 0600, user punchguard               (otrd's)
    guardd/wg.key         WireGuard private key, 0600, root                (guardd's)
    self.toml             this host's proposed tunnel addresses, 0644
    peer.toml             the peer record, 0644: [peer] tox_address, otr_fingerprint,
                          wireguard_public_key, tunnel_address, and [wireguard] address
                          (ours, as agreed); public values only

and the config file ``punchguard init`` writes if there is none (``write_config``): 0640
root:punchguard, as it may hold a TURN password that punchd must read.

The peer record is an overlay of the config (``config.load`` reads it: see
``config.peer_file``), so the stages keep reading ``config.peer``. It is written atomically:
a bad code never leaves a half-written peer.

The identity functions live with the stage that owns each key; they are imported here lazily,
since this is the one place (the CLI) that composes them.
"""

from __future__ import annotations

import grp
import ipaddress
import json
import os
import pwd
import secrets
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

from punchguard import privatefile
from punchguard.invite import Invitation, InviteError, agree_addresses
from punchguard.stack import SERVICE_USER

SELF_FILE = "self.toml"
PEER_FILE = "peer.toml"
CONFIG_GROUP = SERVICE_USER  # the unprivileged stages' group (scripts/setup makes both)


class PairingError(Exception):
    """A pairing problem, with a message fit for the user."""


@dataclass(frozen=True)
class Identity:
    tox_address: str
    otr_fingerprint: str
    wireguard_public_key: str


def identity_files(state_root: Path) -> dict[str, Path]:
    return {
        "Tox": state_root / "signald" / "tox.save",
        "OTR": state_root / "otrd" / "otr.key",
        "WireGuard": state_root / "guardd" / "wg.key",
    }


def existing_identities(state_root: Path) -> list[str]:
    return [name for name, path in identity_files(state_root).items() if path.exists()]


def ensure_identities(state_root: Path) -> Identity:
    """Create whatever identity is missing (as the owner of each stage's directory)."""
    from guardd import keys as wg_keys
    from otrd import identity as otr_identity
    from signald import address as tox_address

    wg = wg_keys.ensure_key(state_root / "guardd")
    otr_dir = state_root / "otrd"
    fpr = otr_identity.ensure_key(otr_dir)
    _chown_like_dir(otr_identity.key_path(otr_dir), otr_dir)
    tox = _tox_address(tox_address, state_root / "signald")
    return Identity(tox_address=tox, otr_fingerprint=fpr, wireguard_public_key=wg.public_key)


def _tox_address(module: object, state_dir: Path) -> str:
    # signald.address prints the address (creating the savedata, owned like its directory)
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = module.main(["--state-dir", str(state_dir)])  # type: ignore[attr-defined]  # signald.address.main
    if rc != 0:
        raise PairingError(f"could not create or read the Tox identity in {state_dir}")
    return out.getvalue().strip()


def _chown_like_dir(path: Path, directory: Path) -> None:
    if os.geteuid() == 0 and path.exists():
        st = directory.stat()
        os.chown(path, st.st_uid, st.st_gid)


def remove_identities(state_root: Path) -> list[Path]:
    removed = []
    for path in identity_files(state_root).values():
        if path.exists():
            path.unlink()
            removed.append(path)
    return removed


# -- tunnel addresses ------------------------------------------------------------------------


def used_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks routed on this machine (to avoid proposing one that collides)."""
    try:
        out = subprocess.run(
            ["ip", "-j", "-4", "route", "show", "table", "all"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        routes = json.loads(out or "[]")
    except (OSError, subprocess.CalledProcessError, json.JSONDecodeError):
        return []
    nets = []
    for r in routes:
        dst = r.get("dst", "")
        if dst and dst != "default":
            try:
                nets.append(ipaddress.IPv4Network(dst, strict=False))
            except ValueError:
                continue
    return nets


def pick_tunnel_network(used: list[ipaddress.IPv4Network]) -> tuple[str, str]:
    """A random /24 in 10.100.0.0-10.199.255.0 that no local route overlaps: (.1, .2)."""
    for _ in range(200):
        net = ipaddress.IPv4Network(
            f"10.{100 + secrets.randbelow(100)}.{secrets.randbelow(256)}.0/24"
        )
        if not any(net.overlaps(u) for u in used):
            return f"{net[1]}/24", f"{net[2]}/24"
    raise PairingError("could not find a free 10.x.y.0/24 for the tunnel; set one with --address")


def write_self(state_root: Path, mine: str, yours: str) -> None:
    _write_atomic(
        state_root / SELF_FILE,
        "# this host's proposal for the tunnel addresses (punchguard init)\n"
        f'[proposal]\ntunnel_address = "{mine}"\npeer_tunnel_address = "{yours}"\n',
    )


def read_self(state_root: Path) -> tuple[str, str]:
    try:
        data = tomllib.loads((state_root / SELF_FILE).read_text())
        p = data["proposal"]
        return str(p["tunnel_address"]), str(p["peer_tunnel_address"])
    except FileNotFoundError:
        raise PairingError(f"{state_root}: no identity here yet; run `punchguard init`") from None
    except (tomllib.TOMLDecodeError, KeyError) as e:
        raise PairingError(f"{state_root / SELF_FILE} is damaged ({e})") from None


def invitation(state_root: Path) -> Invitation:
    """This host's invitation (its identity must exist: `punchguard init`)."""
    missing = sorted(set(identity_files(state_root)) - set(existing_identities(state_root)))
    if missing:
        raise PairingError(
            f"no {', '.join(missing)} identity in {state_root}; run `punchguard init` first"
        )
    ident = ensure_identities(state_root)
    mine, yours = read_self(state_root)
    return Invitation(
        tox_address=ident.tox_address,
        otr_fingerprint=ident.otr_fingerprint,
        wireguard_public_key=ident.wireguard_public_key,
        tunnel_address=mine,
        peer_tunnel_address=yours,
    )


# -- the peer record -------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerRecord:
    peer: Invitation
    my_address: str
    peer_address: str


def plan_pairing(state_root: Path, code_text: str) -> PeerRecord:
    """Validate ``code_text`` against this host's identity; nothing is written."""
    from punchguard import invite

    peer = invite.decode(code_text)
    mine = invitation(state_root)
    if peer.tox_address[:64] == mine.tox_address[:64] or (
        peer.wireguard_public_key == mine.wireguard_public_key
    ):
        raise InviteError("this is your own invitation: pair with the other host's code")
    my_addr, peer_addr = agree_addresses(
        mine.wireguard_public_key,
        (mine.tunnel_address, mine.peer_tunnel_address),
        peer.wireguard_public_key,
        (peer.tunnel_address, peer.peer_tunnel_address),
    )
    return PeerRecord(peer=peer, my_address=my_addr, peer_address=peer_addr)


def write_peer_record(state_root: Path, record: PeerRecord) -> Path:
    p = record.peer
    text = (
        "# The paired peer (punchguard pair). Public values only; replace with\n"
        "# `punchguard pair`, remove with `punchguard unpair`.\n"
        "[peer]\n"
        f'tox_address = "{p.tox_address}"\n'
        f'otr_fingerprint = "{p.otr_fingerprint}"\n'
        f'wireguard_public_key = "{p.wireguard_public_key}"\n'
        f'tunnel_address = "{record.peer_address}"\n'
        "\n[wireguard]\n"
        f'address = "{record.my_address}"\n'
    )
    path = state_root / PEER_FILE
    _write_atomic(path, text)
    return path


def read_peer_record(state_root: Path) -> dict[str, dict[str, str]] | None:
    try:
        data = tomllib.loads((state_root / PEER_FILE).read_text())
    except FileNotFoundError:
        return None
    except tomllib.TOMLDecodeError as e:
        raise PairingError(f"{state_root / PEER_FILE} is damaged: {e}") from None
    return {k: dict(v) for k, v in data.items() if isinstance(v, dict)}


def _write_atomic(path: Path, text: str) -> None:
    """A public file (self.toml, peer.toml: public values only), 0644, replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    privatefile.write_atomic(path, text.encode(), mode=0o644)


# -- the config file -------------------------------------------------------------------------


def config_gid() -> int | None:
    """The group of the unprivileged stages (``CONFIG_GROUP``), if it exists."""
    try:
        return grp.getgrnam(CONFIG_GROUP).gr_gid
    except KeyError:
        return None


def write_config(path: Path, text: str) -> str:
    """Create the config file (never replacing one: ``FileExistsError``). It may hold a TURN
    password, so it is 0640 root:``CONFIG_GROUP`` (the unprivileged stages read it), or 0600
    when that group does not exist. Returns the mode and group it got, to tell the user."""
    path.parent.mkdir(parents=True, exist_ok=True)
    gid = config_gid()
    if gid is None:
        privatefile.write_atomic(path, text.encode(), mode=0o600, exclusive=True)
        return "0600"
    privatefile.write_atomic(path, text.encode(), mode=0o640, exclusive=True, gid=gid)
    return f"0640, group {CONFIG_GROUP}"


def service_user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True
