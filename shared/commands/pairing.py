"""`punchguard init`, `invite`, `pair` and `unpair`: setting a host up by hand."""

from __future__ import annotations

import argparse
import io
import sys
import textwrap
from pathlib import Path

from punchguard import config as configmod
from punchguard import invite, pairing
from punchguard.commands import EXIT_FAIL, EXIT_OK, EXIT_REFUSED, CommandError, example
from punchguard.stack import Stack, StackError

CONFIG_TEMPLATE = """\
# PunchGuard configuration (written by `punchguard init`; edit freely).
# Every key is optional; `punchguard config` checks this file.

[paths]
runtime_dir = "{runtime_dir}"   # bus sockets and logs
state_dir = "{state_dir}"       # identities and the peer record

[policy]
# on-demand: Tox goes offline while the tunnel is up (no open door); always: stays online
mode = "on-demand"

[wireguard]
interface = "{interface}"        # unique on this machine
# backend = "auto"              # auto, kernel, wireguard-go
# keepalive = 5

# [tox]
# bootstrap_nodes = [{{ host = "tox.example.org", port = 33445, public_key = "<64 hex>" }}]

# [ice]
# stun_servers = ["stun.example.org:3478", "stun2.example.org:3478"]
# turn_servers = [{{ host = "turn.example.org", port = 3478, username = "u", password = "p" }}]
"""


def _config(args: argparse.Namespace) -> tuple[configmod.Config, Path | None]:
    return configmod.load(args.config), configmod.config_file(args.config)


def cmd_init(args: argparse.Namespace) -> int:
    cfg, cfg_file = _config(args)
    root = cfg.paths.state_dir
    existing = pairing.existing_identities(root)
    if existing and not args.force:
        raise CommandError(
            f"{root} already holds this host's {', '.join(existing)} identity; keep it, or"
            " replace it (the peer must pair again) with `punchguard init --force`",
            EXIT_REFUSED,
        )
    try:
        Stack(cfg, cfg_file).prepare()
    except StackError as e:
        raise CommandError(str(e)) from None
    if args.force:
        pairing.remove_identities(root)
    if args.address:
        mine, yours = _parse_addresses(args.address)
    else:
        mine, yours = pairing.pick_tunnel_network(pairing.used_networks())
    ident = pairing.ensure_identities(root)
    pairing.write_self(root, mine, yours)
    print(f"created this host's identities in {root}")
    print(f"  Tox address      {ident.tox_address}")
    print(f"  OTR fingerprint  {_human(ident.otr_fingerprint)}")
    print(f"  WireGuard key    {ident.wireguard_public_key}")
    print(f"  tunnel address   {mine} (peer: {yours}; agreed at pairing)")
    target = Path(args.config) if args.config else configmod.DEFAULT_CONFIG_FILE
    if cfg_file is None or not cfg_file.exists():
        text = CONFIG_TEMPLATE.format(
            runtime_dir=cfg.paths.runtime_dir, state_dir=root, interface=cfg.wireguard.interface
        )
        try:
            how = pairing.write_config(target, text)  # not world-readable: TURN passwords
        except FileExistsError:
            print(f"left the existing {target} as it is")
        else:
            print(f"wrote a commented config: {target} ({how})")
    print("next: `punchguard invite` here, and `punchguard pair CODE` with the other host's code")
    return EXIT_OK


def _parse_addresses(text: str) -> tuple[str, str]:
    import ipaddress

    try:
        mine = ipaddress.IPv4Interface(text)
    except ValueError:
        raise CommandError(f"--address {text!r}: expected an IPv4 address with prefix") from None
    hosts = [h for h in mine.network.hosts() if h != mine.ip]
    if mine.network.prefixlen > 30 or not hosts:
        raise CommandError(f"--address {text!r}: the network has no room for the peer")
    return str(mine), f"{hosts[0]}/{mine.network.prefixlen}"


def _human(fpr: str) -> str:
    f = fpr.upper()
    return " ".join(f[i : i + 8] for i in range(0, len(f), 8))


def cmd_invite(args: argparse.Namespace) -> int:
    cfg, _ = _config(args)
    try:
        inv = pairing.invitation(cfg.paths.state_dir)
    except pairing.PairingError as e:
        raise CommandError(str(e)) from None
    code = inv.encode()
    if args.out:
        Path(args.out).write_text(code + "\n")
        print(f"wrote the invitation to {args.out}", file=sys.stderr)
    if args.code_only:
        print(code)
        return EXIT_OK
    print("This host's invitation. Give it to the other host (it holds no secret):\n")
    print(textwrap.fill(code, 72, break_on_hyphens=True))
    if not args.no_qr:
        print()
        print(_qr(code))
    print(f"OTR fingerprint  {_human(inv.otr_fingerprint)}")
    print(f"WireGuard key    {inv.wireguard_public_key}")
    print("\nOn the other host: punchguard pair <code>   (or: punchguard pair FILE)")
    return EXIT_OK


