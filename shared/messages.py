"""Every message on the PunchGuard bus, and the one codec for them.

Wire form (design 2, docs/bus.md). A message is a ZeroMQ multipart of exactly two frames:

    frame 0  topic   b"<src>.<type>"          e.g. b"punchd.punch.path"
    frame 1  body    msgpack map (the envelope):
             {"v": 1, "type": "punch.path", "src": "punchd", "seq": 17, "ts": 1764093123.5,
              "body": {"local_port": 51820, "endpoint_host": "198.51.100.7", ...}}

- ``v`` is the envelope version (``VERSION``); another version is rejected.
- ``type`` names a registered message class; ``body`` holds its fields by name.
- ``src`` is the publishing service, ``seq`` counts its messages from 1 (a restart starts again),
  ``ts`` is its wall-clock time in seconds.
- Enums travel as their explicit integer values, tuples as arrays, bytes as msgpack bin.

Encoding is strict (only registered, well-typed messages leave a process). Decoding is tolerant
of unknown body fields (a newer peer may add some) and strict about everything else: it returns a
message or raises ``DecodeError`` -- never any other exception -- whose ``reason`` is a short code
that subscribers count.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import msgpack

VERSION = 1
#: Largest frame a subscriber accepts; larger ones are dropped as ``too_large``.
MAX_FRAME_BYTES = 64 * 1024
#: Largest opaque payload (``signal.send`` / ``otr.send`` ...) a message may carry.
MAX_PAYLOAD_BYTES = 16 * 1024


class DecodeError(Exception):
    """A frame that is not a valid message. ``reason`` is a short code, for counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class EncodeError(Exception):
    """A local bug: a message with a value of the wrong type was about to be sent."""


# --------------------------------------------------------------------------------------------
# enums: explicit numbers, they are on the wire


class Transport(enum.IntEnum):
    NONE = 0
    TCP = 1
    UDP = 2


class SignalStateKind(enum.IntEnum):
    OFFLINE = 0  # Tox not running (policy: offline, or not started yet)
    BOOTSTRAPPING = 1  # Tox running, not yet connected to the DHT
    ONLINE = 2  # connected to the Tox network, peer not (yet) connected
    PEER_ONLINE = 3  # the paired peer is connected
    ERROR = 4  # cannot run (bad peer record, libtoxcore failure): see reason


class OtrStateKind(enum.IntEnum):
    NO_SESSION = 0
    AKE = 1  # authenticated key exchange in progress
    SECURE = 2  # encrypted, peer fingerprint equals the pinned one
    FINISHED = 3  # the peer ended the session
    FAILED = 4  # see reason (e.g. fingerprint mismatch)


class PunchStateKind(enum.IntEnum):
    IDLE = 0
    GATHERING = 1
    CHECKING = 2
    CONNECTED = 3
    FAILED = 4
    BACKOFF = 5


class NatKind(enum.IntEnum):
    UNKNOWN = 0
    ENDPOINT_INDEPENDENT = 1  # same public port towards every destination: punchable
    ENDPOINT_DEPENDENT = 2  # symmetric: a new port per destination
    NO_NAT = 3  # the host address is public


class Role(enum.IntEnum):
    CONTROLLING = 1  # RFC 8445 controlling agent; for WireGuard: the side that initiates
    CONTROLLED = 2


class CandidateType(enum.IntEnum):
    UNKNOWN = 0
    HOST = 1
    SRFLX = 2
    PRFLX = 3
    RELAY = 4


class GuardStateKind(enum.IntEnum):
    NO_PATH = 0  # interface up, no endpoint yet
    HANDSHAKING = 1  # endpoint set, waiting for a handshake
    UP = 2  # a recent handshake and received bytes: packets cross now
    DOWN = 3  # the path died: see reason
    ERROR = 4  # cannot run (no WireGuard, bad key file): see reason


# --------------------------------------------------------------------------------------------
# messages


