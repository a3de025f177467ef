"""`punchguard doctor`: check this machine, one line per check, each failure with a fix."""

from __future__ import annotations

import argparse
import ctypes
import grp
import pwd
import shutil
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from punchguard import config as configmod
from punchguard import pairing, privatefile
from punchguard.commands import EXIT_FAIL, EXIT_OK, example
from punchguard.stack import SERVICE_USER

TIMEOUT = 1.5


@dataclass(frozen=True)
class Check:
    ok: bool
    what: str
    fix: str = ""
    warn: bool = False  # a problem that does not stop PunchGuard


def check_tun() -> Check:
    p = Path("/dev/net/tun")
    if p.exists() and stat.S_ISCHR(p.stat().st_mode):
        return Check(True, "/dev/net/tun present")
    return Check(False, "/dev/net/tun missing", "modprobe tun (or give the container the device)")


def check_wireguard() -> Check:
    kernel = Path("/sys/module/wireguard").exists()
    go = shutil.which("wireguard-go")
    if kernel:
        return Check(
            True, "kernel WireGuard loaded" + (" (wireguard-go also present)" if go else "")
        )
    if go:
        return Check(True, f"wireguard-go at {go} (no kernel module: userspace data plane)")
    return Check(
        False, "no WireGuard: no kernel module, no wireguard-go", "apt install wireguard-go"
    )


def check_wg_tools() -> Check:
    if shutil.which("wg"):
        return Check(True, "wireguard-tools (wg) present")
    return Check(False, "wg missing", "apt install wireguard-tools", warn=True)


def check_libtoxcore() -> Check:
    try:
        ctypes.CDLL("libtoxcore.so.2")
    except OSError:
        return Check(False, "libtoxcore.so.2 not found", "apt install libtoxcore2")
    return Check(True, "libtoxcore.so.2 loads")


def check_user(group: str) -> Check:
    try:
        pwd.getpwnam(SERVICE_USER)
        grp.getgrnam(group)
    except KeyError:
        return Check(
            False,
            f"service user {SERVICE_USER!r} or group {group!r} missing",
            "run scripts/setup (or useradd --system punchguard)",
        )
    return Check(True, f"service user {SERVICE_USER!r} and group {group!r} exist")


def check_state(cfg: configmod.Config) -> list[Check]:
    root = cfg.paths.state_dir
    if not root.is_dir():
        return [Check(False, f"no state directory {root}", "sudo punchguard init")]
    out: list[Check] = []
    missing = set(pairing.identity_files(root)) - set(pairing.existing_identities(root))
    if missing:
        out.append(
            Check(False, f"no {', '.join(sorted(missing))} identity", "sudo punchguard init")
        )
    for name, path in pairing.identity_files(root).items():
        if not path.exists():
            continue
        st = path.stat()
        owner = pwd.getpwuid(st.st_uid).pw_name if _uid_known(st.st_uid) else str(st.st_uid)
        want_owner = "root" if name == "WireGuard" else SERVICE_USER
        if st.st_mode & privatefile.OTHERS:
            out.append(
                Check(
                    False,
                    f"{path} is readable by others (mode {st.st_mode & 0o777:o})",
                    f"chmod 600 {path}",
                )
            )
        elif owner != want_owner:
            out.append(Check(False, f"{path} owned by {owner}", f"chown {want_owner} {path}"))
        else:
            out.append(Check(True, f"{name} key {path} is 0600, {owner}'s"))
    if (root / pairing.PEER_FILE).exists():
        out.append(Check(True, f"paired (peer record {root / pairing.PEER_FILE})"))
    else:
        out.append(Check(False, "not paired", "punchguard pair CODE (the other host's invite)"))
    return out


def check_config_secret(cfg: configmod.Config) -> list[Check]:
    """A config file holding a TURN password must not be world-readable (docs/security.md)."""
    path = Path(cfg.source)
    if not any(t.password for t in cfg.ice.turn_servers) or not path.is_file():
        return []
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o004:
        return [
            Check(
                False,
                f"config {path} holds a TURN password and is readable by others (mode {mode:04o})",
                f"chmod 640 {path}; chgrp {pairing.CONFIG_GROUP} {path}",
                warn=True,
            )
        ]
    return [Check(True, f"config {path} holds a TURN password, not readable by others")]


