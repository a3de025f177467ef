"""guardd's pure core: path validation, the diff, the staggered start and liveness."""

from __future__ import annotations

import ipaddress

import pytest

from guardd.core import INITIATE_DELAY, GuardCore, Identity, Refused, validate_path
from guardd.device import (
    DeviceChange,
    DeviceSample,
    DeviceWant,
    PeerChange,
    PeerSample,
    diff,
    parse_endpoint,
)
from guardd.liveness import dead_after
from punchguard.messages import GuardStateKind, Path, PunchState, PunchStateKind, Role

PRIV = "0" * 43 + "="
MINE = "A" * 43 + "="
PEER = "B" * 43 + "="
OTHER = "C" * 43 + "="
IDENT = Identity("pg0", "wireguard-go", PRIV, MINE, PEER, ("10.99.0.2/32",), keepalive=5)


def path(host: str = "198.51.100.7", **kw: object) -> Path:
    fields: dict[str, object] = {
        "local_port": 40123,
        "endpoint_host": host,
        "endpoint_port": 61002,
        "role": Role.CONTROLLING,
    }
    fields.update(kw)
    return Path(**fields)  # type: ignore[arg-type]  # deliberately loose for the bad rows


def ep(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    parsed = parse_endpoint(text)
    assert parsed is not None
    return parsed


# -- validation -------------------------------------------------------------------------------

GOOD = [
    path(),
    path("2001:db8::7"),
    path("10.1.0.5"),  # private addresses are fine: LAN peers, the lab
    path(local_port=1, endpoint_port=65535),
    path(role=Role.CONTROLLED),
    path("127.0.0.1", relayed=True),  # punchd's TURN forwarder (design 4.3)
    path("::1", relayed=True),
]

BAD = [
    ("punchd", path(local_port=0), "bad_port"),
    ("punchd", path(local_port=65536), "bad_port"),
    ("punchd", path(endpoint_port=0), "bad_port"),
    ("punchd", path(endpoint_port=-1), "bad_port"),
    ("punchd", path(local_port=True), "bad_port"),
    ("punchd", path("example.org"), "bad_address"),
    ("punchd", path(""), "bad_address"),
    ("punchd", path("198.51.100.7:1"), "bad_address"),
    ("punchd", path("0.0.0.0"), "bad_address"),
    ("punchd", path("::"), "bad_address"),
    ("punchd", path("224.0.0.1"), "bad_address"),
    ("punchd", path("ff02::1"), "bad_address"),
    ("punchd", path("255.255.255.255"), "bad_address"),
    ("punchd", path("240.0.0.1"), "bad_address"),
    ("punchd", path("0.1.2.3"), "bad_address"),
    ("punchd", path("127.0.0.1"), "bad_address"),  # loopback on a direct path
    ("punchd", path("::ffff:127.0.0.1", relayed=True), "bad_address"),  # mapped
    ("punchd", path("::ffff:198.51.100.7"), "bad_address"),
    ("punchd", path("fe80::1"), "bad_address"),
    ("punchd", path("fe80::1%eth0"), "bad_address"),
    ("punchd", path("169.254.1.1"), "bad_address"),
    ("punchd", path("x" * 1000), "bad_address"),
    ("punchd", path(role=None), "bad_role"),
    ("punchd", path(generation=-1), "bad_field"),
    ("otrd", path(), "wrong_endpoint"),
    ("signald", path(), "wrong_endpoint"),
    ("punchd", PunchState(PunchStateKind.IDLE), "wrong_type"),
]


@pytest.mark.parametrize("msg", GOOD)
def test_good_paths_pass(msg: Path) -> None:
    valid = validate_path("punchd", msg)
    assert valid.listen_port == msg.local_port
    assert str(valid.endpoint[0]) == msg.endpoint_host and valid.endpoint[1] == msg.endpoint_port


@pytest.mark.parametrize(("endpoint", "msg", "code"), BAD)
def test_bad_paths_are_refused(endpoint: str, msg: Path, code: str) -> None:
    with pytest.raises(Refused) as info:
        validate_path(endpoint, msg)
    assert info.value.code == code


def test_refusals_are_counted_and_change_nothing() -> None:
    core = GuardCore(IDENT)
    for endpoint, msg, _ in BAD:
        with pytest.raises(Refused):
            core.on_message(endpoint, msg, 1.0)
    st = core.state(1.0, 1000.0)
    assert st.refused == len(BAD) and st.last_refused.startswith("wrong_type")
    assert st.state is GuardStateKind.NO_PATH and core.path is None


def test_endpoint_text_round_trip() -> None:
    assert parse_endpoint("[2001:db8::1]:51820") == (ipaddress.ip_address("2001:db8::1"), 51820)
    assert parse_endpoint("198.51.100.7:1") == (ipaddress.ip_address("198.51.100.7"), 1)
    for junk in ("", "(none)", "1.2.3.4", "host:1", "[::1]:x"):
        assert parse_endpoint(junk) is None


# -- diff -------------------------------------------------------------------------------------

WANT = DeviceWant(PRIV, PEER, ("10.99.0.2/32",), 40123, ep("198.51.100.7:61002"), 5)
HAVE = DeviceSample(
    PRIV,
    40123,
    (PeerSample(PEER, ep("198.51.100.7:61002"), ("10.99.0.2/32",), 5),),
)


def test_fresh_interface_gets_everything() -> None:
    change = diff(WANT, DeviceSample())
    assert change == DeviceChange(
        private_key=PRIV,
        listen_port=40123,
        peer=PeerChange(PEER, True, ep("198.51.100.7:61002"), 5, ("10.99.0.2/32",)),
    )


def test_same_path_is_a_no_op() -> None:
    assert not diff(WANT, HAVE)


def test_only_the_difference() -> None:
    moved = DeviceWant(PRIV, PEER, ("10.99.0.2/32",), 40123, ep("[2001:db8::9]:5"), 5)
    assert diff(moved, HAVE) == DeviceChange(peer=PeerChange(PEER, endpoint=ep("[2001:db8::9]:5")))
    other_port = DeviceWant(PRIV, PEER, ("10.99.0.2/32",), 40124, WANT.endpoint, 5)
    assert diff(other_port, HAVE) == DeviceChange(listen_port=40124)
    quiet = DeviceWant(PRIV, PEER, ("10.99.0.2/32",), 40123, WANT.endpoint, 0)
    assert diff(quiet, HAVE) == DeviceChange(peer=PeerChange(PEER, keepalive=0))


def test_no_opinion_leaves_the_interface_alone() -> None:
    # right after a restart: no path yet, the adopted interface keeps port/endpoint/keepalive
    assert not diff(DeviceWant(PRIV, PEER, ("10.99.0.2/32",)), HAVE)


def test_strangers_removed_and_allowed_ips_restored() -> None:
    have = DeviceSample(
        PRIV,
        40123,
        (
            PeerSample(OTHER, None, ("0.0.0.0/0",)),
            PeerSample(PEER, ep("198.51.100.7:61002"), ("10.99.0.0/24",), 5),
        ),
    )
    change = diff(WANT, have)
    assert change.remove_peers == (OTHER,)
    assert change.peer == PeerChange(PEER, allowed_ips=("10.99.0.2/32",))
    assert diff(WANT, DeviceSample(OTHER, 40123, HAVE.peers)) == DeviceChange(private_key=PRIV)


# -- staggered start and liveness -------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    @property
    def wall(self) -> float:
        return 1_700_000_000.0 + self.now


def sample(rx: int, handshake: float = 0.0, keepalive: int = 0) -> DeviceSample:
    peer = PeerSample(PEER, ep("198.51.100.7:61002"), ("10.99.0.2/32",), keepalive, handshake, rx)
    return DeviceSample(PRIV, 40123, (peer,))


def test_controlling_side_initiates_after_the_short_delay() -> None:
    core = GuardCore(IDENT)
    core.on_sample(DeviceSample(PRIV, 0, ()), 100.0, 1e9)
    core.on_message("punchd", path(), 100.0)
    assert core.desired(100.0).keepalive == 0  # the peer's guardd binds its port meanwhile
    assert core.next_deadline(100.0) == 100.0 + INITIATE_DELAY
    assert core.desired(100.0 + INITIATE_DELAY).keepalive == 5
    assert core.next_deadline(100.0 + INITIATE_DELAY) is None
    assert core.state(100.0, 1e9).state is GuardStateKind.HANDSHAKING


def test_controlled_side_waits_for_the_handshake() -> None:
    c = Clock()
    core = GuardCore(IDENT)
    core.on_sample(sample(0), c.now, c.wall)
    core.on_message("punchd", path(role=Role.CONTROLLED), c.now)
    assert core.desired(c.now).keepalive == 0
    c.now += 1
    core.on_sample(sample(0), c.now, c.wall)
    assert core.desired(c.now).keepalive == 0
    c.now += 0.5
    core.on_sample(sample(148, handshake=c.wall), c.now, c.wall)  # the peer's initiation
    assert core.desired(c.now).keepalive == 5
    assert core.state(c.now, c.wall).state is GuardStateKind.UP


def test_up_then_dead_after_the_documented_interval() -> None:
    c = Clock()
    seen: list[tuple[str, str]] = []
    core = GuardCore(IDENT, on_transition=lambda old, new, _r: seen.append((old.value, new.value)))
    core.on_sample(DeviceSample(PRIV, 0, ()), c.now, c.wall)
    core.on_message("punchd", path(), c.now)
    hs = c.wall
    rx = 92
    core.on_sample(sample(rx, hs, 5), c.now, c.wall)
    assert core.phase.value == "up"
    limit = dead_after(5)
    assert limit == 15  # documented in docs/guardd.md
    # keepalives arrive every 5 s: stays up
    for _ in range(10):
        c.now += 5
        rx += 32
        core.on_sample(sample(rx, hs, 5), c.now, c.wall)
        assert core.phase.value == "up"
    # then nothing: still up just before the limit, down at it
    start = c.now
    while c.now - start < limit - 0.5:
        c.now += 0.5
        core.on_sample(sample(rx, hs, 5), c.now, c.wall)
        assert core.phase.value == "up"
    c.now += 0.5
    core.on_sample(sample(rx, hs, 5), c.now, c.wall)
    st = core.state(c.now, c.wall)
    assert st.state is GuardStateKind.DOWN and "no bytes received" in st.reason
    # bytes again: up again
    c.now += 1
    core.on_sample(sample(rx + 32, hs, 5), c.now, c.wall)
    assert core.phase.value == "up"
    assert seen == [
        ("no_path", "handshaking"),
        ("handshaking", "up"),
        ("up", "down"),
        ("down", "up"),
    ]


def test_never_a_handshake_is_down() -> None:
    c = Clock()
    core = GuardCore(IDENT)
    core.on_sample(DeviceSample(PRIV, 0, ()), c.now, c.wall)
    core.on_message("punchd", path(), c.now)
    c.now += dead_after(5) - 0.1
    core.on_sample(sample(0), c.now, c.wall)
    assert core.phase.value == "handshaking"
    c.now += 0.2
    core.on_sample(sample(0), c.now, c.wall)
    assert "no handshake" in core.state(c.now, c.wall).reason


def test_dead_after_covers_the_passive_keepalive() -> None:
    # one-way traffic: the receiver only answers every KEEPALIVE_TIMEOUT (10 s)
    assert dead_after(1) == 11 and dead_after(5) == 15 and dead_after(25) == 75


def test_adoption_keeps_a_live_tunnel_and_the_same_path_is_a_no_op() -> None:
    c = Clock()
    core = GuardCore(IDENT)
    live = sample(5000, c.wall - 30, 5)
    core.on_sample(live, c.now, c.wall)
    assert core.phase.value == "up"
    assert not diff(core.desired(c.now), live)  # no path yet: nothing touched
    core.on_message("punchd", path(role=Role.CONTROLLED), c.now)  # punchd republishes
    assert core.phase.value == "up" and not diff(core.desired(c.now), live)
    core.on_message("punchd", path(role=Role.CONTROLLED, generation=2), c.now)
    assert not diff(core.desired(c.now), live)


def test_recreated_interface_restarts_the_stagger() -> None:
    c = Clock()
    core = GuardCore(IDENT)
    core.on_sample(DeviceSample(PRIV, 0, ()), c.now, c.wall)
    core.on_message("punchd", path(role=Role.CONTROLLED), c.now)
    core.on_sample(sample(148, c.wall, 0), c.now, c.wall)
    assert core.phase.value == "up" and core.desired(c.now).keepalive == 5
    c.now += 1
    core.on_recreated(c.now)  # wireguard-go died and was started again
    assert core.phase.value == "handshaking"
    assert core.desired(c.now).keepalive == 0  # controlled: wait for the peer again
    fresh = DeviceSample()
    assert diff(core.desired(c.now), fresh).peer == PeerChange(
        PEER, True, ep("198.51.100.7:61002"), None, ("10.99.0.2/32",)
    )