class Message:
    """Base of every message type. Subclasses are frozen dataclasses with a ``TYPE``."""

    TYPE: ClassVar[str] = ""

    def summary(self) -> str:
        """A short human line for the tap: fields as key=value, bytes as their length."""
        parts = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # subclasses are dataclasses
            parts.append(f"{f.name}={_short(getattr(self, f.name))}")
        return " ".join(parts)


def _short(value: object) -> str:
    if isinstance(value, bytes):
        return f"<{len(value)}B>"
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, str):
        return value if len(value) <= 40 and " " not in value else repr(value[:40])
    if isinstance(value, tuple):
        return f"[{len(value)}]"
    return str(value)


REGISTRY: dict[str, type[Message]] = {}
M = TypeVar("M", bound=type[Message])


def register(cls: M) -> M:
    if not cls.TYPE or cls.TYPE in REGISTRY:
        raise ValueError(f"message type {cls.TYPE!r} empty or registered twice")
    REGISTRY[cls.TYPE] = cls
    return cls


@register
@dataclass(frozen=True)
class Error(Message):
    """An error reported on the bus instead of raised: ``{code, reason}`` plus what it answers.

    body: {"code": "payload_too_large", "reason": "...", "ref_type": "signal.send", "ref_seq": 9}
    """

    TYPE: ClassVar[str] = "error"
    code: str
    reason: str
    ref_type: str = ""
    ref_seq: int = 0


@register
@dataclass(frozen=True)
class BusStats(Message):
    """A service's subscriber counters, published on the heartbeat when they change.

    body: {"received": 1200, "dropped": 3, "drops": {"not_msgpack": 2, "unknown_type": 1}}
    """

    TYPE: ClassVar[str] = "bus.stats"
    received: int
    dropped: int
    drops: dict[str, int] = field(default_factory=dict)


# -- signald ---------------------------------------------------------------------------------


@register
@dataclass(frozen=True)
class SignalState(Message):
    """signald's state: Tox connectivity and the paired peer's.

    body: {"state": 3, "self_conn": 2, "peer_conn": 2, "since": 1764093120.1,
           "peer_since": 1764093121.0, "address": "<76 hex>", "peer_public_key": "<64 hex>",
           "want_online": true, "reason": "", "max_payload": 1372, "ignored_requests": 0,
           "ignored_messages": 0}
    Hex is upper case. Rules (online/offline policy, counters): docs/signald.md.
    """

    TYPE: ClassVar[str] = "signal.state"
    state: SignalStateKind
    self_conn: Transport = Transport.NONE
    peer_conn: Transport = Transport.NONE
    since: float = 0.0  # when ``state`` last changed
    peer_since: float = 0.0  # when the peer's connection last changed
    address: str = ""  # this host's Tox address (public, for pairing)
    peer_public_key: str = ""  # the paired peer's Tox public key (public)
    want_online: bool = True  # the policy's current wish
    reason: str = ""
    max_payload: int = 0  # largest signal.send payload accepted (docs/signald.md)
    ignored_requests: int = 0  # friend requests ignored (nobody but the peer is a friend)
    ignored_messages: int = 0  # messages/packets dropped: strangers, text messages, bad packets


@register
@dataclass(frozen=True)
class SignalRecv(Message):
    """A payload that arrived from the paired peer over Tox (published by signald)."""

    TYPE: ClassVar[str] = "signal.recv"
    payload: bytes


@register
@dataclass(frozen=True)
class SignalSend(Message):
    """A payload for the paired peer over Tox (published by otrd, taken by signald)."""

    TYPE: ClassVar[str] = "signal.send"
    payload: bytes


@register
@dataclass(frozen=True)
class SignalPolicy(Message):
    """A request to take Tox online or offline (the on-demand policy)."""

    TYPE: ClassVar[str] = "signal.policy"
    online: bool
    reason: str = ""


# -- otrd ------------------------------------------------------------------------------------


