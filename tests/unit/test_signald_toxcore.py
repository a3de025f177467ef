"""Pins the assumptions of the libtoxcore adapter (signald.toxcore) against the real library.

No network: instances bind a UDP port on loopback ranges but never bootstrap.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from signald import core, toxcore


@pytest.fixture
def tox() -> Iterator[toxcore.Tox]:
    with toxcore.Tox(toxcore.ToxOptions(local_discovery=False)) as t:
        yield t


def test_library_version_and_limits() -> None:
    assert toxcore.version() >= (0, 2, 18)
    lib = toxcore.library()
    assert lib.tox_max_custom_packet_size() == toxcore.MAX_CUSTOM_PACKET_SIZE
    assert lib.tox_max_message_length() == toxcore.MAX_MESSAGE_LENGTH
    # our payload limit is one lossless packet minus its id byte
    assert core.MAX_PAYLOAD == toxcore.MAX_CUSTOM_PACKET_SIZE - 1
    assert toxcore.LOSSLESS_PACKET_FIRST <= core.PACKET_ID <= toxcore.LOSSLESS_PACKET_LAST


def test_pointers_survive_many_instances() -> None:
    # restype c_void_p: a truncated pointer would crash here (design 4.1)
    instances = [toxcore.Tox(toxcore.ToxOptions(udp=False)) for _ in range(3)]
    keys = {t.public_key() for t in instances}
    for t in instances:
        t.kill()
        t.kill()  # idempotent
    assert len(keys) == 3


def test_identity_and_address_checksum(tox: toxcore.Tox) -> None:
    address = tox.address()
    assert len(address) == toxcore.ADDRESS_SIZE
    assert address[:32] == tox.public_key()
    assert core.parse_address(address.hex()) == address  # our checksum agrees with toxcore's
    assert tox.connection_status() == toxcore.Connection.NONE
    assert 0 < tox.iteration_interval() <= 1.0
    assert tox.udp_port() > 0
    assert tox.iterate() == []


def test_savedata_round_trip_keeps_identity_and_friends(tox: toxcore.Tox) -> None:
    friend_key = bytes(range(32))
    n = tox.friend_add_norequest(friend_key)
    assert tox.friend_by_public_key(friend_key) == n
    assert tox.friend_by_public_key(bytes(32)) is None
    assert tox.friend_connection_status(n) == toxcore.Connection.NONE
    data = tox.savedata()
    with toxcore.Tox(toxcore.ToxOptions(udp=False, savedata=data)) as again:
        assert again.address() == tox.address()
        assert again.friends() == {n: friend_key}
        again.friend_delete(n)
        assert again.friends() == {}


def test_errors_name_the_call_and_code(tox: toxcore.Tox) -> None:
    with pytest.raises(toxcore.ToxError, match="tox_friend_add_norequest: OWN_KEY") as e:
        tox.friend_add_norequest(tox.public_key())
    assert (e.value.call, e.value.code) == ("tox_friend_add_norequest", "OWN_KEY")
    bad = bytearray(tox.address())
    bad[-1] ^= 0xFF
    bad[0] ^= 0x01
    with pytest.raises(toxcore.ToxError, match="BAD_CHECKSUM"):
        tox.friend_add(bytes(bad), b"hi")
    with pytest.raises(toxcore.ToxError, match="tox_friend_send_lossless_packet: FRIEND_NOT_FOUND"):
        tox.friend_send_lossless_packet(99, bytes([160]) + b"x")
    n = tox.friend_add_norequest(bytes(range(32)))
    with pytest.raises(toxcore.ToxError, match="FRIEND_NOT_CONNECTED"):
        tox.friend_send_lossless_packet(n, bytes([160]) + b"x")
    with pytest.raises(toxcore.ToxError, match="tox_friend_delete: FRIEND_NOT_FOUND"):
        tox.friend_delete(99)
    with pytest.raises(toxcore.ToxError, match="tox_new: LOAD_BAD_FORMAT"):
        toxcore.Tox(toxcore.ToxOptions(udp=False, savedata=b"not a savedata file"))
    with pytest.raises(ValueError, match="32 bytes"):
        tox.bootstrap("127.0.0.1", 33445, b"short")
    with pytest.raises(toxcore.ToxError, match="tox_bootstrap: BAD_HOST"):
        tox.bootstrap("no such host.invalid", 33445, bytes(32))


def test_callback_exceptions_are_reraised_after_iterate(tox: toxcore.Tox) -> None:
    # Call our own callback through its C function pointer, as toxcore would: an invalid
    # connection value makes it raise; ctypes would swallow that, iterate() must not.
    tox._callbacks[0](None, 7, None)
    with pytest.raises(ValueError, match="7"):
        tox.iterate()
    tox._callbacks[4](None, 3, b"\xa0\x00data", 6, None)
    tox._callbacks[2](None, bytes(range(32)), None, 0, None)
    assert tox.iterate() == [
        toxcore.FriendLosslessPacket(3, b"\xa0\x00data"),
        toxcore.FriendRequest(bytes(range(32)), b""),
    ]


def test_one_thread_owns_the_instance(tox: toxcore.Tox) -> None:
    errors: list[BaseException] = []

    def other() -> None:
        try:
            tox.iterate()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], toxcore.ToxThreadError)


def test_killed_instance_refuses_calls() -> None:
    t = toxcore.Tox(toxcore.ToxOptions(udp=False))
    t.kill()
    assert not t.alive
    with pytest.raises(toxcore.ToxClosedError):
        t.address()
