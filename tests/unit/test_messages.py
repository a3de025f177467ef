"""The envelope, every message type, and the decoder's one-exception contract."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from punchguard import messages as m

SAMPLES: list[m.Message] = [
    m.Error(code="payload_too_large", reason="2000 > 1300", ref_type="signal.send", ref_seq=4),
    m.BusStats(received=10, dropped=2, drops={"not_msgpack": 2}),
    m.SignalState(
        state=m.SignalStateKind.PEER_ONLINE,
        self_conn=m.Transport.UDP,
        peer_conn=m.Transport.TCP,
        since=1.5,
        peer_since=2.5,
        address="A" * 76,
        peer_public_key="B" * 64,
        want_online=False,
        reason="x",
    ),
    m.SignalRecv(payload=b"\x00\x01binary\xff"),
    m.SignalSend(payload=b"?OTR:AAMD"),
    m.SignalPolicy(online=False, reason="tunnel up"),
    m.OtrState(state=m.OtrStateKind.SECURE, fingerprint="ab" * 20, verified=True, since=3.0),
    m.OtrSend(payload=b"hello"),
    m.OtrRecv(payload=b""),
    m.PunchState(
        state=m.PunchStateKind.BACKOFF,
        role=m.Role.CONTROLLED,
        nat=m.NatKind.ENDPOINT_DEPENDENT,
        peer_nat=m.NatKind.ENDPOINT_INDEPENDENT,
        attempt=3,
        retry_at=99.0,
        reason="checks timed out",
    ),
    m.Path(
        local_port=51820,
        endpoint_host="198.51.100.7",
        endpoint_port=40000,
        role=m.Role.CONTROLLING,
        local_type=m.CandidateType.HOST,
        remote_type=m.CandidateType.SRFLX,
        relayed=False,
        generation=2,
    ),
    m.IceParams(
        session=7,
        ufrag="abcd",
        pwd="p" * 22,
        candidates=("1 1 UDP 2130706431 10.1.0.2 5000 typ host",),
        complete=True,
        nat=m.NatKind.ENDPOINT_INDEPENDENT,
    ),
    m.GuardState(
        state=m.GuardStateKind.UP,
        interface="pg0",
        backend="wireguard-go",
        public_key="k" * 43 + "=",
        listen_port=51820,
        endpoint="198.51.100.7:40000",
        last_handshake_age=4.5,
        rx_bytes=1000,
        tx_bytes=2000,
        generation=2,
        since=5.0,
    ),
]


def test_every_registered_type_has_a_sample() -> None:
    assert {s.TYPE for s in SAMPLES} == set(m.REGISTRY)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda s: s.TYPE)
def test_round_trip(msg: m.Message) -> None:
    frames = m.encode(msg, src="punchd", seq=42, ts=1234.5)
    assert frames[0] == f"punchd.{msg.TYPE}".encode()
    env, back = m.decode(frames)
    assert back == msg
    assert type(back) is type(msg)
    assert env == m.Envelope(v=m.VERSION, type=msg.TYPE, src="punchd", seq=42, ts=1234.5)
    assert isinstance(msg.summary(), str)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda s: s.TYPE)
def test_pack_unpack(msg: m.Message) -> None:
    env, back = m.unpack(m.pack(msg, src="punchd", seq=3))
    assert back == msg and env.src == "punchd" and env.seq == 3


def _frames(envelope: dict[str, Any], topic: bytes = b"punchd.punch.path") -> list[bytes]:
    return [topic, msgpack.packb(envelope, use_bin_type=True)]


def _path_env(**body_changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "local_port": 1000,
        "endpoint_host": "198.51.100.9",
        "endpoint_port": 2000,
        "role": 1,
    }
    body.update(body_changes)
    return {"v": 1, "type": "punch.path", "src": "punchd", "seq": 1, "ts": 1.0, "body": body}


def test_unknown_fields_are_ignored_and_defaults_fill_in() -> None:
    _, msg = m.decode(_frames(_path_env(future_field=[1, 2, 3])))
    assert msg == m.Path(1000, "198.51.100.9", 2000, m.Role.CONTROLLING)


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([b"punchd.punch.path"], "bad_frames"),
        ([b"a", b"b", b"c"], "bad_frames"),
        ([b"punchd.punch.path", b"\xc1"], "not_msgpack"),
        ([b"punchd.punch.path", msgpack.packb([1, 2])], "bad_envelope"),
        (_frames({**_path_env(), "v": 2}), "bad_version"),
        (_frames({**_path_env(), "v": True}), "bad_envelope"),
        (_frames({**_path_env(), "type": "punch.nope"}, b"punchd.punch.nope"), "unknown_type"),
        (_frames(_path_env(), b"signald.punch.path"), "topic_mismatch"),
        (_frames({**_path_env(), "seq": "1"}), "bad_envelope"),
        (_frames({**_path_env(), "body": [1]}), "bad_envelope"),
        (_frames(_path_env(local_port="1000")), "bad_field"),
        (_frames(_path_env(local_port=True)), "bad_field"),
        (_frames(_path_env(role=9)), "bad_field"),
        (_frames(_path_env(relayed=1)), "bad_field"),
        (_frames({**_path_env(), "body": {"local_port": 1}}), "bad_field"),
        ([b"punchd.punch.path", b"\x00" * (m.MAX_FRAME_BYTES + 1)], "too_large"),
    ],
)
def test_bad_frames_raise_decode_error_with_a_reason(frames: list[bytes], reason: str) -> None:
    with pytest.raises(m.DecodeError) as info:
        m.decode(frames)
    assert info.value.reason == reason


def test_oversized_payload_is_refused_both_ways() -> None:
    big = b"x" * (m.MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(m.EncodeError):
        m.encode(m.SignalSend(payload=big), src="otrd", seq=1)
    env = {"v": 1, "type": "signal.send", "src": "otrd", "seq": 1, "ts": 1.0}
    with pytest.raises(m.DecodeError):
        m.decode(_frames({**env, "body": {"payload": big}}, b"otrd.signal.send"))


def test_encode_refuses_wrong_types() -> None:
    bad = m.Path(local_port="80", endpoint_host="h", endpoint_port=1, role=m.Role.CONTROLLED)  # type: ignore[arg-type]  # deliberately wrong
    with pytest.raises(m.EncodeError):
        m.encode(bad, src="punchd", seq=1)

    @dataclasses.dataclass(frozen=True)
    class Unregistered(m.Message):
        TYPE = "nope"

    with pytest.raises(m.EncodeError):
        m.encode(Unregistered(), src="x", seq=1)


def test_enums_have_explicit_distinct_values() -> None:
    for enum_cls in (
        m.Transport,
        m.SignalStateKind,
        m.OtrStateKind,
        m.PunchStateKind,
        m.NatKind,
        m.Role,
        m.CandidateType,
        m.GuardStateKind,
    ):
        values = [e.value for e in enum_cls]
        assert len(values) == len(set(values))


# -- property: any input decodes or raises DecodeError, nothing else ---------------------------

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


@given(st.lists(st.binary(max_size=200), max_size=4))
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_random_bytes_decode_or_raise_decode_error(frames: list[bytes]) -> None:
    with contextlib.suppress(m.DecodeError):
        m.decode(frames)


@st.composite
def envelopes(draw: st.DrawFn) -> list[bytes]:
    msg_type = draw(st.sampled_from([*m.REGISTRY, "other"]))
    body = draw(st.dictionaries(st.text(max_size=15), msgpack_values, max_size=6))
    cls = m.REGISTRY.get(msg_type)
    if cls is not None and draw(st.booleans()):
        # well-formed names with random values: exercises every field checker
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]  # registered => dataclass
            body[f.name] = draw(msgpack_values)
    env: dict[str, Any] = {
        "v": draw(st.sampled_from([1, 1, 1, 2, "1"])),
        "type": msg_type,
        "src": draw(st.sampled_from(["punchd", "x"])),
        "seq": draw(st.integers(0, 2**40)),
        "ts": draw(st.floats() | st.integers(-(2**63), 2**63 - 1)),
        "body": body,
    }
    topic = f"{env['src']}.{msg_type}".encode()
    return [topic, msgpack.packb(env, use_bin_type=True)]


@given(envelopes())
@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
def test_random_envelopes_decode_or_raise_decode_error(frames: list[bytes]) -> None:
    try:
        _, msg = m.decode(frames)
    except m.DecodeError:
        return
    # whatever decoded re-encodes (it is well typed)
    m.encode(msg, src="punchd", seq=1)


@given(msgpack_values)
@settings(max_examples=300)
def test_random_msgpack_values_as_body(value: Any) -> None:
    with contextlib.suppress(m.DecodeError):
        m.decode([b"punchd.punch.path", msgpack.packb(value, use_bin_type=True)])
