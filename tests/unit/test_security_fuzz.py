"""Fuzzing every decoder of hostile input: a valid result or the one documented error.

Each decoder gets random bytes, random msgpack structures, and well-shaped inputs with random
values (so the deep checks run too, not only the first "not msgpack"):

| decoder                                   | documented outcome                                 |
|-------------------------------------------|----------------------------------------------------|
| ``messages.decode`` (bus frames)          | ``(Envelope, Message)`` or ``DecodeError``         |
| ``messages.unpack`` (payload in a payload)| ``(Envelope, Message)`` or ``DecodeError``         |
| otrd ``OtrSession.wire_received``         | a list of messages, never ``OtrRecv`` unless secure |
| punchd ``Runner._params`` + ``candidates``| ``IceParams`` with usable candidates, or ``None``  |
| punchd ``PunchCore.on_peer_params``       | commands; checks only with screened candidates     |
| guardd ``validate_path`` / ``GuardCore``  | ``ValidPath`` or ``Refused`` (counted)             |
| signald ``SignalCore.lossless_packet``    | ``PublishRecv`` from the peer only, else ignored   |
| ``invite.decode``                         | ``Invitation`` or ``InviteError``                  |

The normal run does ``NORMAL_EXAMPLES`` per test. ``PUNCHGUARD_FUZZ=1 scripts/test -k fuzz``
runs ``FUZZ_EXAMPLES`` (10,000) per decoder: minutes, not for every commit.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import random
from typing import Any, cast

import msgpack
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardd.core import GuardCore, Identity, Refused, ValidPath
from otrd.identity import fingerprint
from otrd.potr_compat import OtrDSAKey, generate_key
from otrd.session import OtrSession, Timing
from punchd import candidates
from punchd.commands import StartChecks
from punchd.core import PunchCore
from punchd.runner import Runner as PunchRunner
from punchd.timers import Timers
from punchguard import config, invite
from punchguard import messages as m
from punchguard.bus import Bus
from punchguard.service import ServiceContext
from signald import core as signal_core

FUZZ = os.environ.get("PUNCHGUARD_FUZZ", "") not in ("", "0")
FUZZ_EXAMPLES = 10_000
NORMAL_EXAMPLES = 150
EXAMPLES = FUZZ_EXAMPLES if FUZZ else NORMAL_EXAMPLES

fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no example database left in the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

QUIET = cast(structlog.stdlib.BoundLogger, structlog.wrap_logger(structlog.ReturnLogger()))

# -- strategies ------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=64)
)
msgpack_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)


def _packb(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


@st.composite
def envelopes(draw: st.DrawFn, with_topic: bool = True) -> list[bytes]:
    """A msgpack envelope, often well-formed, with a registered type and random field values."""
    msg_type = draw(st.sampled_from([*m.REGISTRY, "nope"]))
    cls = m.REGISTRY.get(msg_type)
    body: dict[str, Any] = draw(st.dictionaries(st.text(max_size=12), msgpack_values, max_size=3))
    if cls is not None:
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]  # registered => dataclass
            if draw(st.integers(0, 3)):
                body[f.name] = draw(msgpack_values | _good_value(f.type))
    src = draw(st.sampled_from(["punchd", "otrd", "signald", "guardd", "x"]))
    env: dict[str, Any] = {
        "v": draw(st.sampled_from([1, 1, 1, 0, 2, "1", None])),
        "type": msg_type,
        "src": src,
        "seq": draw(st.integers(-1, 2**64 - 1) | msgpack_values),
        "ts": draw(st.floats() | st.integers(-(2**63), 2**63 - 1)),
        "body": body,
    }
    if draw(st.integers(0, 9)) == 0:
        env.pop(draw(st.sampled_from(list(env))))
    frames = [_packb(env)]
    if with_topic:
        topic = f"{src}.{msg_type}" if draw(st.integers(0, 5)) else draw(st.text(max_size=20))
        frames.insert(0, topic.encode())
    return frames


def _good_value(annotation: object) -> st.SearchStrategy[Any]:
    # values of about the right type for a field, so decoding gets past the type checks
    text = str(annotation)
    if "tuple" in text:
        return st.lists(st.text(max_size=80), max_size=40)
    if "bytes" in text:
        return st.binary(max_size=256)
    if "str" in text:
        return st.text(max_size=80)
    if "bool" in text:
        return st.booleans()
    if "float" in text:
        return st.floats(allow_nan=False)
    return st.integers(-3, 70000)


DECODE_REASONS = {
    "bad_frames", "too_large", "not_msgpack", "bad_envelope", "bad_version", "unknown_type",
    "topic_mismatch", "bad_field", "bad_message",
}  # fmt: skip
frames_strategy = st.one_of(
    st.lists(st.binary(max_size=300), max_size=4),
    envelopes(),
    st.tuples(st.binary(max_size=40), msgpack_values.map(_packb)).map(list),
)


# -- the bus envelope ------------------------------------------------------------------------


@given(frames_strategy)
@fuzz
def test_fuzz_bus_decode(frames: list[bytes]) -> None:
    try:
        env, msg = m.decode(frames)
    except m.DecodeError as e:
        reason = e.reason
    else:
        assert env.type == msg.TYPE
        m.encode(msg, src=env.src, seq=1)  # what decodes is well typed: it re-encodes
        return
    assert reason in DECODE_REASONS


@given(st.binary(max_size=400) | envelopes(with_topic=False).map(lambda f: f[0]))
@fuzz
def test_fuzz_payload_unpack(payload: bytes) -> None:
    try:
        _env, msg = m.unpack(payload)
    except m.DecodeError:
        return
    m.pack(msg, src="x")


# -- otrd: whatever the peer (or a stranger relayed by Tox) sends ----------------------------

_KEYS: dict[str, OtrDSAKey] = {}


def _keys() -> dict[str, OtrDSAKey]:
    if not _KEYS:
        low, high = sorted((generate_key() for _ in range(2)), key=fingerprint)
        _KEYS.update(low=low, high=high)
    return _KEYS


def _otr_wire() -> st.SearchStrategy[bytes]:
    b64 = st.binary(max_size=600).map(lambda b: base64.b64encode(b))
    return st.one_of(
        st.binary(max_size=2000),
        st.binary(min_size=16 * 1024 - 16, max_size=16 * 1024),  # the largest bus payload
        b64.map(lambda b: b"?OTR:" + b + b"."),
        st.tuples(b64, st.sampled_from([b"AAIC", b"AAIK", b"AAIR", b"AAIS", b"AAID", b"AAMD"])).map(
            lambda t: b"?OTR:" + t[1] + t[0] + b"."
        ),
        st.tuples(st.integers(0, 10**6), st.integers(0, 10**9), b64).map(
            lambda t: b"?OTR,%d,%d,%s," % (t[0], t[1], t[2])
        ),
        st.sampled_from([b"?OTRv2?", b"?OTR?", b"?OTR Error: x", b"?OTR:", b"hello"]),
    )


@given(st.lists(_otr_wire(), min_size=1, max_size=4))
@fuzz
def test_fuzz_otr_wire_from_a_hostile_peer(wires: list[bytes]) -> None:
    keys = _keys()
    # a fresh session pinned to the real peer: nothing a forger sends is ever delivered
    session = OtrSession(
        keys["low"], fingerprint(keys["high"]), now=0.0, timing=Timing(), log=QUIET
    )
    session.peer_online(0.0)
    for i, wire in enumerate(wires):
        out = session.wire_received(wire, 1.0 + i)
        assert all(isinstance(x, m.Message) for x in out)
        assert not any(isinstance(x, m.OtrRecv) for x in out)
        for x in out:
            if isinstance(x, m.SignalSend):
                assert len(x.payload) <= signal_core.MAX_PAYLOAD
    assert session.state != m.OtrStateKind.SECURE


# -- punchd: the peer's IceParams inside otr.recv --------------------------------------------


def _punch_runner() -> PunchRunner:
    ctx = ServiceContext("punchd", config.loads(""), cast(Bus, None), QUIET)
    return PunchRunner(ctx)


_RUNNER: list[PunchRunner] = []


def _candidate_line() -> st.SearchStrategy[str]:
    host = st.one_of(
        st.ip_addresses().map(str),
        st.sampled_from(["0.0.0.0", "255.255.255.255", "127.0.0.1", "::1", "224.0.0.251",
                         "169.254.0.1", "fe80::1", "x.local", "example.org", "::ffff:1.2.3.4"]),
        st.text(max_size=20),
    )  # fmt: skip
    num = st.integers(-5, 2**33).map(str) | st.text(max_size=6)
    return st.builds(
        lambda f, c, t, p, h, port, typ, extra: f"{f} {c} {t} {p} {h} {port} typ {typ}{extra}",
        st.text("abc123", min_size=1, max_size=8),
        st.sampled_from(["1", "2", "0"]) | num,
        st.sampled_from(["UDP", "udp", "TCP", "x"]),
        num,
        host,
        st.sampled_from(["0", "1", "65535", "65536", "3478"]) | num,
        st.sampled_from(["host", "srflx", "relay", "prflx", "bogus"]),
        st.sampled_from(["", " generation 0", " raddr 1.2.3.4 rport x", " raddr"]),
    )


@st.composite
def ice_payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=400))
    if kind == 1:
        return draw(envelopes(with_topic=False))[0]
    lines = draw(st.lists(_candidate_line() | st.text(max_size=60), max_size=60))
    if kind == 3:  # a huge list: hundreds of candidates, within the bus's payload limit
        lines = lines * draw(st.integers(1, 8))
    params = m.IceParams(
        session=draw(st.integers(0, 2**63 - 1)),
        ufrag=draw(st.text(max_size=20)),
        pwd=draw(st.text(max_size=40)),
        candidates=tuple(lines),
        nat=draw(st.sampled_from(list(m.NatKind))),
        restart=draw(st.booleans()),
        connected=draw(st.booleans()),
    )
    return m.pack(params, src="punchd")


@given(ice_payloads())
@fuzz
def test_fuzz_ice_params_from_the_peer(payload: bytes) -> None:
    if not _RUNNER:
        _RUNNER.append(_punch_runner())
    params = _RUNNER[0]._params(payload)
    if params is None:
        return
    assert isinstance(params, m.IceParams)
    assert len(params.candidates) <= candidates.MAX_CANDIDATES
    for line in params.candidates:
        candidates.check_candidate(line)  # every kept line passes the screen again
    # the pure core takes it in any state without crashing; checks see screened lines only
    core = PunchCore(Timers(), random.Random(1), now=0.0)
    core.on_keys(0.0, "AA" * 38, "BB" * 32)  # we are controlling
    core.on_otr(0.0, True)
    for cmd in core.on_peer_params(1.0, params):
        if isinstance(cmd, StartChecks):
            assert cmd.remote.candidates == params.candidates
    controlled = PunchCore(Timers(), random.Random(1), now=0.0)
    controlled.on_keys(0.0, "BB" * 38, "AA" * 32)
    controlled.on_otr(0.0, True)
    controlled.on_peer_params(1.0, params)


@given(st.lists(_candidate_line() | st.text(max_size=300) | msgpack_values, max_size=80))
@fuzz
def test_fuzz_candidate_screen(lines: list[Any]) -> None:
    kept, refused = candidates.screen(lines)
    assert len(kept) + sum(refused.values()) == len(lines)
    assert len(kept) <= candidates.MAX_CANDIDATES
    assert set(refused) <= {
        "bad_candidate", "unsupported_candidate", "bad_port", "bad_address", "too_many",
    }  # fmt: skip


# -- guardd: punch.path, decoded from the bus and validated ----------------------------------

IDENT = Identity(
    "pg0", "wireguard-go", "0" * 43 + "=", "A" * 43 + "=", "B" * 43 + "=", ("10.99.0.2/32",), 5
)


ODD_HOSTS = st.sampled_from(
    ["0.0.0.0", "255.255.255.255", "127.0.0.1", "::1", "224.0.0.1", "ff02::1", "fe80::1%eth0",
     "::ffff:10.0.0.1", "example.org"]
)  # fmt: skip


@st.composite
def path_frames(draw: st.DrawFn) -> list[bytes]:
    body: dict[str, Any] = {
        "local_port": draw(st.integers(-2, 70000) | msgpack_values),
        "endpoint_host": draw(st.ip_addresses().map(str) | ODD_HOSTS | st.text(max_size=50)),
        "endpoint_port": draw(st.integers(-2, 70000) | msgpack_values),
        "role": draw(st.integers(-1, 4) | msgpack_values),
        "relayed": draw(st.booleans() | msgpack_values),
        "generation": draw(st.integers(-(2**63), 2**64 - 1)),
    }
    env = {"v": 1, "type": "punch.path", "src": "punchd", "seq": 1, "ts": 1.0, "body": body}
    return [b"punchd.punch.path", _packb(env)]


@given(path_frames(), st.sampled_from(["punchd", "punchd", "signald", "otrd", "guardd"]))
@fuzz
def test_fuzz_guardd_path_validation(frames: list[bytes], endpoint: str) -> None:
    try:
        _env, msg = m.decode(frames)
    except m.DecodeError:
        return
    core = GuardCore(IDENT)
    try:
        valid = core.on_message(endpoint, msg, 1.0)
    except Refused as e:
        code = e.code
    else:
        code = ""
    if code:
        assert core.refused[code] == 1 and core.path is None
        return
    assert endpoint == "punchd" and isinstance(valid, ValidPath)
    addr, port = valid.endpoint
    assert 1 <= port <= 65535 and 1 <= valid.listen_port <= 65535
    assert not (addr.is_multicast or addr.is_unspecified or addr.is_link_local)
    assert valid.relayed or not addr.is_loopback


# -- signald: lossless packets from any friend number ----------------------------------------

PEER_KEY = bytes(range(32))
PEER_ADDRESS = (
    PEER_KEY + b"\x01\x02\x03\x04" + signal_core.address_checksum(PEER_KEY + b"\x01\x02\x03\x04")
).hex()


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=1400)), max_size=8))
@fuzz
def test_fuzz_tox_packets_only_the_peer_is_heard(packets: list[tuple[int, bytes]]) -> None:
    c = signal_core.SignalCore(peer_address=PEER_ADDRESS, nodes=(), mode="always", log=QUIET)
    c.start(0.0)
    c.tox_started(1.0, bytes(38), {3: PEER_KEY})
    for friend, data in packets:
        for cmd in c.lossless_packet(2.0, friend, data):
            if isinstance(cmd, signal_core.PublishRecv):
                assert friend == 3 and data[0] == signal_core.PACKET_ID
                assert cmd.payload == data[1:]


# -- the invitation code ---------------------------------------------------------------------


def _code_from_payload(payload: bytes) -> str:
    text = base64.b32encode(payload).decode().rstrip("=")
    return "PG1-" + "-".join(text[i : i + 5] for i in range(0, len(text), 5))


@st.composite
def codes(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.text(max_size=300))
    if kind == 1:
        return "PG1-" + draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567-", max_size=220))
    # 100 random bytes with a correct checksum: the deep checks (Tox checksum, addresses) run
    body = draw(st.binary(min_size=100, max_size=100))
    if kind == 3:
        body = bytes([1]) + body[1:95] + bytes([draw(st.integers(0, 40))]) + body[96:]
    return _code_from_payload(body + hashlib.sha256(body).digest()[:4])


@given(codes())
@fuzz
def test_fuzz_invitation_code(code: str) -> None:
    try:
        inv = invite.decode(code)
    except invite.InviteError as e:
        problem = str(e)
    else:
        assert invite.decode(inv.encode()) == inv
        return
    assert problem  # a message for the user


# -- the profile itself ----------------------------------------------------------------------


def test_fuzz_profile_is_the_documented_one() -> None:
    assert (FUZZ_EXAMPLES if FUZZ else NORMAL_EXAMPLES) == EXAMPLES
    assert FUZZ_EXAMPLES >= 10_000


@pytest.mark.parametrize(
    "line",
    [
        "1 1 UDP 2130706431 198.51.100.7 40000 typ host",
        "2 1 udp 1694498815 203.0.113.5 61002 typ srflx raddr 10.1.0.2 rport 40000",
        "3 1 UDP 16777215 198.51.100.2 49152 typ relay generation 0",
        "1 1 UDP 2130706431 2001:db8::7 40000 typ host",
    ],
)
def test_usable_candidates_pass_the_screen(line: str) -> None:
    assert candidates.check_candidate(line) == line
