"""WireGuard's cross-platform userspace API (UAPI), as spoken by wireguard-go.

Wire form (https://www.wireguard.com/xplatform/): a UNIX stream socket
``/var/run/wireguard/<ifname>.sock``; one request per connection is enough for us.

    get:  client "get=1\\n\\n"
          server "private_key=<hex>\\nlisten_port=51820\\n"
                 "public_key=<hex>\\nendpoint=198.51.100.7:51820\\nlast_handshake_time_sec=..\\n"
                 "last_handshake_time_nsec=..\\nrx_bytes=..\\ntx_bytes=..\\n"
                 "persistent_keepalive_interval=5\\nallowed_ip=10.99.0.2/32\\n...errno=0\\n\\n"
    set:  client "set=1\\nprivate_key=<hex>\\nlisten_port=N\\n"
                 "public_key=<hex>\\nupdate_only=true\\nendpoint=h:p\\n"
                 "persistent_keepalive_interval=5\\nreplace_allowed_ips=true\\nallowed_ip=..\\n\\n"
          server "errno=0\\n\\n"

Keys are 32 bytes, lowercase hex on this API (base64 everywhere else in PunchGuard). Device keys
come before the first ``public_key=``; every ``public_key=`` starts a peer. Unknown keys are
ignored (newer wireguard-go versions add some). This module is the pure codec plus a small
asyncio client; ``tests/unit/test_guardd_uapi.py`` pins the fields we rely on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from pathlib import Path

from guardd.device import DeviceChange, DeviceSample, PeerSample, format_endpoint, parse_endpoint

SOCKET_DIR = Path("/var/run/wireguard")
TIMEOUT = 3.0  # seconds for one request
MAX_RESPONSE = 1 << 20


class UapiError(Exception):
    """The socket is missing, does not answer, or answered errno != 0."""


class UapiRefused(UapiError):
    """wireguard-go answered a ``set`` with errno != 0 (e.g. the listen port is taken)."""


def socket_path(ifname: str, socket_dir: Path = SOCKET_DIR) -> Path:
    return socket_dir / f"{ifname}.sock"


def key_to_hex(key_b64: str) -> str:
    raw = base64.b64decode(key_b64, validate=True)
    if len(raw) != 32:
        raise ValueError("a WireGuard key is 32 bytes")
    return raw.hex()


def key_from_hex(key_hex: str) -> str:
    raw = binascii.unhexlify(key_hex)
    if len(raw) != 32:
        raise ValueError("a WireGuard key is 32 bytes")
    return base64.b64encode(raw).decode()


# -- codec ------------------------------------------------------------------------------------


def parse_get(text: str) -> DeviceSample:
    """A ``get=1`` response as a ``DeviceSample``; ``UapiError`` on errno != 0 or garbage."""
    device: dict[str, str] = {}
    peers: list[dict[str, str | list[str]]] = []
    errno = None
    for line in text.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(f"bad UAPI line {line[:80]!r}")
        if key == "errno":
            errno = value
        elif key == "public_key":
            peers.append({"public_key": value, "allowed_ip": []})
        elif peers:
            if key == "allowed_ip":
                ips = peers[-1]["allowed_ip"]
                assert isinstance(ips, list)
                ips.append(value)
            else:
                peers[-1][key] = value
        else:
            device[key] = value
    if errno is None:
        raise UapiError("UAPI response without errno")
    if errno != "0":
        raise UapiError(f"UAPI get failed: errno={errno}")
    try:
        return DeviceSample(
            private_key=key_from_hex(device["private_key"]) if "private_key" in device else None,
            listen_port=int(device.get("listen_port", "0")),
            peers=tuple(_peer(p) for p in peers),
        )
    except (ValueError, binascii.Error) as e:
        raise UapiError(f"bad UAPI value: {e}") from None


def _peer(raw: dict[str, str | list[str]]) -> PeerSample:
    def num(key: str) -> int:
        value = raw.get(key, "0")
        assert isinstance(value, str)
        return int(value)

    pub = raw["public_key"]
    endpoint = raw.get("endpoint", "")
    ips = raw["allowed_ip"]
    assert isinstance(pub, str) and isinstance(endpoint, str) and isinstance(ips, list)
    return PeerSample(
        public_key=key_from_hex(pub),
        endpoint=parse_endpoint(endpoint) if endpoint else None,
        allowed_ips=tuple(ips),
        keepalive=num("persistent_keepalive_interval"),
        last_handshake=num("last_handshake_time_sec") + num("last_handshake_time_nsec") / 1e9,
        rx_bytes=num("rx_bytes"),
        tx_bytes=num("tx_bytes"),
    )


def format_set(change: DeviceChange) -> str:
    """The ``set=1`` request for ``change`` (which must not be empty)."""
    lines = ["set=1"]
    if change.private_key is not None:
        lines.append(f"private_key={key_to_hex(change.private_key)}")
    if change.listen_port is not None:
        lines.append(f"listen_port={change.listen_port}")
    for pub in change.remove_peers:
        lines += [f"public_key={key_to_hex(pub)}", "remove=true"]
    peer = change.peer
    if peer is not None:
        lines.append(f"public_key={key_to_hex(peer.public_key)}")
        if not peer.create:
            lines.append("update_only=true")
        if peer.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(peer.endpoint)}")
        if peer.keepalive is not None:
            lines.append(f"persistent_keepalive_interval={peer.keepalive}")
        if peer.allowed_ips is not None:
            lines.append("replace_allowed_ips=true")
            lines += [f"allowed_ip={cidr}" for cidr in peer.allowed_ips]
    return "\n".join(lines) + "\n\n"


def parse_set_reply(text: str) -> None:
    for line in text.split("\n"):
        if line.startswith("errno="):
            if line != "errno=0":
                raise UapiRefused(f"UAPI set failed: {line}")
            return
    raise UapiError("UAPI set: no errno in the reply")


# -- client -----------------------------------------------------------------------------------


async def request(path: Path, text: str, limit: float = TIMEOUT) -> str:
    """Send one request, return the reply up to its terminating blank line."""
    try:
        async with asyncio.timeout(limit):
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                writer.write(text.encode())
                await writer.drain()
                reply = b""
                while not reply.endswith(b"\n\n"):
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    reply += chunk
                    if len(reply) > MAX_RESPONSE:
                        raise UapiError("UAPI reply too large")
                return reply.decode(errors="replace")
            finally:
                writer.close()
    except (OSError, TimeoutError) as e:
        raise UapiError(f"{path}: {type(e).__name__}: {e}") from None


async def get(path: Path) -> DeviceSample:
    return parse_get(await request(path, "get=1\n\n"))


async def set_device(path: Path, change: DeviceChange) -> None:
    parse_set_reply(await request(path, format_set(change)))


async def answers(path: Path, limit: float = 1.0) -> bool:
    """True if a wireguard-go process is behind ``path`` (the socket exists and answers)."""
    try:
        parse_get(await request(path, "get=1\n\n", limit))
    except UapiError:
        return False
    return True
