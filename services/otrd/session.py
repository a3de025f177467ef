"""The OTR session with the paired peer: a pure core (events in, bus messages out).

Theory of operation
-------------------
One potr context (OTR v2, design 4.2) talks to the one paired peer. Events come in as method
calls with the current time (``peer_online``, ``peer_offline``, ``wire_received``, ``send``,
``tick``, ``close``); each returns the bus messages to publish: ``SignalSend`` (OTR wire
messages, each at most ``MAX_MESSAGE`` bytes: potr fragments to Tox's 1372-byte limit),
``OtrRecv`` (a decrypted payload), ``OtrState`` (published with ``set_state``) and ``Error``.

- Encoding. Bus payloads are bytes; OTR plaintext is text and potr cuts it at the first NUL (TLVs
  follow). So a payload travels as its base64 (RFC 4648, standard alphabet) inside OTR, and the
  OTR wire messages ("?OTR:...", "?OTR,k,n,...,", "?OTRv2?") are ASCII bytes in ``signal.*``.
- Policy. Encryption is required: plaintext from the peer is refused (counted, never delivered),
  and nothing is sent before the session is secure. "Secure" means potr is encrypted AND the
  peer's DSA fingerprint equals the pinned one; after every completed AKE the fingerprint is
  checked again. A mismatch ends the OTR session (disconnect TLV), goes FAILED with a reason
  naming both fingerprints, and delivers nothing.
- Who starts. The side with the smaller fingerprint (as 40 lowercase hex digits) is the
  initiator: when the peer comes online it sends the AKE's DH-Commit. The responder sends a
  query ("?OTRv2?"); an initiator answers a query with a fresh AKE even when it believes it is
  secure (the peer restarted). Both repeat their move with exponential backoff
  (``retry_initial`` doubling up to ``retry_max``) until secure; a libotr peer that sends a
  query gets the normal OTR answer.
- Restarts. A restarted otrd starts from NO_SESSION and makes its move when signald reports the
  peer online (level-triggered, within a heartbeat); the other side's potr accepts a new AKE
  while encrypted and switches keys when it completes. An OTR error message from the peer
  ("encrypted data I wasn't expecting": it lost the session) restarts our move at once.
- Peer offline (signald): the session is dropped locally (NO_SESSION); a new AKE runs when the
  peer is back, so every Tox session gets fresh keys and no stale session is trusted.
- SMP (optional): ``smp_start(secret)``, the responder answers with ``smp_secret``; the result is
  ``smp_result`` (True, False, None = none yet). A peer's abort counts as a failure.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import potr.context
import potr.crypt
import potr.proto
import structlog

from otrd.identity import fingerprint, normalize_fingerprint
from otrd.potr_compat import OtrDSAKey, install
from punchguard.messages import Error, Message, OtrRecv, OtrState, OtrStateKind, SignalSend

install()

MAX_MESSAGE = 1372  # Tox's largest message (design 4.1)
QUERY = b"?OTRv2?"
PEER_NAME = "peer"
_FRAGMENT = re.compile(rb"\?OTR,(\d{1,5}),(\d{1,5}),")
_POLICY = {"ALLOW_V2": True, "REQUIRE_ENCRYPTION": True}


class Role(enum.IntEnum):
    INITIATOR = 1
    RESPONDER = 2


@dataclass(frozen=True)
class Timing:
    retry_initial: float = 2.0  # seconds before the first repeat of our move
    retry_max: float = 30.0  # backoff cap
    max_fragments: int = 64  # a peer message in more fragments is refused (memory bound)


class _Context(potr.context.Context):  # type: ignore[misc]  # potr is untyped
    """potr's context with our policy; outgoing wire messages collect in ``outbox``."""

    def __init__(self, account: Any, peername: str) -> None:
        super().__init__(account, peername)
        self.outbox: list[bytes] = []
        self.went_encrypted = False
        self.query_received = False

    def getPolicy(self, key: str) -> bool:
        return _POLICY.get(key, False)

    def inject(self, msg: bytes, appdata: object = None) -> None:
        self.outbox.append(bytes(msg))

    def _wentEncrypted(self) -> None:
        super()._wentEncrypted()
        self.went_encrypted = True  # checked after the call that completed the AKE

    def handleQuery(self, message: Any, appdata: object = None) -> None:
        # not answered here: the session decides (role, an AKE of ours already under way)
        if 2 in message.versions:
            self.query_received = True


