"""The UAPI codec against wireguard-go's wire form (captured from wireguard-go 0.0.20220316).

tests/integration/test_guardd_uapi.py checks the same assumptions against a live wireguard-go.
"""

from __future__ import annotations

import ipaddress

import pytest

from guardd.device import DeviceChange, PeerChange
from guardd.uapi import UapiError, format_set, key_from_hex, key_to_hex, parse_get, parse_set_reply

PRIV_HEX = "08feb915cfa942f4d6165be20552d2d5d24c0718d0dd4948903df3c08f9c6e47"
PEER_HEX = "5e262ac9133428a6ac592cbdd86fcd5f5f1566680ba9ae46b3dd7aff3f59ce04"
PEER_B64 = "XiYqyRM0KKasWSy92G/NX18VZmgLqa5Gs916/z9ZzgQ="

GET_REPLY = f"""private_key={PRIV_HEX}
listen_port=51999
public_key={PEER_HEX}
preshared_key=0000000000000000000000000000000000000000000000000000000000000000
protocol_version=1
endpoint=10.9.9.9:5555
last_handshake_time_sec=1764093120
last_handshake_time_nsec=500000000
tx_bytes=148
rx_bytes=92
persistent_keepalive_interval=5
allowed_ip=10.99.0.2/32
allowed_ip=fd00::2/128
errno=0

"""


def test_parse_get_reads_the_fields_we_rely_on() -> None:
    dev = parse_get(GET_REPLY)
    assert dev.listen_port == 51999
    assert dev.private_key == key_from_hex(PRIV_HEX)
    (peer,) = dev.peers
    assert peer.public_key == PEER_B64  # hex on UAPI, base64 for us (as `wg show` prints)
    assert peer.endpoint == (ipaddress.ip_address("10.9.9.9"), 5555)
    assert peer.last_handshake == 1764093120.5
    assert (peer.rx_bytes, peer.tx_bytes, peer.keepalive) == (92, 148, 5)
    assert peer.allowed_ips == ("10.99.0.2/32", "fd00::2/128")


def test_parse_get_fresh_device_and_ipv6_endpoint() -> None:
    dev = parse_get("listen_port=0\nerrno=0\n\n")
    assert dev.private_key is None and dev.peers == ()
    dev = parse_get(f"public_key={PEER_HEX}\nendpoint=[2001:db8::1]:7\nerrno=0\n\n")
    assert dev.peers[0].endpoint == (ipaddress.ip_address("2001:db8::1"), 7)
    assert dev.peers[0].last_handshake == 0 and dev.peers[0].rx_bytes == 0


def test_parse_get_ignores_unknown_keys() -> None:
    dev = parse_get(f"fwmark=0\nnew_device_key=1\npublic_key={PEER_HEX}\nnew_peer_key=x\nerrno=0\n")
    assert dev.peers[0].public_key == PEER_B64


@pytest.mark.parametrize(
    "reply",
    ["errno=1\n\n", "listen_port=1\n\n", "garbage\nerrno=0\n", "listen_port=x\nerrno=0\n",
     "public_key=zz\nerrno=0\n", f"public_key={PEER_HEX}\nrx_bytes=-\nerrno=0\n"],
)  # fmt: skip
def test_parse_get_errors(reply: str) -> None:
    with pytest.raises(UapiError):
        parse_get(reply)


def test_format_set() -> None:
    change = DeviceChange(
        private_key=key_from_hex(PRIV_HEX),
        listen_port=51820,
        remove_peers=(key_from_hex("11" * 32),),
        peer=PeerChange(
            PEER_B64,
            create=False,
            endpoint=(ipaddress.ip_address("2001:db8::1"), 7),
            keepalive=5,
            allowed_ips=("10.99.0.2/32",),
        ),
    )
    assert format_set(change) == (
        f"set=1\nprivate_key={PRIV_HEX}\nlisten_port=51820\n"
        f"public_key={'11' * 32}\nremove=true\n"
        f"public_key={PEER_HEX}\nupdate_only=true\nendpoint=[2001:db8::1]:7\n"
        "persistent_keepalive_interval=5\nreplace_allowed_ips=true\nallowed_ip=10.99.0.2/32\n\n"
    )
    created = format_set(DeviceChange(peer=PeerChange(PEER_B64, create=True)))
    assert created == f"set=1\npublic_key={PEER_HEX}\n\n"


def test_set_reply_and_keys() -> None:
    parse_set_reply("errno=0\n\n")
    with pytest.raises(UapiError):
        parse_set_reply("errno=22\n\n")
    with pytest.raises(UapiError):
        parse_set_reply("")
    assert key_to_hex(PEER_B64) == PEER_HEX
    with pytest.raises(ValueError, match="32 bytes"):
        key_to_hex("AAAA")


class Nla(dict[str, object]):
    """The shape of a decoded pyroute2 message: a dict with ``get_attr`` over its attrs."""

    def __init__(self, attrs: dict[str, object], **fields: object) -> None:
        super().__init__(fields)
        self.attrs = attrs

    def get_attr(self, name: str) -> object:
        return self.attrs.get(name)


def test_kernel_sample_from_pyroute2_shapes() -> None:
    # shapes as decoded by pyroute2 0.9.7 netlink/generic/wireguard.py: keys as base64 bytes,
    # endpoint {"addr", "port"}, handshake {"tv_sec", "tv_nsec"}, allowed IP "addr" = "ip/cidr"
    from guardd.backend import sample_from_netlink

    peer = Nla(
        {
            "WGPEER_A_PUBLIC_KEY": PEER_B64.encode(),
            "WGPEER_A_ENDPOINT": {"family": 10, "port": 7, "addr": "2001:db8::1"},
            "WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL": 5,
            "WGPEER_A_LAST_HANDSHAKE_TIME": {"tv_sec": 1764093120, "tv_nsec": 5},
            "WGPEER_A_RX_BYTES": 92,
            "WGPEER_A_TX_BYTES": 148,
            "WGPEER_A_ALLOWEDIPS": [Nla({}, addr="10.99.0.2/32")],
        }
    )
    msg = Nla(
        {
            "WGDEVICE_A_PRIVATE_KEY": key_from_hex(PRIV_HEX).encode(),
            "WGDEVICE_A_LISTEN_PORT": 51820,
            "WGDEVICE_A_PEERS": [peer],
        }
    )
    dev = sample_from_netlink([msg])
    assert dev.private_key == key_from_hex(PRIV_HEX) and dev.listen_port == 51820
    (p,) = dev.peers
    assert p.public_key == PEER_B64 and p.endpoint == (ipaddress.ip_address("2001:db8::1"), 7)
    assert (p.keepalive, p.last_handshake, p.rx_bytes, p.tx_bytes) == (5, 1764093120.0, 92, 148)
    assert p.allowed_ips == ("10.99.0.2/32",)
