"""The invitation code: round trip, and a clear error for every way a code goes wrong."""

from __future__ import annotations

import base64
import os
import re

import pytest

from punchguard import invite


def tox_address() -> str:
    body = os.urandom(36)
    check = [0, 0]
    for i, b in enumerate(body):
        check[i % 2] ^= b
    return (body + bytes(check)).hex().upper()


def sample() -> invite.Invitation:
    return invite.Invitation(
        tox_address=tox_address(),
        otr_fingerprint=os.urandom(20).hex(),
        wireguard_public_key=base64.b64encode(os.urandom(32)).decode(),
        tunnel_address="10.77.3.1/24",
        peer_tunnel_address="10.77.3.2/24",
    )


def test_round_trip_and_tolerant_spelling() -> None:
    inv = sample()
    code = inv.encode()
    assert code.startswith("PG1-")
    assert invite.decode(code) == inv
    # case, spaces, line breaks and dashes do not matter
    mangled = code.lower().replace("-", " ")
    mangled = "\n".join(mangled[i : i + 30] for i in range(0, len(mangled), 30))
    assert invite.decode(mangled) == inv


def test_no_secret_is_in_the_code() -> None:
    inv = sample()
    body = re.sub("[^A-Z2-7]", "", inv.encode()[4:])
    raw = base64.b32decode(body + "=" * (-len(body) % 8))
    assert len(raw) == 104  # exactly the public fields and a checksum


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda c: "", "empty"),
        (lambda c: "hello world", "not a PunchGuard invitation"),
        (lambda c: c[:60], "truncated"),
        (lambda c: c + "AAAAA", "too long"),
        (lambda c: "PG2-" + c[4:], "version 2"),
        (lambda c: c[:10] + ("B" if c[10] != "B" else "C") + c[11:], "typo"),
        (lambda c: c[:10] + "1" + c[11:], "cannot be in a code"),
    ],
)
def test_bad_codes_say_what_is_wrong(mangle: object, message: str) -> None:
    code = sample().encode()
    with pytest.raises(invite.InviteError, match=message):
        invite.decode(mangle(code))  # type: ignore[operator]  # the lambdas above


def test_every_single_character_typo_is_caught() -> None:
    code = sample().encode()
    body_positions = [i for i, ch in enumerate(code) if i >= 4 and ch != "-"]
    for i in body_positions[::7]:
        typo = "A" if code[i] != "A" else "B"
        with pytest.raises(invite.InviteError):
            invite.decode(code[:i] + typo + code[i + 1 :])


def test_addresses_are_agreed_the_same_on_both_sides() -> None:
    a_key, b_key = "AAAA", "BBBB"
    a_prop = ("10.1.1.1/24", "10.1.1.2/24")
    b_prop = ("10.9.9.1/24", "10.9.9.2/24")
    a_view = invite.agree_addresses(a_key, a_prop, b_key, b_prop)
    b_view = invite.agree_addresses(b_key, b_prop, a_key, a_prop)
    assert a_view == ("10.1.1.1/24", "10.1.1.2/24")
    assert b_view == ("10.1.1.2/24", "10.1.1.1/24")
    with pytest.raises(invite.InviteError, match="your own"):
        invite.agree_addresses(a_key, a_prop, a_key, a_prop)


def test_encode_refuses_bad_values() -> None:
    inv = sample()
    with pytest.raises(invite.InviteError):
        invite.Invitation(**{**inv.__dict__, "otr_fingerprint": "zz"}).encode()
    with pytest.raises(invite.InviteError):
        invite.Invitation(**{**inv.__dict__, "peer_tunnel_address": "10.8.0.2/24"}).encode()
