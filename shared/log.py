"""One logging set-up for every PunchGuard process (structlog).

JSON lines when stderr is not a terminal (supervisord's log files), a console renderer on a
terminal. The service name is bound once. A redaction processor runs last before rendering:
values under key-like names, and anything that looks like key material (WireGuard base64 keys,
long hex strings such as Tox secret keys, raw bytes), become ``<redacted>``. Public identifiers
(Tox address, public keys, fingerprints) are allowed under their own names.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

REDACTED = "<redacted>"

# Key names whose values are always secret, whatever they look like.
_SECRET_KEY = re.compile(r"(secret|private|passw|pwd|psk|savedata|priv_?key)", re.IGNORECASE)
# Key names that hold public identifiers and may keep key-shaped values.
_PUBLIC_KEYS = frozenset(
    {
        "address",
        "tox_address",
        "public_key",
        "peer_public_key",
        "fingerprint",
        "peer_fingerprint",
        "pinned",
        "expected",
        "node_key",
    }
)
# Key-shaped values: a 32-byte key in base64 (WireGuard), 64+ hex digits (Tox keys and
# addresses, raw key dumps), 40+ decimal digits (DSA numbers such as OTR's private x, as a
# traceback or a repr prints them), and the repr of 16+ raw bytes (b'\x8f...').
_KEYLIKE = re.compile(
    r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{42,43}="
    r"|(?<![0-9A-Fa-f])[0-9A-Fa-f]{64,}"
    r"|(?<![0-9])[0-9]{40,}"
    r"|\bb'(?:[^'\\]|\\.){16,}'"
    r'|\bb"(?:[^"\\]|\\.){16,}"'
)


def redact_text(text: str) -> str:
    return _KEYLIKE.sub(REDACTED, text)


def _redact_value(key: str, value: Any) -> Any:
    if _SECRET_KEY.search(key) and key not in _PUBLIC_KEYS:
        return REDACTED
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if isinstance(value, int) and abs(value).bit_length() >= 128:
        return REDACTED  # a number that big is key material (a DSA x, a key as an integer)
    if isinstance(value, str) and key not in _PUBLIC_KEYS:
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    return value


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: no key material leaves a process through its logs."""
    for key in list(event_dict):
        event_dict[key] = _redact_value(key, event_dict[key])
    return event_dict


def setup(service: str, level: str = "info", fmt: str = "auto") -> structlog.stdlib.BoundLogger:
    """Configure structlog for this process and return the service's bound logger."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    json_out = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_out
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logger: structlog.stdlib.BoundLogger = structlog.get_logger().bind(service=service)
    return logger


def get(service: str | None = None) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger()
    return logger.bind(service=service) if service else logger
