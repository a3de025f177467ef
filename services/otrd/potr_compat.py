"""The adapter between python-potr 1.0.2 and pycryptodome (design 4.2).

potr was written against the dead pycrypto. On pycryptodome three pieces of its crypto glue
(``potr/compatcrypto/pycrypto.py``) break, and this module replaces exactly those, with
pycryptodome's public API only (no new primitives):

1. AES-CTR. potr hands ``AESCTR(key, counter)`` its own ``Counter`` object, a pycrypto-style
   callable. OTR v2's counter block is the 8-byte top half (the message's ``ctr``, potr's
   ``Counter.byteprefix()``) followed by an 8-byte block counter starting at ``Counter.val``
   (0). That is pycryptodome's CTR mode with ``nonce`` = the prefix and ``initial_value`` = val.
   The AKE's ``AESCTR(r)`` (counter 0) is the same with an all-zero prefix.
2. DSA key generation. potr reads ``key.key.y``; pycryptodome keys carry ``y, g, p, q, x``.
3. DSA sign / verify. OTR v2 (protocol spec, "Authenticated Key Exchange"): the signature is
   over the 32-byte MAC value ``M`` "taken modulo q instead of being truncated (as described
   in FIPS-186), and not hashed again". ``Crypto.Signature.DSS`` truncates the digest it is
   given to q's byte length, so we give it ``M mod q`` as a 20-byte big-endian digest (q is
   160 bits: the truncation is then a no-op). A truncating signer makes libotr answer
   "Bad signature". The signature on the wire is ``r || s``, 20 bytes each (DSS "binary").

``install()`` registers ``OtrDSAKey`` as potr's DSA key type (``pkTypes[0]``, used to parse the
peer's key and to generate ours) and points the module globals named ``AESCTR`` at ``aes_ctr``.
It is idempotent. tests/unit/test_otrd_potr_compat.py pins every assumption made here.
"""

from __future__ import annotations

import logging
from typing import Any

import potr.compatcrypto
import potr.compatcrypto.common
import potr.compatcrypto.pycrypto
import potr.crypt
from Crypto.Cipher import AES
from Crypto.Hash import SHA1
from Crypto.PublicKey import DSA
from Crypto.Signature import DSS
from Crypto.Util.number import bytes_to_long, long_to_bytes

DSA_BITS = 1024  # OTR v2 keys: p of 1024 bits, q of 160 (libotr generates the same)
Q_BYTES = 20
#: the modules whose global ``AESCTR`` potr calls (crypt imported it by name)
AESCTR_MODULES = (potr.crypt, potr.compatcrypto, potr.compatcrypto.pycrypto)


def aes_ctr(key: bytes, counter: Any = 0) -> Any:
    """potr's ``AESCTR(key, counter=0)``: an AES-CTR cipher object with encrypt/decrypt."""
    if isinstance(counter, int):
        nonce, initial = long_to_bytes(counter, 8), 0
    else:  # potr's Counter: prefix is the message ctr, val the block counter (always 0 here)
        nonce, initial = counter.byteprefix(), counter.val
    if len(nonce) != 8:
        raise ValueError("OTR counter prefix does not fit in 8 bytes")
    return AES.new(key, AES.MODE_CTR, nonce=nonce, initial_value=initial)


class _ReducedValue:
    """A "hash object" for ``DSS``: the OTR value M already reduced mod q, as q-sized bytes.

    DSS only calls ``digest()`` and checks ``oid`` against the FIPS list; the value is not a
    SHA-1 digest, but it has SHA-1's size, which is what the (1024, 160) key signs.
    """

    oid: str = SHA1.SHA1Hash.oid
    digest_size = Q_BYTES

    def __init__(self, data: bytes, q: int) -> None:
        self._value = long_to_bytes(bytes_to_long(data) % q, Q_BYTES)

    def digest(self) -> bytes:
        return self._value


class OtrDSAKey(potr.compatcrypto.pycrypto.DSAKey):  # type: ignore[misc]  # potr is untyped
    """potr's DSA key type with signing, verifying and generation done by pycryptodome."""

    def sign(self, data: bytes) -> bytes:
        signer = DSS.new(self.priv, "fips-186-3", encoding="binary")
        sig: bytes = signer.sign(_ReducedValue(data, int(self.priv.q)))
        return sig

    def verify(self, data: bytes, sig: bytes) -> bool:
        try:
            verifier = DSS.new(self.pub, "fips-186-3", encoding="binary")
            verifier.verify(_ReducedValue(data, int(self.pub.q)), sig)
        except ValueError:  # not authentic, bad length, or a key size FIPS 186-3 refuses
            return False
        return True

    @classmethod
    def generate(cls) -> OtrDSAKey:
        key = DSA.generate(DSA_BITS)
        return cls((key.y, key.g, key.p, key.q, key.x), private=True)


def install() -> None:
    """Make potr use this module's crypto. Idempotent; call before any potr context is made.

    It also silences potr's own (stdlib) logger: at debug and info level it prints session
    keys and the AKE's secret ``r``; otrd counts and logs what matters itself.
    """
    logging.getLogger("potr").setLevel(logging.CRITICAL + 1)
    potr.compatcrypto.common.registerkeytype(OtrDSAKey)
    for module in AESCTR_MODULES:
        module.AESCTR = aes_ctr


def parse_private_key(data: bytes) -> OtrDSAKey:
    """An ``OtrDSAKey`` from potr's private key serialization (``serializePrivateKey()``)."""
    install()
    key, _rest = potr.compatcrypto.common.PK.parsePrivateKey(data)
    if not isinstance(key, OtrDSAKey):
        raise ValueError("not an OTR DSA private key")
    return key


def generate_key() -> OtrDSAKey:
    install()
    return OtrDSAKey.generate()


install()
