"""PunchGuard's configuration: a TOML file (stdlib ``tomllib``) over typed defaults.

Where things come from, in order of precedence:
1. the environment: ``PUNCHGUARD_RUNTIME_DIR``, ``PUNCHGUARD_STATE_DIR`` (so one config file can
   serve several hosts in a lab or a test);
2. the file: ``--config FILE``, else ``$PUNCHGUARD_CONFIG``, else ``/etc/punchguard/config.toml``
   if it exists;
3. the defaults below (public Tox bootstrap nodes and STUN servers for a real machine);
and over all of it, the peer record written by `punchguard pair` (``peer_file``).

Every section is a frozen dataclass; a key that is unknown, or a value of the wrong type, is a
``ConfigError`` naming the file, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_CONFIG_FILE = Path("/etc/punchguard/config.toml")
ENV_CONFIG = "PUNCHGUARD_CONFIG"
ENV_RUNTIME_DIR = "PUNCHGUARD_RUNTIME_DIR"
ENV_STATE_DIR = "PUNCHGUARD_STATE_DIR"
ENV_PEER_FILE = "PUNCHGUARD_PEER_FILE"


class ConfigError(Exception):
    """A configuration problem, with a message fit for the user."""


@dataclass(frozen=True)
class PathsConfig:
    runtime_dir: Path = Path("/run/punchguard")  # bus sockets, logs, supervisord's socket
    state_dir: Path = Path("/var/lib/punchguard")  # identities and the peer record


@dataclass(frozen=True)
class BusConfig:
    heartbeat: float = 1.0  # seconds between state republications
    group: str = "punchguard"  # group owning the runtime directory and the bus sockets


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"  # debug, info, warning, error
    format: str = "auto"  # auto (console on a tty, JSON otherwise), json, console


@dataclass(frozen=True)
class ToxNode:
    host: str
    port: int
    public_key: str  # the node's DHT public key, 64 hex digits
    tcp_port: int = 0  # its TCP relay port, 0 = none


@dataclass(frozen=True)
class ToxConfig:
    # Public nodes from the Tox project's node list (nodes.tox.chat; keys checked against
    # clients' copies of it, Nov 2026); the lab and tests configure their own.
    bootstrap_nodes: tuple[ToxNode, ...] = (
        ToxNode(
            "tox.abilinski.com",
            33445,
            "10C00EB250C3233E343E2AEBA07115A5C28920E9C8D29492F6D00B29049EDC7E",
            33445,
        ),
        ToxNode(
            "tox.initramfs.io",
            33445,
            "3F0A45A268367C1BEA652F258C85F4A66DA76BCAA667A49E770BCC4917AB6A25",
            3389,
        ),
        ToxNode(
            "tox.novg.net",
            33445,
            "D527E5847F8330D628DAB1814F0A422F6DC9D0A300E6C357634EE2DA88C35463",
            33445,
        ),
        ToxNode(
            "tox.kurnevsky.net",
            33445,
            "82EF82BA33445A1F91A7DB27189ECFC0C013E06E3DA71F588ED692BED625EC23",
            33445,
        ),
    )
    udp: bool = True
    ipv6: bool = False
    local_discovery: bool = False
    start_port: int = 0  # 0 = toxcore's default range
    end_port: int = 0
    iterate_sleep: float = 0.005  # seconds between tox_iterate calls while payloads flow
    iterate_idle_sleep: float = 0.02  # ... and after 2 s without a payload (docs/signald.md)


@dataclass(frozen=True)
class PolicyConfig:
    mode: str = "on-demand"  # on-demand: Tox offline while the tunnel is up; always: stays online


@dataclass(frozen=True)
class TurnServer:
    host: str
    port: int
    username: str
    password: str
    transport: str = "udp"


@dataclass(frozen=True)
class IceConfig:
    # "host:port"; two or more let punchd tell a cone NAT from a symmetric one (docs/punchd.md)
    stun_servers: tuple[str, ...] = ("stun.l.google.com:19302", "stun.cloudflare.com:3478")
    turn_servers: tuple[TurnServer, ...] = ()  # aioice uses the first one
    ipv6: bool = False
    # Timers tuned for a VPN (design 4.3): a STUN transaction gives up after
    # check_rto * (2 ** (check_retries + 1) - 1) seconds (0.1 s, 4 -> 3.1 s).
    check_rto: float = 0.1
    check_retries: int = 4
    gather_timeout: float = 4.0  # seconds for STUN/TURN answers while gathering
    answer_timeout: float = 10.0  # the peer's candidates must arrive within this
    checks_timeout: float = 15.0  # safety net over a whole attempt's checks
    backoff_initial: float = 1.0  # first retry delay; doubles per failure, +-20% jitter
    backoff_max: float = 60.0
    hopeless_retry: float = 300.0  # both NATs symmetric and no relay: retry this slowly


@dataclass(frozen=True)
class WireGuardConfig:
    interface: str = "pg0"  # unique on the machine (wireguard-go's sockets are shared)
    backend: str = "auto"  # auto, kernel, wireguard-go
    keepalive: int = 5  # persistent keepalive, seconds
    address: str = ""  # this host's tunnel address, CIDR (else from the peer record)


@dataclass(frozen=True)
class OtrConfig:
    retry_initial: float = 2.0  # seconds before otrd repeats its AKE move; doubles each time
    retry_max: float = 30.0  # cap of that backoff, seconds


@dataclass(frozen=True)
class PeerConfig:
    """The paired peer, until pairing (a later issue) writes a peer record in the state dir."""

    tox_address: str = ""
    otr_fingerprint: str = ""
    wireguard_public_key: str = ""
    tunnel_address: str = ""  # the peer's tunnel address, CIDR


@dataclass(frozen=True)
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    log: LogConfig = field(default_factory=LogConfig)
    tox: ToxConfig = field(default_factory=ToxConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    ice: IceConfig = field(default_factory=IceConfig)
    wireguard: WireGuardConfig = field(default_factory=WireGuardConfig)
    peer: PeerConfig = field(default_factory=PeerConfig)
    otr: OtrConfig = field(default_factory=OtrConfig)
    source: str = "<defaults>"  # the file it came from (not a TOML key)


_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("log", "level"): ("debug", "info", "warning", "error"),
    ("log", "format"): ("auto", "json", "console"),
    ("policy", "mode"): ("on-demand", "always"),
    ("wireguard", "backend"): ("auto", "kernel", "wireguard-go"),
}


def config_file(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The file to read: explicit, else $PUNCHGUARD_CONFIG, else the system file if present."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None


def load(path: str | os.PathLike[str] | None = None, *, env: bool = True) -> Config:
    """Load the configuration (see the module docstring for precedence)."""
    file = config_file(path)
    data: dict[str, Any] = {}
    source = "<defaults>"
    if file is not None:
        source = str(file)
        try:
            with open(file, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{file}: no such config file") from None
        except PermissionError:
            raise ConfigError(f"{file}: permission denied") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{file}: not valid TOML: {e}") from None
    cfg = from_dict(data, source=source, env=env)
    return _with_peer_record(cfg, peer_file(cfg) if env else None)


def peer_file(cfg: Config) -> Path:
    """The peer record written by `punchguard pair`: $PUNCHGUARD_PEER_FILE, else
    ``<state_dir>/peer.toml`` (supervisord gives each stage a subdirectory as its state dir,
    and the record's path explicitly)."""
    return Path(os.environ.get(ENV_PEER_FILE) or cfg.paths.state_dir / "peer.toml")


def _with_peer_record(cfg: Config, path: Path | None) -> Config:
    """Overlay the peer record: its [peer] keys and [wireguard] address win over the file's."""
    if path is None:
        return cfg
    try:
        with open(path, "rb") as fh:
            record = tomllib.load(fh)
    except FileNotFoundError:
        return cfg
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the peer record: {e}") from None
    unknown = set(record) - {"peer", "wireguard"}
    if unknown or set(record.get("wireguard", {})) - {"address"}:
        raise ConfigError(f"{path}: a peer record holds only [peer] and [wireguard] address")
    peer = _build(
        PeerConfig, {**dataclasses.asdict(cfg.peer), **record.get("peer", {})}, str(path), "peer"
    )
    wg = cfg.wireguard
    if "address" in record.get("wireguard", {}):
        wg = dataclasses.replace(
            wg, address=_convert(str, record["wireguard"]["address"], str(path), "address")
        )
    return dataclasses.replace(cfg, peer=peer, wireguard=wg)


def loads(text: str, *, source: str = "<string>", env: bool = False) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    return from_dict(data, source=source, env=env)


def from_dict(data: dict[str, Any], *, source: str, env: bool = True) -> Config:
    cfg = _build(Config, data, source, path="", skip={"source"})
    cfg = dataclasses.replace(cfg, source=source)
    if env:
        paths = cfg.paths
        if v := os.environ.get(ENV_RUNTIME_DIR):
            paths = dataclasses.replace(paths, runtime_dir=Path(v))
        if v := os.environ.get(ENV_STATE_DIR):
            paths = dataclasses.replace(paths, state_dir=Path(v))
        cfg = dataclasses.replace(cfg, paths=paths)
    return cfg


T = TypeVar("T")


def _build(cls: type[T], data: Any, source: str, path: str, skip: set[str] | None = None) -> T:
    where = f"[{path}]" if path else "top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where}: expected a table, got {_tname(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in (skip or set())}  # type: ignore[arg-type]  # cls is a dataclass
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: {where}: unknown key {key!r}{hint}; known keys: {known}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: {where}: missing required key {name!r}")
            continue
        key_path = f"{path}.{name}" if path else name
        value = _convert(hints[name], data[name], source, key_path)
        section, _, key = key_path.rpartition(".")
        choices = _CHOICES.get((section, key))
        if choices and value not in choices:
            raise ConfigError(
                f"{source}: {key_path} = {value!r}: expected one of {', '.join(choices)}"
            )
        kwargs[name] = value
    return cls(**kwargs)


def _convert(hint: Any, value: Any, source: str, key_path: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(
            f"{source}: {key_path}: expected {expected}, got {_tname(value)} {value!r}"
        )

    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _build(hint, value, source, key_path)
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(hint)
        if not isinstance(value, list):
            raise bad("an array")
        return tuple(_convert(item, v, source, f"{key_path}[{i}]") for i, v in enumerate(value))
    if origin is types.UnionType:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(args[0], value, source, key_path)
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise bad("a path (string)")
        return Path(value)
    if hint is float:
        if type(value) not in (int, float):
            raise bad("a number")
        return float(value)
    if hint is int:
        if type(value) is not int:
            raise bad("an integer")
        return value
    if hint is bool:
        if type(value) is not bool:
            raise bad("true or false")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    raise TypeError(f"config field {key_path}: unsupported type {hint!r}")


def _tname(value: Any) -> str:
    return {
        dict: "a table",
        list: "an array",
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
    }.get(type(value), type(value).__name__)