@register
@dataclass(frozen=True)
class OtrState(Message):
    """otrd's session state with the paired peer."""

    TYPE: ClassVar[str] = "otr.state"
    state: OtrStateKind
    fingerprint: str = ""  # the peer's DSA fingerprint as seen in the AKE (public)
    verified: bool = False  # equals the pinned fingerprint
    since: float = 0.0
    reason: str = ""


@register
@dataclass(frozen=True)
class OtrSend(Message):
    """Plaintext for the peer, to be encrypted (published by punchd, taken by otrd)."""

    TYPE: ClassVar[str] = "otr.send"
    payload: bytes


@register
@dataclass(frozen=True)
class OtrRecv(Message):
    """Decrypted plaintext from the verified peer (published by otrd, taken by punchd)."""

    TYPE: ClassVar[str] = "otr.recv"
    payload: bytes


# -- punchd ----------------------------------------------------------------------------------


@register
@dataclass(frozen=True)
class PunchState(Message):
    """punchd's ICE state and what it knows of the NATs."""

    TYPE: ClassVar[str] = "punch.state"
    state: PunchStateKind
    role: Role | None = None
    nat: NatKind = NatKind.UNKNOWN
    peer_nat: NatKind = NatKind.UNKNOWN
    attempt: int = 0
    since: float = 0.0
    retry_at: float = 0.0  # with BACKOFF: when the next attempt starts
    reason: str = ""


@register
@dataclass(frozen=True)
class Path(Message):
    """The punched path handed to WireGuard (published by punchd, taken by guardd only).

    body: {"local_port": 40123, "endpoint_host": "198.51.100.20", "endpoint_port": 61002,
           "role": 1, "local_type": 2, "remote_type": 2, "relayed": false, "generation": 3}
    """

    TYPE: ClassVar[str] = "punch.path"
    local_port: int
    endpoint_host: str
    endpoint_port: int
    role: Role
    local_type: CandidateType = CandidateType.UNKNOWN
    remote_type: CandidateType = CandidateType.UNKNOWN
    relayed: bool = False
    generation: int = 0  # increases with every new punch


@register
@dataclass(frozen=True)
class IceParams(Message):
    """ICE credentials and candidates for the peer's punchd; travels inside ``otr.send``.

    ``candidates`` are RFC 8839 candidate-attribute strings; ``complete`` signals
    end-of-candidates. The controlling side opens a session (a fresh random ``session`` id);
    the controlled side answers with the same id. ``restart`` (controlled -> controlling, with
    empty credentials) asks for a new session; ``connected`` (controlled -> controlling) says its
    checks succeeded, so the controlling side may close its ICE sockets (docs/punchd.md).

    body: {"session": 1234567, "ufrag": "abcd", "pwd": "<22+ chars>",
           "candidates": ["1 1 UDP 2130706431 10.1.0.2 40123 typ host", ...],
           "complete": true, "nat": 1, "restart": false, "connected": false}
    """

    TYPE: ClassVar[str] = "ice.params"
    session: int
    ufrag: str
    pwd: str
    candidates: tuple[str, ...] = ()
    complete: bool = True
    nat: NatKind = NatKind.UNKNOWN
    restart: bool = False  # controlled -> controlling: please open a new session
    connected: bool = False  # controlled -> controlling: my checks succeeded


# -- guardd ----------------------------------------------------------------------------------


@register
@dataclass(frozen=True)
class GuardState(Message):
    """guardd's view of the WireGuard interface and its one peer."""

    TYPE: ClassVar[str] = "guard.state"
    state: GuardStateKind
    interface: str = ""
    backend: str = ""  # "kernel" or "wireguard-go"
    public_key: str = ""  # this host's WireGuard public key (public)
    listen_port: int = 0
    endpoint: str = ""  # "host:port" of the peer, or ""
    last_handshake_age: float = -1.0  # seconds, -1 = never
    rx_bytes: int = 0
    tx_bytes: int = 0
    generation: int = 0  # of the path applied
    since: float = 0.0
    reason: str = ""
    refused: int = 0  # bus messages refused since start (bad paths, wrong endpoint or type)
    last_refused: str = ""  # why the last one was refused, e.g. "bad_port: local_port=0"


