"""A typed ctypes binding to Debian's ``libtoxcore.so.2`` (c-toxcore 0.2.18):
only the calls signald uses.

The adapter at the libtoxcore boundary (style 4): nothing else in PunchGuard touches ctypes or the
library. The traps (design 4.1) and how this module avoids each:

- ``tox_new`` / ``tox_options_new`` return pointers: ``restype = c_void_p`` (the default ``c_int``
  truncates them and the next call segfaults). Every function has its argtypes and restype declared.
- Callback data pointers (keys, packets) are declared ``c_void_p`` and copied with ``string_at``
  inside the callback: they contain zero bytes, and the memory is toxcore's, valid only during it.
- ctypes swallows (prints) exceptions raised in a callback: each callback catches, stores, and
  ``iterate()`` re-raises the first one after ``tox_iterate`` returns.
- Callbacks run only inside ``tox_iterate``: they append ``ToxEvent``s to a list that ``iterate()``
  returns, so follow-up work (sending, adding friends) happens after it, never re-entrantly.
- Every CFUNCTYPE object is kept on the instance for its whole life (a collected one is a crash
  waiting for the next callback); the savedata buffer lives until ``tox_new`` returns.
- toxcore is not thread-safe: a ``Tox`` remembers the thread that created it and every call
  checks it (``ToxThreadError``).

Every ``Tox_Err_*`` out-parameter becomes a ``ToxError`` naming the call and the enum constant.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PUBLIC_KEY_SIZE = 32
ADDRESS_SIZE = 38  # public key, 4 bytes nospam, 2 bytes checksum
MAX_MESSAGE_LENGTH = 1372
MAX_CUSTOM_PACKET_SIZE = 1373
LOSSLESS_PACKET_FIRST = 160  # lossless custom packets start with a byte in 160..191
LOSSLESS_PACKET_LAST = 191

_LIBRARY_NAME = "libtoxcore.so.2"


class Connection(enum.IntEnum):
    """``Tox_Connection``."""

    NONE = 0
    TCP = 1
    UDP = 2


class SavedataType(enum.IntEnum):
    NONE = 0
    TOX_SAVE = 1
    SECRET_KEY = 2


class ProxyType(enum.IntEnum):
    NONE = 0
    HTTP = 1
    SOCKS5 = 2


# The error enums, in the order tox.h declares them (0 is always OK).
_ERRORS: dict[str, tuple[str, ...]] = {
    "tox_options_new": ("OK", "MALLOC"),
    "tox_new": (
        "OK", "NULL", "MALLOC", "PORT_ALLOC", "PROXY_BAD_TYPE", "PROXY_BAD_HOST",
        "PROXY_BAD_PORT", "PROXY_NOT_FOUND", "LOAD_ENCRYPTED", "LOAD_BAD_FORMAT",
    ),
    "tox_bootstrap": ("OK", "NULL", "BAD_HOST", "BAD_PORT"),
    "tox_add_tcp_relay": ("OK", "NULL", "BAD_HOST", "BAD_PORT"),
    "tox_friend_add": (
        "OK", "NULL", "TOO_LONG", "NO_MESSAGE", "OWN_KEY", "ALREADY_SENT", "BAD_CHECKSUM",
        "SET_NEW_NOSPAM", "MALLOC",
    ),
    "tox_friend_delete": ("OK", "FRIEND_NOT_FOUND"),
    "tox_friend_by_public_key": ("OK", "NULL", "NOT_FOUND"),
    "tox_friend_get_connection_status": ("OK", "NULL", "FRIEND_NOT_FOUND"),
    "tox_friend_get_public_key": ("OK", "FRIEND_NOT_FOUND"),
    "tox_friend_send_lossless_packet": (
        "OK", "NULL", "FRIEND_NOT_FOUND", "FRIEND_NOT_CONNECTED", "INVALID", "EMPTY", "TOO_LONG",
        "SENDQ",
    ),
    "tox_friend_send_message": (
        "OK", "NULL", "FRIEND_NOT_FOUND", "FRIEND_NOT_CONNECTED", "SENDQ", "TOO_LONG", "EMPTY",
    ),
    "tox_self_get_udp_port": ("OK", "NOT_BOUND"),
}  # fmt: skip
_ERRORS["tox_friend_add_norequest"] = _ERRORS["tox_friend_add"]


class ToxError(Exception):
    """A libtoxcore call failed: ``call`` is the C function, ``code`` the error constant name."""

    def __init__(self, call: str, value: int) -> None:
        names = _ERRORS.get(call, ())
        self.call = call
        self.value = value
        self.code = names[value] if 0 <= value < len(names) else f"UNKNOWN_{value}"
        super().__init__(f"{call}: {self.code}")


class ToxThreadError(RuntimeError):
    """A Tox instance was used from a thread other than the one that created it."""


class ToxClosedError(RuntimeError):
    """A Tox instance was used after ``kill()``."""


# -- events returned by iterate() -----------------------------------------------------------


@dataclass(frozen=True)
class SelfConnection:
    status: Connection


@dataclass(frozen=True)
class FriendConnection:
    friend: int
    status: Connection


@dataclass(frozen=True)
class FriendRequest:
    public_key: bytes
    message: bytes


@dataclass(frozen=True)
class FriendMessage:
    friend: int
    message: bytes


@dataclass(frozen=True)
class FriendLosslessPacket:
    friend: int
    data: bytes  # including the first (packet id) byte


ToxEvent = SelfConnection | FriendConnection | FriendRequest | FriendMessage | FriendLosslessPacket


# -- the library ------------------------------------------------------------------------------

_P = ctypes.c_void_p
_U8P = ctypes.c_char_p  # const uint8_t * input buffers (bytes): may contain zeros, length given
_ERR = ctypes.POINTER(ctypes.c_int)

_SELF_CONN_CB = ctypes.CFUNCTYPE(None, _P, ctypes.c_int, _P)
_FRIEND_CONN_CB = ctypes.CFUNCTYPE(None, _P, ctypes.c_uint32, ctypes.c_int, _P)
_FRIEND_REQUEST_CB = ctypes.CFUNCTYPE(None, _P, _P, _P, ctypes.c_size_t, _P)
_FRIEND_MESSAGE_CB = ctypes.CFUNCTYPE(
    None, _P, ctypes.c_uint32, ctypes.c_int, _P, ctypes.c_size_t, _P
)
_FRIEND_LOSSLESS_CB = ctypes.CFUNCTYPE(None, _P, ctypes.c_uint32, _P, ctypes.c_size_t, _P)

_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "tox_version_major": (ctypes.c_uint32, []),
    "tox_version_minor": (ctypes.c_uint32, []),
    "tox_version_patch": (ctypes.c_uint32, []),
    "tox_max_custom_packet_size": (ctypes.c_uint32, []),
    "tox_max_message_length": (ctypes.c_uint32, []),
    "tox_options_new": (_P, [_ERR]),
    "tox_options_free": (None, [_P]),
    "tox_options_set_udp_enabled": (None, [_P, ctypes.c_bool]),
    "tox_options_set_ipv6_enabled": (None, [_P, ctypes.c_bool]),
    "tox_options_set_local_discovery_enabled": (None, [_P, ctypes.c_bool]),
    "tox_options_set_hole_punching_enabled": (None, [_P, ctypes.c_bool]),
    "tox_options_set_proxy_type": (None, [_P, ctypes.c_int]),
    "tox_options_set_start_port": (None, [_P, ctypes.c_uint16]),
    "tox_options_set_end_port": (None, [_P, ctypes.c_uint16]),
    "tox_options_set_tcp_port": (None, [_P, ctypes.c_uint16]),
    "tox_options_set_savedata_type": (None, [_P, ctypes.c_int]),
    "tox_options_set_savedata_data": (None, [_P, _U8P, ctypes.c_size_t]),
    "tox_new": (_P, [_P, _ERR]),
    "tox_kill": (None, [_P]),
    "tox_get_savedata_size": (ctypes.c_size_t, [_P]),
    "tox_get_savedata": (None, [_P, _P]),
    "tox_bootstrap": (ctypes.c_bool, [_P, ctypes.c_char_p, ctypes.c_uint16, _U8P, _ERR]),
    "tox_add_tcp_relay": (ctypes.c_bool, [_P, ctypes.c_char_p, ctypes.c_uint16, _U8P, _ERR]),
    "tox_self_get_connection_status": (ctypes.c_int, [_P]),
    "tox_iteration_interval": (ctypes.c_uint32, [_P]),
    "tox_iterate": (None, [_P, _P]),
    "tox_self_get_address": (None, [_P, _P]),
    "tox_self_get_public_key": (None, [_P, _P]),
    "tox_self_get_udp_port": (ctypes.c_uint16, [_P, _ERR]),
    "tox_friend_add": (ctypes.c_uint32, [_P, _U8P, _U8P, ctypes.c_size_t, _ERR]),
    "tox_friend_add_norequest": (ctypes.c_uint32, [_P, _U8P, _ERR]),
    "tox_friend_delete": (ctypes.c_bool, [_P, ctypes.c_uint32, _ERR]),
    "tox_friend_by_public_key": (ctypes.c_uint32, [_P, _U8P, _ERR]),
    "tox_friend_get_public_key": (ctypes.c_bool, [_P, ctypes.c_uint32, _P, _ERR]),
    "tox_self_get_friend_list_size": (ctypes.c_size_t, [_P]),
    "tox_self_get_friend_list": (None, [_P, _P]),
    "tox_friend_get_connection_status": (ctypes.c_int, [_P, ctypes.c_uint32, _ERR]),
    "tox_friend_send_message": (
        ctypes.c_uint32, [_P, ctypes.c_uint32, ctypes.c_int, _U8P, ctypes.c_size_t, _ERR],
    ),
    "tox_friend_send_lossless_packet": (
        ctypes.c_bool, [_P, ctypes.c_uint32, _U8P, ctypes.c_size_t, _ERR],
    ),
    "tox_callback_self_connection_status": (None, [_P, _SELF_CONN_CB]),
    "tox_callback_friend_connection_status": (None, [_P, _FRIEND_CONN_CB]),
    "tox_callback_friend_request": (None, [_P, _FRIEND_REQUEST_CB]),
    "tox_callback_friend_message": (None, [_P, _FRIEND_MESSAGE_CB]),
    "tox_callback_friend_lossless_packet": (None, [_P, _FRIEND_LOSSLESS_CB]),
}  # fmt: skip

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def library() -> ctypes.CDLL:
    """The loaded library with every signature declared (loaded once per process)."""
    global _lib
    with _lib_lock:
        if _lib is None:
            name = ctypes.util.find_library("toxcore") or _LIBRARY_NAME
            if "so.2" not in name:
                name = _LIBRARY_NAME
            lib = ctypes.CDLL(name)
            for fname, (restype, argtypes) in _SIGNATURES.items():
                fn = getattr(lib, fname)
                fn.restype = restype
                fn.argtypes = argtypes
            _lib = lib
        return _lib


def version() -> tuple[int, int, int]:
    lib = library()
    return (lib.tox_version_major(), lib.tox_version_minor(), lib.tox_version_patch())


def _check(call: str, err: ctypes.c_int) -> None:
    if err.value != 0:
        raise ToxError(call, err.value)


@dataclass(frozen=True)
class ToxOptions:
    udp: bool = True
    ipv6: bool = False
    local_discovery: bool = False
    hole_punching: bool = True
    start_port: int = 0  # 0 and 0: toxcore's default range (33445-33545)
    end_port: int = 0
    tcp_port: int = 0  # 0: no TCP server of our own
    savedata: bytes = b""  # a tox_get_savedata() blob, or empty for a new identity


class Tox:
    """One Tox instance. Create, use and ``kill()`` it from one thread."""

    def __init__(self, options: ToxOptions) -> None:
        self._lib = library()
        self._owner = threading.get_ident()
        self._events: list[ToxEvent] = []
        self._error: BaseException | None = None
        lib = self._lib
        err = ctypes.c_int(0)
        opts = lib.tox_options_new(ctypes.byref(err))
        _check("tox_options_new", err)
        if not opts:
            raise ToxError("tox_options_new", 1)
        savedata = ctypes.create_string_buffer(options.savedata, len(options.savedata))
        try:
            lib.tox_options_set_udp_enabled(opts, options.udp)
            lib.tox_options_set_ipv6_enabled(opts, options.ipv6)
            lib.tox_options_set_local_discovery_enabled(opts, options.local_discovery)
            lib.tox_options_set_hole_punching_enabled(opts, options.hole_punching)
            lib.tox_options_set_proxy_type(opts, ProxyType.NONE)
            lib.tox_options_set_start_port(opts, options.start_port)
            lib.tox_options_set_end_port(opts, options.end_port)
            lib.tox_options_set_tcp_port(opts, options.tcp_port)
            if options.savedata:
                lib.tox_options_set_savedata_type(opts, SavedataType.TOX_SAVE)
                lib.tox_options_set_savedata_data(opts, savedata, len(options.savedata))
            else:
                lib.tox_options_set_savedata_type(opts, SavedataType.NONE)
            ptr = lib.tox_new(opts, ctypes.byref(err))
            _check("tox_new", err)
        finally:
            lib.tox_options_free(opts)
            del savedata  # tox_new has copied what it needs
        self._ptr: int | None = ptr
        # Keep every callback object referenced for the instance's life (design 4.1).
        self._callbacks = (
            _SELF_CONN_CB(self._on_self_connection),
            _FRIEND_CONN_CB(self._on_friend_connection),
            _FRIEND_REQUEST_CB(self._on_friend_request),
            _FRIEND_MESSAGE_CB(self._on_friend_message),
            _FRIEND_LOSSLESS_CB(self._on_friend_lossless),
        )
        lib.tox_callback_self_connection_status(ptr, self._callbacks[0])
        lib.tox_callback_friend_connection_status(ptr, self._callbacks[1])
        lib.tox_callback_friend_request(ptr, self._callbacks[2])
        lib.tox_callback_friend_message(ptr, self._callbacks[3])
        lib.tox_callback_friend_lossless_packet(ptr, self._callbacks[4])

    # -- life cycle -------------------------------------------------------------------------

    def _p(self) -> int:
        if threading.get_ident() != self._owner:
            raise ToxThreadError("a Tox instance is used from a thread that does not own it")
        if self._ptr is None:
            raise ToxClosedError("this Tox instance was killed")
        return self._ptr

    @property
    def alive(self) -> bool:
        return self._ptr is not None

    def kill(self) -> None:
        """Stop Tox cleanly (friends see us offline at once); idempotent."""
        if self._ptr is not None:
            ptr = self._p()
            self._ptr = None
            self._lib.tox_kill(ptr)

    def __enter__(self) -> Tox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    # -- identity and savedata ----------------------------------------------------------------

    def address(self) -> bytes:
        buf = ctypes.create_string_buffer(ADDRESS_SIZE)
        self._lib.tox_self_get_address(self._p(), buf)
        return buf.raw

    def public_key(self) -> bytes:
        buf = ctypes.create_string_buffer(PUBLIC_KEY_SIZE)
        self._lib.tox_self_get_public_key(self._p(), buf)
        return buf.raw

    def savedata(self) -> bytes:
        ptr = self._p()
        size = self._lib.tox_get_savedata_size(ptr)
        buf = ctypes.create_string_buffer(size)
        self._lib.tox_get_savedata(ptr, buf)
        return buf.raw

    def udp_port(self) -> int:
        err = ctypes.c_int(0)
        port: int = self._lib.tox_self_get_udp_port(self._p(), ctypes.byref(err))
        _check("tox_self_get_udp_port", err)
        return port

    # -- network ----------------------------------------------------------------------------

    def bootstrap(self, host: str, port: int, public_key: bytes) -> None:
        self._node_call("tox_bootstrap", host, port, public_key)

    def add_tcp_relay(self, host: str, port: int, public_key: bytes) -> None:
        self._node_call("tox_add_tcp_relay", host, port, public_key)

    def _node_call(self, call: str, host: str, port: int, public_key: bytes) -> None:
        _need_len(call, "public_key", public_key, PUBLIC_KEY_SIZE)
        err = ctypes.c_int(0)
        getattr(self._lib, call)(self._p(), host.encode(), port, public_key, ctypes.byref(err))
        _check(call, err)

    def connection_status(self) -> Connection:
        return Connection(self._lib.tox_self_get_connection_status(self._p()))

    def iteration_interval(self) -> float:
        """toxcore's suggested time until the next ``iterate()``, in seconds."""
        ms: int = self._lib.tox_iteration_interval(self._p())
        return ms / 1000.0

    def iterate(self) -> list[ToxEvent]:
        """Run one toxcore iteration; return the events its callbacks reported, in order.

        An exception raised inside a callback is re-raised here, after ``tox_iterate`` returned.
        """
        self._lib.tox_iterate(self._p(), None)
        events, self._events = self._events, []
        error, self._error = self._error, None
        if error is not None:
            raise error
        return events

    # -- friends ----------------------------------------------------------------------------

    def friend_add(self, address: bytes, message: bytes) -> int:
        _need_len("tox_friend_add", "address", address, ADDRESS_SIZE)
        err = ctypes.c_int(0)
        n: int = self._lib.tox_friend_add(
            self._p(), address, message, len(message), ctypes.byref(err)
        )
        _check("tox_friend_add", err)
        return n

    def friend_add_norequest(self, public_key: bytes) -> int:
        _need_len("tox_friend_add_norequest", "public_key", public_key, PUBLIC_KEY_SIZE)
        err = ctypes.c_int(0)
        n: int = self._lib.tox_friend_add_norequest(self._p(), public_key, ctypes.byref(err))
        _check("tox_friend_add_norequest", err)
        return n

    def friend_delete(self, friend: int) -> None:
        err = ctypes.c_int(0)
        self._lib.tox_friend_delete(self._p(), friend, ctypes.byref(err))
        _check("tox_friend_delete", err)

    def friend_by_public_key(self, public_key: bytes) -> int | None:
        """The friend number of ``public_key``, or None if it is not a friend."""
        _need_len("tox_friend_by_public_key", "public_key", public_key, PUBLIC_KEY_SIZE)
        err = ctypes.c_int(0)
        n: int = self._lib.tox_friend_by_public_key(self._p(), public_key, ctypes.byref(err))
        if err.value == 2:  # NOT_FOUND
            return None
        _check("tox_friend_by_public_key", err)
        return n

    def friend_public_key(self, friend: int) -> bytes:
        buf = ctypes.create_string_buffer(PUBLIC_KEY_SIZE)
        err = ctypes.c_int(0)
        self._lib.tox_friend_get_public_key(self._p(), friend, buf, ctypes.byref(err))
        _check("tox_friend_get_public_key", err)
        return buf.raw

    def friends(self) -> dict[int, bytes]:
        """Every friend: number -> public key."""
        ptr = self._p()
        size = self._lib.tox_self_get_friend_list_size(ptr)
        arr = (ctypes.c_uint32 * max(size, 1))()
        self._lib.tox_self_get_friend_list(ptr, arr)
        return {int(n): self.friend_public_key(int(n)) for n in arr[:size]}

    def friend_connection_status(self, friend: int) -> Connection:
        err = ctypes.c_int(0)
        v = self._lib.tox_friend_get_connection_status(self._p(), friend, ctypes.byref(err))
        _check("tox_friend_get_connection_status", err)
        return Connection(v)

    def friend_send_message(self, friend: int, message: bytes) -> int:
        err = ctypes.c_int(0)
        n: int = self._lib.tox_friend_send_message(
            self._p(), friend, 0, message, len(message), ctypes.byref(err)
        )
        _check("tox_friend_send_message", err)
        return n

    def friend_send_lossless_packet(self, friend: int, data: bytes) -> None:
        """Send a lossless custom packet; ``data[0]`` must be in 160..191, ``len`` <= 1373."""
        err = ctypes.c_int(0)
        self._lib.tox_friend_send_lossless_packet(
            self._p(), friend, data, len(data), ctypes.byref(err)
        )
        _check("tox_friend_send_lossless_packet", err)

    # -- callbacks (run inside tox_iterate) ----------------------------------------------------

    def _guard(self, fn: Callable[[], ToxEvent]) -> None:
        if self._error is not None:
            return
        try:
            self._events.append(fn())
        except BaseException as e:  # ctypes would swallow it: keep it for iterate()
            self._error = e

    def _on_self_connection(self, _tox: Any, status: int, _ud: Any) -> None:
        self._guard(lambda: SelfConnection(Connection(status)))

    def _on_friend_connection(self, _tox: Any, friend: int, status: int, _ud: Any) -> None:
        self._guard(lambda: FriendConnection(friend, Connection(status)))

    def _on_friend_request(self, _tox: Any, pk: int, msg: int, length: int, _ud: Any) -> None:
        self._guard(lambda: FriendRequest(_copy(pk, PUBLIC_KEY_SIZE), _copy(msg, length)))

    def _on_friend_message(
        self, _tox: Any, friend: int, _type: int, msg: int, length: int, _ud: Any
    ) -> None:
        self._guard(lambda: FriendMessage(friend, _copy(msg, length)))

    def _on_friend_lossless(self, _tox: Any, friend: int, data: int, length: int, _ud: Any) -> None:
        self._guard(lambda: FriendLosslessPacket(friend, _copy(data, length)))


def _copy(ptr: int | None, length: int) -> bytes:
    return ctypes.string_at(ptr, length) if ptr and length else b""


def _need_len(call: str, what: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{call}: {what} must be {size} bytes, got {len(value)}")
