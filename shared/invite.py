"""The invitation code: what one host tells the other at pairing. No secret is in it.

Text form (version 1)::

    PG1-<base32 of the payload, no padding, in groups of 5 separated by "-">

Payload, 104 bytes::

    offset  size  field
    0       1     version (1)
    1       38    Tox address (public key 32, nospam 4, Tox's own checksum 2)
    39      20    OTR fingerprint (SHA-1 of the DSA public key, OTR v2)
    59      32    WireGuard public key (Curve25519)
    91      4     proposed tunnel address of the inviter (IPv4)
    95      1     prefix length of the tunnel network
    96      4     proposed tunnel address of the invitee (IPv4)
    100     4     checksum: the first 4 bytes of SHA-256 over bytes 0..99

Decoding ignores case, spaces, line breaks and dashes, so a code survives being re-typed,
wrapped by a mail client or read aloud; a typo is caught by the checksum (and Tox's own).
When both sides propose different tunnel networks, the proposal of the side whose WireGuard
public key sorts first wins (``agree_addresses``), so both reach the same answer alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from dataclasses import dataclass

VERSION = 1
PREFIX = f"PG{VERSION}-"
_LEN = 104
_GROUP = 5


class InviteError(ValueError):
    """The code cannot be used; the message says why, for the user."""


@dataclass(frozen=True)
class Invitation:
    tox_address: str  # 76 hex digits, upper case
    otr_fingerprint: str  # 40 hex digits, lower case
    wireguard_public_key: str  # base64, 44 characters
    tunnel_address: str  # the inviter's, CIDR: "10.77.3.1/24"
    peer_tunnel_address: str  # proposed for the invitee, CIDR: "10.77.3.2/24"

    def encode(self) -> str:
        try:
            tox = bytes.fromhex(self.tox_address)
            fpr = bytes.fromhex(self.otr_fingerprint)
            wg = base64.b64decode(self.wireguard_public_key, validate=True)
            mine = ipaddress.IPv4Interface(self.tunnel_address)
            yours = ipaddress.IPv4Interface(self.peer_tunnel_address)
        except (ValueError, binascii.Error) as e:
            raise InviteError(f"cannot encode this invitation: {e}") from None
        if len(tox) != 38 or len(fpr) != 20 or len(wg) != 32:
            raise InviteError("cannot encode this invitation: a key has the wrong length")
        if mine.network != yours.network or mine.ip == yours.ip:
            raise InviteError("the two tunnel addresses must be distinct, in one network")
        payload = (
            bytes([VERSION])
            + tox
            + fpr
            + wg
            + mine.ip.packed
            + bytes([mine.network.prefixlen])
            + yours.ip.packed
        )
        payload += hashlib.sha256(payload).digest()[:4]
        text = base64.b32encode(payload).decode().rstrip("=")
        return PREFIX + "-".join(text[i : i + _GROUP] for i in range(0, len(text), _GROUP))


def decode(code: str) -> Invitation:
    """The invitation in ``code``, or ``InviteError`` saying what is wrong with it."""
    compact = re.sub(r"[\s\-]", "", code).upper()
    if not compact:
        raise InviteError("the invitation code is empty")
    m = re.fullmatch(r"PG(\d+)([A-Z2-7]*)", compact)
    if m is None:
        if compact.startswith("PG"):
            raise InviteError("the code has characters that cannot be in a code (A-Z, 2-7)")
        raise InviteError("this is not a PunchGuard invitation (it should start with PG1-)")
    version = int(m.group(1))
    if version != VERSION:
        raise InviteError(
            f"this invitation is version {version}; this punchguard reads version {VERSION}"
            " (upgrade the older side)"
        )
    body = m.group(2)
    expected_chars = -(-_LEN * 8 // 5)  # 167
    if len(body) < expected_chars:
        raise InviteError(
            f"the code is truncated ({len(body)} of {expected_chars} characters after PG1-)"
        )
    if len(body) > expected_chars:
        raise InviteError(f"the code is too long ({len(body)} of {expected_chars} characters)")
    try:
        payload = base64.b32decode(body + "=" * (-len(body) % 8))
    except binascii.Error:
        raise InviteError("the code is damaged (not valid base32)") from None
    if len(payload) != _LEN or hashlib.sha256(payload[:100]).digest()[:4] != payload[100:]:
        raise InviteError("the code has a typo: its checksum does not match")
    if payload[0] != VERSION:
        raise InviteError("the code is damaged (its version byte disagrees with PG1)")
    tox = payload[1:39]
    if not _tox_checksum_ok(tox):
        raise InviteError("the Tox address in the code is damaged (its checksum fails)")
    prefix = payload[95]
    if not 8 <= prefix <= 30:
        raise InviteError(f"the proposed tunnel network /{prefix} is not usable")
    mine = ipaddress.IPv4Interface((ipaddress.IPv4Address(payload[91:95]), prefix))
    yours = ipaddress.IPv4Interface((ipaddress.IPv4Address(payload[96:100]), prefix))
    if mine.network != yours.network or mine.ip == yours.ip:
        raise InviteError("the code proposes unusable tunnel addresses")
    return Invitation(
        tox_address=tox.hex().upper(),
        otr_fingerprint=payload[39:59].hex(),
        wireguard_public_key=base64.b64encode(payload[59:91]).decode(),
        tunnel_address=str(mine),
        peer_tunnel_address=str(yours),
    )


def _tox_checksum_ok(address: bytes) -> bool:
    # Tox's address checksum (tox.h): XOR of the 36 bytes of key+nospam, two bytes at a time.
    check = [0, 0]
    for i, byte in enumerate(address[:36]):
        check[i % 2] ^= byte
    return bytes(check) == address[36:38]


def agree_addresses(
    my_key: str, my_proposal: tuple[str, str], peer_key: str, peer_proposal: tuple[str, str]
) -> tuple[str, str]:
    """(my tunnel address, the peer's), the same on both sides without a round trip.

    ``my_proposal`` is (mine, the peer's) as I proposed; ``peer_proposal`` is (the peer's,
    mine) as the peer proposed. The side whose WireGuard public key sorts first wins.
    """
    if my_key == peer_key:
        raise InviteError("this is your own invitation: pair with the other host's code")
    if my_key < peer_key:
        return my_proposal
    return peer_proposal[1], peer_proposal[0]