# --------------------------------------------------------------------------------------------
# envelope and codec


@dataclass(frozen=True)
class Envelope:
    """The metadata around a message body."""

    v: int
    type: str
    src: str
    seq: int
    ts: float


def topic_for(src: str, msg_type: str) -> bytes:
    return f"{src}.{msg_type}".encode()


def encode(msg: Message, *, src: str, seq: int, ts: float | None = None) -> list[bytes]:
    """The two frames of ``msg`` as published by ``src``. Raises ``EncodeError`` on a bad value."""
    cls = type(msg)
    if REGISTRY.get(cls.TYPE) is not cls:
        raise EncodeError(f"{cls.__name__} is not a registered message type")
    body: dict[str, Any] = {}
    for name, checker in _checkers(cls):
        value = getattr(msg, name)
        try:
            checker(value)
        except _FieldError as e:
            raise EncodeError(f"{cls.TYPE}.{name}: {e}") from None
        body[name] = _to_wire(value)
    envelope = {
        "v": VERSION,
        "type": cls.TYPE,
        "src": src,
        "seq": seq,
        "ts": time.time() if ts is None else ts,
        "body": body,
    }
    data: bytes = msgpack.packb(envelope, use_bin_type=True)
    return [topic_for(src, cls.TYPE), data]


def decode(frames: Sequence[bytes]) -> tuple[Envelope, Message]:
    """The envelope and message in ``frames``, or ``DecodeError`` -- nothing else."""
    try:
        return _decode(frames)
    except DecodeError:
        raise
    except Exception as e:  # the contract: one exception type, whatever went wrong inside
        raise DecodeError("bad_message", f"{type(e).__name__}: {e}") from None


def _decode(frames: Sequence[bytes]) -> tuple[Envelope, Message]:
    if len(frames) != 2:
        raise DecodeError("bad_frames", f"{len(frames)} frames, want 2")
    topic, data = bytes(frames[0]), bytes(frames[1])
    if len(data) + len(topic) > MAX_FRAME_BYTES:
        raise DecodeError("too_large", f"{len(data)} bytes")
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, timestamp=0)
    except Exception as e:
        raise DecodeError("not_msgpack", f"{type(e).__name__}") from None
    if not isinstance(raw, dict):
        raise DecodeError("bad_envelope", "not a map")
    v = raw.get("v")
    if type(v) is not int:
        raise DecodeError("bad_envelope", "v missing or not an integer")
    if v != VERSION:
        raise DecodeError("bad_version", f"v={v}")
    msg_type, src, seq, ts, body = (raw.get(k) for k in ("type", "src", "seq", "ts", "body"))
    if not isinstance(msg_type, str) or not isinstance(src, str):
        raise DecodeError("bad_envelope", "type/src not strings")
    if type(seq) is not int or not isinstance(ts, int | float) or isinstance(ts, bool):
        raise DecodeError("bad_envelope", "seq/ts of the wrong type")
    if not isinstance(body, dict):
        raise DecodeError("bad_envelope", "body is not a map")
    cls = REGISTRY.get(msg_type)
    if cls is None:
        raise DecodeError("unknown_type", msg_type[:64])
    if topic != topic_for(src, msg_type):
        raise DecodeError("topic_mismatch", topic[:64].decode(errors="replace"))
    kwargs: dict[str, Any] = {}
    for name, checker in _checkers(cls):
        if name not in body:
            if name in _required(cls):
                raise DecodeError("bad_field", f"{msg_type}.{name} missing")
            continue
        try:
            kwargs[name] = checker(body[name])
        except _FieldError as e:
            raise DecodeError("bad_field", f"{msg_type}.{name}: {e}") from None
    env = Envelope(v=v, type=msg_type, src=src, seq=seq, ts=float(ts))
    return env, cls(**kwargs)


def pack(msg: Message, *, src: str, seq: int = 0) -> bytes:
    """``msg`` as one opaque payload (the envelope only), for messages carried inside others:
    e.g. punchd's ``ice.params`` travels as the payload of ``otr.send`` / ``otr.recv``."""
    return encode(msg, src=src, seq=seq)[1]


