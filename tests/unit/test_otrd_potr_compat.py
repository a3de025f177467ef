"""Pins every assumption otrd.potr_compat and otrd.session make about potr and pycryptodome.

If an upgrade of either library changes one of them, a test here fails by name.
"""

from __future__ import annotations

import inspect
import os

import Crypto.Random.random
import potr.compatcrypto
import potr.compatcrypto.common
import potr.compatcrypto.pycrypto
import potr.context
import potr.crypt
import potr.proto
import pytest
from Crypto.Cipher import AES
from Crypto.Hash import SHA1
from Crypto.PublicKey import DSA
from Crypto.Util.number import bytes_to_long, inverse, long_to_bytes

from otrd import potr_compat
from otrd.potr_compat import OtrDSAKey, aes_ctr, generate_key, install, parse_private_key


@pytest.fixture(scope="module")
def key() -> OtrDSAKey:
    return generate_key()


# -- potr: the names we patch or call --------------------------------------------------------


def test_potr_names_we_patch_exist() -> None:
    install()
    for module in potr_compat.AESCTR_MODULES:
        assert module.AESCTR is aes_ctr
    assert potr.compatcrypto.common.pkTypes[0x0000] is OtrDSAKey
    assert OtrDSAKey.keyType == 0x0000
    assert issubclass(OtrDSAKey, potr.compatcrypto.pycrypto.DSAKey)
    # potr's DSAKey takes (y, g, p, q[, x]) and keeps pycryptodome keys in .priv / .pub
    params = list(inspect.signature(potr.compatcrypto.pycrypto.DSAKey.__init__).parameters)
    assert params == ["self", "key", "private"]


def test_potr_counter_shape() -> None:
    c = potr.compatcrypto.pycrypto.Counter(5)
    assert c.prefix == 5 and c.val == 0
    assert c.byteprefix() == (5).to_bytes(8, "big")
    c.inc()
    assert c.prefix == 6 and c.val == 0


def test_potr_context_hooks_exist() -> None:
    ctx = potr.context.Context
    for name in (
        "getPolicy", "inject", "_wentEncrypted", "handleQuery", "receiveMessage", "sendMessage",
        "authStartV2", "disconnect", "smpInit", "smpGotSecret", "smpAbort", "setState",
    ):  # fmt: skip
        assert callable(getattr(ctx, name)), name
    for name in ("UnencryptedMessage", "NotOTRMessage", "NotEncryptedError", "ErrorReceived"):
        assert issubclass(getattr(potr.context, name), Exception)
    assert potr.context.STATE_ENCRYPTED == 1 and potr.context.STATE_FINISHED == 2
    assert potr.context.FRAGMENT_SEND_ALL == 0
    assert list(inspect.signature(potr.context.Account.__init__).parameters) == [
        "self", "name", "protocol", "maxMessageSize", "privkey",
    ]  # fmt: skip
    assert issubclass(potr.proto.SMPABORTTLV, potr.proto.SMPTLV)
    assert potr.crypt.SMPPROG_SUCCEEDED == 1
    assert {potr.crypt.SMPPROG_FAILED, potr.crypt.SMPPROG_CHEATED} == {-1, -2}


def test_potr_randomness_comes_from_pycryptodome() -> None:
    assert callable(Crypto.Random.random.getrandbits)
    assert callable(Crypto.Random.random.randrange)


# -- pycryptodome: AES-CTR as OTR v2 defines it ---------------------------------------------


def test_aes_ctr_counter_block_is_prefix_then_block_counter() -> None:
    key = os.urandom(16)
    ctr = potr.compatcrypto.pycrypto.Counter(0x0102030405060708)
    stream = aes_ctr(key, ctr).encrypt(bytes(48))
    ecb = AES.new(key, AES.MODE_ECB)
    blocks = [ctr.byteprefix() + i.to_bytes(8, "big") for i in range(3)]
    assert stream == b"".join(ecb.encrypt(b) for b in blocks)


def test_aes_ctr_with_number_counter_is_zero_prefix() -> None:
    key = os.urandom(16)
    stream = aes_ctr(key).encrypt(bytes(16))
    assert stream == AES.new(key, AES.MODE_ECB).encrypt(bytes(16))
    assert aes_ctr(key).decrypt(aes_ctr(key).encrypt(b"abc")) == b"abc"


# -- pycryptodome: DSA as OTR signs ----------------------------------------------------------


def test_generated_key_is_dsa_1024_160(key: OtrDSAKey) -> None:
    assert key.priv.p.bit_length() == 1024
    assert key.priv.q.bit_length() == 160
    assert isinstance(key.priv, DSA.DsaKey) and key.priv.has_private()
    assert SHA1.SHA1Hash.oid == "1.3.14.3.2.26"


def _textbook_verify(key: OtrDSAKey, value: int, sig: bytes) -> bool:
    p, q, g, y = (int(key.pub.p), int(key.pub.q), int(key.pub.g), int(key.pub.y))
    r, s = bytes_to_long(sig[:20]), bytes_to_long(sig[20:])
    w = inverse(s, q)
    v = (pow(g, value * w % q, p) * pow(y, r * w % q, p)) % p % q
    return v == r


def test_signature_is_over_value_mod_q_not_truncated(key: OtrDSAKey) -> None:
    q = int(key.priv.q)
    data = b"\xff" * 32  # as an integer far above q: reduction and truncation differ
    assert bytes_to_long(data) % q != bytes_to_long(data[:20])
    sig = key.sign(data)
    assert len(sig) == 40
    assert _textbook_verify(key, bytes_to_long(data) % q, sig)
    assert not _textbook_verify(key, bytes_to_long(data[:20]), sig)
    assert key.verify(data, sig) is True


def test_verify_rejects_bad_signatures(key: OtrDSAKey) -> None:
    data = os.urandom(32)
    sig = key.sign(data)
    bad = bytes([sig[0] ^ 1]) + sig[1:]
    assert key.verify(data, bad) is False
    assert key.verify(data, sig[:-1]) is False
    assert key.verify(os.urandom(32), sig) is False


def test_public_key_roundtrip_through_potr_parser(key: OtrDSAKey) -> None:
    pub, rest = potr.compatcrypto.common.PK.parsePublicKey(key.serializePublicKey())
    assert rest == b""
    assert isinstance(pub, OtrDSAKey)
    assert pub.fingerprint() == key.fingerprint()
    assert pub.verify(b"m" * 32, key.sign(b"m" * 32))
    assert len(key.cfingerprint()) == 40


def test_private_key_roundtrip(key: OtrDSAKey) -> None:
    again = parse_private_key(key.serializePrivateKey())
    assert again.cfingerprint() == key.cfingerprint()
    assert int(again.priv.x) == int(key.priv.x)
    with pytest.raises(Exception):  # noqa: B017, PT011  # potr raises whatever the bytes provoke
        parse_private_key(b"\x00\x00" + long_to_bytes(12345))