class _Account(potr.context.Account):  # type: ignore[misc]  # potr is untyped
    contextclass = _Context

    def __init__(self, key: OtrDSAKey) -> None:
        super().__init__("self", "tox", MAX_MESSAGE, privkey=key)

    def loadPrivkey(self) -> OtrDSAKey:
        key: OtrDSAKey = self.privkey
        return key

    def savePrivkey(self) -> None:
        pass

    def saveTrusts(self) -> None:
        pass  # trust is the pinned fingerprint, not potr's store


class OtrSession:
    def __init__(
        self,
        key: OtrDSAKey,
        pinned: str,
        *,
        now: float,
        timing: Timing | None = None,
        smp_secret: bytes | None = None,
        log: Any = None,
    ) -> None:
        self.key = key
        self.own_fingerprint = fingerprint(key)
        self.timing = timing or Timing()
        self.smp_secret = smp_secret
        self.smp_result: bool | None = None
        self.log = log if log is not None else structlog.get_logger("otrd.session")
        self.counters: Counter[str] = Counter()
        self.state = OtrStateKind.NO_SESSION
        self.since = now
        self.reason = ""
        self.peer_fingerprint = ""
        self.verified = False
        self.peer_online_now = False
        self._next_attempt: float | None = None
        self._ake_started = now
        self._backoff = self.timing.retry_initial
        self._account = _Account(key)
        self._ctx: _Context = self._account.getContext(PEER_NAME)
        self.pinned = ""
        self.role: Role | None = None
        self._config_error = ""
        try:
            self.pinned = normalize_fingerprint(pinned)
        except ValueError as e:
            self._config_error = f"no valid pinned peer fingerprint: {e}"
        else:
            if self.pinned == self.own_fingerprint:
                self._config_error = "the pinned peer fingerprint is this host's own"
            else:
                self.role = Role.INITIATOR if self.own_fingerprint < self.pinned else Role.RESPONDER
        if self._config_error:
            self.state, self.reason = OtrStateKind.FAILED, self._config_error

    # -- state ----------------------------------------------------------------------------------

    def state_message(self) -> OtrState:
        return OtrState(
            self.state,
            fingerprint=self.peer_fingerprint,
            verified=self.verified,
            since=self.since,
            reason=self.reason,
        )

    def _set_state(self, new: OtrStateKind, now: float, reason: str = "") -> list[Message]:
        if new == self.state and reason == self.reason:
            return []
        (self.log.error if new == OtrStateKind.FAILED else self.log.info)(
            "otr.state", old=self.state.name, new=new.name, reason=reason,
            peer_fingerprint=self.peer_fingerprint,
        )  # fmt: skip
        if new != self.state:
            self.since = now
        self.state, self.reason = new, reason
        return [self.state_message()]

    @property
    def secure(self) -> bool:
        return self.state == OtrStateKind.SECURE

    # -- events ---------------------------------------------------------------------------------

    def peer_online(self, now: float) -> list[Message]:
        if self.peer_online_now or self._config_error:
            self.peer_online_now = True
            return []
        self.peer_online_now = True
        self._backoff = self.timing.retry_initial
        return self._attempt(now)

    def peer_offline(self, now: float) -> list[Message]:
        if not self.peer_online_now:
            return []
        self.peer_online_now = False
        self._next_attempt = None
        return self._drop_session(now, "peer offline")

    def tick(self, now: float) -> list[Message]:
        if self._next_attempt is not None and now >= self._next_attempt and not self.secure:
            return self._attempt(now)
        return []

    def next_deadline(self) -> float | None:
        return self._next_attempt

    def send(self, payload: bytes, now: float) -> list[Message]:
        """Encrypt ``payload`` for the peer; refused (an ``Error``) unless secure."""
        if not self.secure or self._ctx.state != potr.context.STATE_ENCRYPTED:
            self.counters["send_not_secure"] += 1
            return [Error("otr_not_secure", f"no secure OTR session ({self.state.name.lower()})")]
        text = base64.b64encode(payload)
        try:
            self._ctx.sendMessage(potr.context.FRAGMENT_SEND_ALL, text)
        except Exception as e:  # potr: a state it cannot encrypt in
            self.counters["send_failed"] += 1
            return [Error("otr_send_failed", f"{type(e).__name__}: {e}"), *self._flush()]
        return self._flush()

    def wire_received(self, data: bytes, now: float) -> list[Message]:
        """An OTR wire message (or fragment) from the peer."""
        if self._config_error:
            self.counters["no_pin"] += 1
            return []
        out: list[Message] = []
        m = _FRAGMENT.match(data)
        if m and int(m.group(2)) > self.timing.max_fragments:
            self.counters["too_many_fragments"] += 1
            return [Error("otr_bad_message", f"{int(m.group(2))} fragments refused")]
        result: Any = None
        try:
            result = self._ctx.receiveMessage(data)
        except (potr.context.UnencryptedMessage, potr.context.NotOTRMessage):
            self.counters["plaintext_refused"] += 1
            self.log.warning("otr.plaintext_refused", refused=self.counters["plaintext_refused"])
        except potr.context.NotEncryptedError:
            self.counters["undecryptable"] += 1  # potr has answered with an OTR error
        except potr.context.ErrorReceived as e:
            self.counters["peer_error"] += 1
            self.log.info("otr.peer_error", error=str(e)[:200])
            if self.role is not None:  # the peer lost our session: make our move now
                out += self._attempt(now)
        except Exception as e:  # anything potr's parser or crypto raises on bad input
            self.counters["bad_message"] += 1
            self.log.warning("otr.bad_message", error=f"{type(e).__name__}: {e}"[:200])
        out += self._flush()
        out += self._after_receive(now)
        if result is not None and result[0]:
            out += self._deliver(result[0])
        if result is not None and result[1]:
            out += self._after_tlvs(result[1], now)
        return out

    def close(self, now: float) -> list[Message]:
        """End the session (disconnect TLV to the peer if encrypted)."""
        out: list[Message] = []
        if self._ctx.state == potr.context.STATE_ENCRYPTED:
            self._ctx.disconnect()
            out += self._flush()
        self._next_attempt = None
        if self._config_error:
            return out
        return out + self._set_state(OtrStateKind.NO_SESSION, now, "closed")

    # -- SMP --------------------------------------------------------------------------------------

    def smp_start(self, secret: bytes, now: float) -> list[Message]:
        if not self.secure:
            return [Error("otr_not_secure", "SMP needs a secure session")]
        self.smp_result = None
        self._ctx.smpInit(secret)
        return self._flush()

    # -- internals --------------------------------------------------------------------------------

    def _attempt(self, now: float) -> list[Message]:
        """Our move: a DH-Commit (initiator) or a query (responder), then back off."""
        if self.role is None:
            return []
        self._next_attempt = now + self._backoff
        self._backoff = min(self._backoff * 2, self.timing.retry_max)
        if self.role is Role.INITIATOR:
            return [] if self._ake_under_way(now) else self._start_ake(now)
        out: list[Message] = [SignalSend(QUERY)]
        if self.state in (OtrStateKind.NO_SESSION, OtrStateKind.FINISHED):
            out += self._set_state(OtrStateKind.AKE, now)
        return out

    def _flush(self) -> list[Message]:
        msgs: list[Message] = [SignalSend(m) for m in self._ctx.outbox]
        self._ctx.outbox.clear()
        return msgs

    def _after_receive(self, now: float) -> list[Message]:
        if self._ctx.query_received:
            self._ctx.query_received = False
            return self._answer_query(now)
        if self._ctx.went_encrypted:
            self._ctx.went_encrypted = False
            return self._check_peer(now)
        if self._ctx.state == potr.context.STATE_FINISHED and self.state == OtrStateKind.SECURE:
            # the peer ended the session (disconnect TLV); our move comes after the backoff
            self.verified = False
            self._ctx.setState(potr.context.STATE_PLAINTEXT)
            self._next_attempt = now + self._backoff
            return self._set_state(OtrStateKind.FINISHED, now, "the peer ended the session")
        if self.state == OtrStateKind.NO_SESSION and self._ctx.crypto.ake is not None:
            # the peer is talking (its AKE): that is an AKE in progress, whatever signald said
            return self._set_state(OtrStateKind.AKE, now)
        return []

    def _answer_query(self, now: float) -> list[Message]:
        """A query: the peer wants an AKE. Only the initiator starts one, and not while its
        own recent one is under way (the query and our DH-Commit crossed)."""
        if self.role is not Role.INITIATOR or self._ake_under_way(now):
            return []
        return self._start_ake(now)

    def _ake_under_way(self, now: float) -> bool:
        """Our AKE started less than ``retry_initial`` ago and has not finished."""
        ake = self._ctx.crypto.ake
        under_way = ake is not None and ake.state != potr.crypt.STATE_NONE
        return under_way and now - self._ake_started < self.timing.retry_initial

    def _start_ake(self, now: float) -> list[Message]:
        self._ake_started = now
        self._ctx.authStartV2()
        out = self._flush()
        if self.state in (OtrStateKind.NO_SESSION, OtrStateKind.FINISHED):
            out += self._set_state(OtrStateKind.AKE, now)
        return out

    def _check_peer(self, now: float) -> list[Message]:
        key = self._ctx.crypto.theirPubkey
        self.peer_fingerprint = key.cfingerprint() if key is not None else ""
        if self.peer_fingerprint and self.peer_fingerprint == self.pinned:
            self.verified = True
            self._next_attempt = None
            self._backoff = self.timing.retry_initial
            return self._set_state(OtrStateKind.SECURE, now)
        self.verified = False
        self.counters["fingerprint_mismatch"] += 1
        self._ctx.disconnect()  # tell the impostor we are done; nothing is delivered
        out = self._flush()
        self._next_attempt = now + self._backoff
        self._backoff = min(self._backoff * 2, self.timing.retry_max)
        reason = (
            f"fingerprint mismatch: peer presented {self.peer_fingerprint or '?'}, "
            f"pinned {self.pinned}"
        )
        return [*out, *self._set_state(OtrStateKind.FAILED, now, reason)]

    def _deliver(self, plaintext: bytes) -> list[Message]:
        if not self.secure or not self.verified:
            self.counters["unverified_dropped"] += 1
            return []
        try:
            payload = base64.b64decode(plaintext, validate=True)
        except (binascii.Error, ValueError):
            self.counters["bad_payload"] += 1
            return [Error("otr_bad_payload", "decrypted message is not base64")]
        return [OtrRecv(payload)]

    def _after_tlvs(self, tlvs: list[Any], now: float) -> list[Message]:
        if not any(isinstance(t, potr.proto.SMPTLV) for t in tlvs):
            return []
        smp = self._ctx.crypto.smp
        if smp is None:
            return []
        out: list[Message] = []
        if isinstance(tlvs[-1], potr.proto.SMPABORTTLV):
            self.smp_result = False  # the peer gave up: a wrong secret (design 4.2)
        elif smp.state == 0 and self.secure:  # SMP1 arrived, waiting for our secret
            if self.smp_secret is None:
                self._ctx.smpAbort()
                self.smp_result = False
            else:
                self._ctx.smpGotSecret(self.smp_secret)
        elif smp.prog == potr.crypt.SMPPROG_SUCCEEDED:
            self.smp_result = True
        elif smp.prog in (potr.crypt.SMPPROG_FAILED, potr.crypt.SMPPROG_CHEATED):
            self.smp_result = False
        out += self._flush()
        return out

    def _drop_session(self, now: float, reason: str) -> list[Message]:
        self._account.ctxs.clear()
        self._ctx = self._account.getContext(PEER_NAME)
        self.verified = False
        self.peer_fingerprint = ""
        if self._config_error:
            return []
        return self._set_state(OtrStateKind.NO_SESSION, now, reason)