def unpack(payload: bytes) -> tuple[Envelope, Message]:
    """The inverse of ``pack``: a message or ``DecodeError``, never anything else."""
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=True, timestamp=0)
        topic = topic_for(str(raw["src"]), str(raw["type"]))
    except Exception:
        raise DecodeError("not_msgpack", "payload is not an envelope") from None
    return decode([topic, payload])


def _to_wire(value: object) -> object:
    if isinstance(value, enum.IntEnum):
        return int(value)
    if isinstance(value, tuple):
        return [_to_wire(v) for v in value]
    return value


# -- field checkers: built once per class from its type hints ---------------------------------


class _FieldError(Exception):
    pass


Checker = Callable[[Any], Any]
_CHECKERS: dict[type[Message], list[tuple[str, Checker]]] = {}
_REQUIRED: dict[type[Message], frozenset[str]] = {}


def _checkers(cls: type[Message]) -> list[tuple[str, Checker]]:
    found = _CHECKERS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]  # registered => dataclass
        found = [(f.name, _checker_for(hints[f.name])) for f in fields]
        _CHECKERS[cls] = found
        _REQUIRED[cls] = frozenset(
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
    return found


def _required(cls: type[Message]) -> frozenset[str]:
    _checkers(cls)
    return _REQUIRED[cls]


def _checker_for(hint: Any) -> Checker:
    origin = typing.get_origin(hint)
    if origin is types.UnionType or origin is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {hint}")
        inner = _checker_for(args[0])
        return lambda v: None if v is None else inner(v)
    if origin is tuple:
        targs = typing.get_args(hint)
        if len(targs) != 2 or targs[1] is not Ellipsis:
            raise TypeError(f"unsupported tuple {hint}")
        item = _checker_for(targs[0])

        def check_tuple(v: Any) -> tuple[Any, ...]:
            if not isinstance(v, list | tuple):
                raise _FieldError(f"expected an array, got {type(v).__name__}")
            return tuple(item(x) for x in v)

        return check_tuple
    if origin is dict:
        k_check, v_check = (_checker_for(a) for a in typing.get_args(hint))

        def check_dict(v: Any) -> dict[Any, Any]:
            if not isinstance(v, Mapping):
                raise _FieldError(f"expected a map, got {type(v).__name__}")
            return {k_check(k): v_check(x) for k, x in v.items()}

        return check_dict
    if isinstance(hint, type) and issubclass(hint, enum.IntEnum):
        enum_cls = hint

        def check_enum(v: Any) -> enum.IntEnum:
            if type(v) is not int and not isinstance(v, enum_cls):
                raise _FieldError(f"expected {enum_cls.__name__} (int), got {type(v).__name__}")
            try:
                return enum_cls(v)
            except ValueError:
                raise _FieldError(f"{v} is not a {enum_cls.__name__}") from None

        return check_enum
    if hint is float:

        def check_float(v: Any) -> float:
            if type(v) not in (int, float) or (type(v) is float and math.isnan(v)):
                raise _FieldError(f"expected a number, got {type(v).__name__}")
            return float(v)

        return check_float
    if hint in (int, str, bytes, bool):
        expected: type = hint

        def check_exact(v: Any) -> Any:
            # exact type: a bool is not an int on the wire, a str is not bytes
            if type(v) is not expected:
                raise _FieldError(f"expected {expected.__name__}, got {type(v).__name__}")
            if isinstance(v, bytes) and len(v) > MAX_PAYLOAD_BYTES:
                raise _FieldError(f"{len(v)} bytes > {MAX_PAYLOAD_BYTES}")
            return v

        return check_exact
    raise TypeError(f"unsupported field type {hint!r}")


def check_registry() -> None:
    """Build every checker now (a bad annotation fails at import, not at the first message)."""
    for cls in REGISTRY.values():
        _checkers(cls)


check_registry()