def _uid_known(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _split_host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def stun_binding(host: str, port: int) -> tuple[str, int]:
    """One STUN Binding request (RFC 5389) over UDP; our mapped address as the server saw it."""
    from aioice import stun

    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(bytes(request), (host, port))
        data, _ = s.recvfrom(2048)
    answer = stun.parse_message(data)
    mapped = answer.attributes.get("XOR-MAPPED-ADDRESS") or answer.attributes.get("MAPPED-ADDRESS")
    if not mapped:
        raise OSError("answer without a mapped address")
    return str(mapped[0]), int(mapped[1])


def check_stun(cfg: configmod.Config) -> list[Check]:
    if not cfg.ice.stun_servers:
        return [Check(False, "no STUN server configured", "add [ice] stun_servers", warn=True)]
    out = []
    for server in cfg.ice.stun_servers:
        try:
            host, port = _split_host_port(server)
            mapped = stun_binding(host, port)
        except (OSError, ValueError) as e:
            out.append(
                Check(False, f"STUN {server}: no answer ({e})", "check the server / firewall")
            )
        else:
            out.append(Check(True, f"STUN {server} answers: we are {mapped[0]}:{mapped[1]}"))
    return out


def check_tox_nodes(cfg: configmod.Config) -> list[Check]:
    if not cfg.tox.bootstrap_nodes:
        return [Check(False, "no Tox bootstrap node configured", "add [tox] bootstrap_nodes")]
    out = []
    for node in cfg.tox.bootstrap_nodes:
        label = f"Tox node {node.host}:{node.port}"
        try:
            socket.getaddrinfo(node.host, node.port, type=socket.SOCK_DGRAM)
        except OSError as e:
            out.append(Check(False, f"{label}: does not resolve ({e})", "check DNS / the host"))
            continue
        if node.tcp_port:
            try:
                with socket.create_connection((node.host, node.tcp_port), timeout=TIMEOUT):
                    pass
            except OSError as e:
                out.append(
                    Check(
                        False,
                        f"{label}: TCP relay {node.tcp_port} unreachable ({e})",
                        "check the firewall; Tox can still use UDP",
                        warn=True,
                    )
                )
                continue
            out.append(Check(True, f"{label}: resolves, TCP relay {node.tcp_port} answers"))
        else:
            out.append(Check(True, f"{label}: resolves (UDP only: not probed)"))
    return out


def run_checks(cfg: configmod.Config, network: bool) -> list[Check]:
    simple: list[Callable[[], Check]] = [check_tun, check_wireguard, check_wg_tools,
                                         check_libtoxcore]  # fmt: skip
    checks = [f() for f in simple]
    checks.append(check_user(cfg.bus.group))
    checks.append(Check(True, f"config {cfg.source} is valid"))
    checks += check_config_secret(cfg)
    checks += check_state(cfg)
    if network:
        checks += check_stun(cfg)
        checks += check_tox_nodes(cfg)
    return checks


def cmd_doctor(args: argparse.Namespace) -> int:
    try:
        cfg = configmod.load(args.config)
    except configmod.ConfigError as e:
        print(f"FAIL  config: {e}\n      fix: correct the file (`punchguard config` re-checks it)")
        return EXIT_FAIL
    failed = 0
    for c in run_checks(cfg, network=not args.offline):
        tag = "ok  " if c.ok else ("warn" if c.warn else "FAIL")
        print(f"{tag}  {c.what}" + (f"\n      fix: {c.fix}" if not c.ok and c.fix else ""))
        failed += 0 if c.ok or c.warn else 1
    print(f"\n{failed} problem(s)" if failed else "\nall checks passed")
    return EXIT_FAIL if failed else EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser(
        "doctor",
        help="check this machine: devices, WireGuard, libtoxcore, users, keys, servers",
        description="Check /dev/net/tun, kernel WireGuard or wireguard-go, libtoxcore, the "
        "service user, the identities' owners and modes, the config, and whether the "
        "configured STUN servers and Tox bootstrap nodes answer. One line per check, with a fix.",
        epilog=example("sudo punchguard doctor", "punchguard doctor --offline"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--offline", action="store_true", help="skip the network checks")
    d.set_defaults(func=cmd_doctor)