def _qr(text: str) -> str:
    import qrcode

    qr = qrcode.QRCode(border=1, error_correction=qrcode.constants.ERROR_CORRECT_L)
    qr.add_data(text)
    qr.make(fit=True)
    out = io.StringIO()
    qr.print_ascii(out=out, invert=True)
    return out.getvalue()


def cmd_pair(args: argparse.Namespace) -> int:
    cfg, _ = _config(args)
    root = cfg.paths.state_dir
    source = args.code
    candidate = Path(source)
    if len(source) < 300 and candidate.is_file():
        source = candidate.read_text()
    try:
        record = pairing.plan_pairing(root, source)
    except invite.InviteError as e:
        raise CommandError(f"invalid invitation: {e}") from None
    except pairing.PairingError as e:
        raise CommandError(str(e)) from None
    p = record.peer
    print("About to trust this peer:")
    print(f"  Tox address      {p.tox_address}")
    print(f"  OTR fingerprint  {_human(p.otr_fingerprint)}")
    print(f"  WireGuard key    {p.wireguard_public_key}")
    print(f"  tunnel           this host {record.my_address}, peer {record.peer_address}")
    old = pairing.read_peer_record(root)
    if old and old.get("peer", {}).get("tox_address") not in (None, p.tox_address):
        print("  (this replaces the current peer)")
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError("not confirmed: add --yes to pair without a prompt", EXIT_REFUSED)
        answer = input("Compare the fingerprints with the other host. Trust it? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing written")
            return EXIT_REFUSED
    path = pairing.write_peer_record(root, record)
    print(f"paired: peer record in {path}")
    print(
        "Pairing is complete when the other host has paired with this host's code too"
        " (`punchguard invite` here, `punchguard pair` there). Then restart the stack:"
        " `punchguard ctl restart punchguard:*`."
    )
    return EXIT_OK


def cmd_unpair(args: argparse.Namespace) -> int:
    cfg, _ = _config(args)
    path = cfg.paths.state_dir / pairing.PEER_FILE
    if not path.exists():
        print(f"not paired (no {path})")
        return EXIT_FAIL
    if (
        not args.yes
        and sys.stdin.isatty()
        and input(f"Forget the peer in {path}? [y/N] ").strip().lower() not in ("y", "yes")
    ):
        return EXIT_REFUSED
    path.unlink()
    print(f"unpaired: removed {path}; restart the stack to apply (`punchguard ctl restart all`)")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "init",
        help="create this host's identities (Tox, OTR, WireGuard) and a config",
        description="Create this host's Tox, OTR and WireGuard identities in the state "
        "directory (owners and modes per stage), propose a tunnel address, and write a "
        "commented config if there is none. Refuses to replace an identity without --force.",
        epilog=example("sudo punchguard init", "sudo punchguard init --address 10.44.0.1/24"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--force", action="store_true", help="replace existing identities")
    p.add_argument(
        "--address", metavar="CIDR", help="this host's tunnel address, e.g. 10.44.0.1/24"
    )
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "invite",
        help="print this host's invitation code (and QR code)",
        description="Print this host's invitation: a versioned, checksummed code with the Tox "
        "address, OTR fingerprint, WireGuard public key and proposed tunnel addresses. It "
        "holds no secret.",
        epilog=example("punchguard invite", "punchguard invite --out me.pgi --no-qr"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", metavar="FILE", help="also write the code to FILE")
    p.add_argument("--no-qr", action="store_true", help="no QR code")
    p.add_argument("--code-only", action="store_true", help="print only the code (scripts)")
    p.set_defaults(func=cmd_invite)

    p = sub.add_parser(
        "pair",
        help="trust the other host's invitation",
        description="Validate the other host's invitation (a code or a file holding one), "
        "show what it is about to trust, and store the peer record. A typo is caught by the "
        "checksum; nothing is written unless the whole code is valid.",
        epilog=example("sudo punchguard pair PG1-AAAAA-...", "sudo punchguard pair peer.pgi --yes"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("code", metavar="CODE|FILE", help="the invitation code, or a file with it")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_pair)

    p = sub.add_parser(
        "unpair",
        help="forget the peer",
        description="Remove the peer record; the identities stay.",
        epilog=example("sudo punchguard unpair --yes"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_unpair)
