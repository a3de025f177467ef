"""Pins the UAPI adapter's assumptions against a live wireguard-go (root only).

The fields guardd parses (endpoint, last_handshake_time_sec/nsec, rx_bytes, tx_bytes,
persistent_keepalive_interval, allowed_ip), hex keys, update_only / replace_allowed_ips / remove,
and that ``wg show`` agrees with what we set. A handshake between two devices in one namespace
makes the counters and the handshake time move.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from guardd import backend, keys, uapi
from guardd.device import DeviceChange, PeerChange
from tests.integration.guardd_lab import sh

pytestmark = pytest.mark.root


def spawn(ns: str, ifname: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, "wireguard-go", "-f", ifname],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@contextlib.asynccontextmanager
async def devices(run_id: str, tmp: str) -> AsyncIterator[list[backend.WireGuardGo]]:
    ns = f"{run_id}u"
    sh("ip", "netns", "add", ns)
    devs: list[backend.WireGuardGo] = []
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        for i in range(2):
            ifname = f"{run_id}u{i}"
            dev = backend.WireGuardGo(ifname, Path(tmp))
            dev.process = spawn(ns, ifname)
            devs.append(dev)
            for _ in range(200):
                if await uapi.answers(dev.sock):
                    break
                await asyncio.sleep(0.02)
            sh("ip", "-n", ns, "addr", "add", f"10.88.0.{i + 1}/24", "dev", ifname)
            sh("ip", "-n", ns, "link", "set", ifname, "up")
        yield devs
    finally:
        for dev in devs:
            if dev.process is not None:
                dev.process.kill()
                dev.process.wait(10)
            dev.sock.unlink(missing_ok=True)
        sh("ip", "netns", "del", ns, check=False)


async def test_uapi_against_wireguard_go(run_id: str, tmp_path: Path) -> None:
    pairs = [keys.ensure_key(tmp_path / f"k{i}") for i in range(2)]
    lo = ipaddress.ip_address("127.0.0.1")  # the adapter itself does not validate endpoints
    async with devices(run_id, str(tmp_path)) as devs:
        for i, dev in enumerate(devs):
            other = 1 - i
            fresh = await uapi.get(dev.sock)
            assert fresh.private_key is None and fresh.peers == ()
            await uapi.set_device(
                dev.sock,
                DeviceChange(
                    private_key=pairs[i].private_key,
                    listen_port=52000 + i,
                    peer=PeerChange(
                        pairs[other].public_key,
                        create=True,
                        allowed_ips=(f"10.88.0.{other + 1}/32",),
                    ),
                ),
            )
        # endpoint + keepalive on one side only (the controlling side) starts the handshake
        await uapi.set_device(
            devs[0].sock,
            DeviceChange(peer=PeerChange(pairs[1].public_key, endpoint=(lo, 52001), keepalive=3)),
        )
        for _ in range(200):
            got = await uapi.get(devs[0].sock)
            if got.peers[0].last_handshake > 0 and got.peers[0].rx_bytes > 0:
                break
            await asyncio.sleep(0.05)
        (peer,) = got.peers
        assert got.private_key == pairs[0].private_key and got.listen_port == 52000
        assert peer.public_key == pairs[1].public_key
        assert peer.endpoint == (lo, 52001) and peer.keepalive == 3
        assert peer.allowed_ips == ("10.88.0.2/32",)
        assert peer.last_handshake > 1e9 and peer.rx_bytes > 0 and peer.tx_bytes > 0
        # the responder learned our endpoint from the handshake
        back = (await uapi.get(devs[1].sock)).peers[0]
        assert back.endpoint == (lo, 52000) and back.rx_bytes > 0 and back.keepalive == 0
        # wg show agrees (it reads the same socket)
        dump = sh("wg", "show", devs[0].ifname, "dump").stdout.splitlines()
        fields = dump[1].split("\t")
        assert fields[:4] == [pairs[1].public_key, "(none)", "127.0.0.1:52001", "10.88.0.2/32"]
        # update_only + replace_allowed_ips, then remove
        await uapi.set_device(
            devs[0].sock,
            DeviceChange(peer=PeerChange(pairs[1].public_key, allowed_ips=("10.88.0.0/24",))),
        )
        assert (await uapi.get(devs[0].sock)).peers[0].allowed_ips == ("10.88.0.0/24",)
        await uapi.set_device(devs[0].sock, DeviceChange(remove_peers=(pairs[1].public_key,)))
        assert (await uapi.get(devs[0].sock)).peers == ()
        # a listen port that is taken is refused with errno (not a dead socket)
        with pytest.raises(uapi.UapiRefused):
            await uapi.set_device(devs[1].sock, DeviceChange(listen_port=52000))
        # ... and leaves the device unbound (port 0): guardd retries every tick, as ERROR
        assert (await uapi.get(devs[1].sock)).listen_port == 0
