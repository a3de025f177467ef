"""Logging: key material never reaches a log line."""

from __future__ import annotations

import base64
import json
import os

import pytest
import structlog

from punchguard import log


def test_redaction_of_key_like_values_and_secret_names() -> None:
    wg_key = base64.b64encode(os.urandom(32)).decode()
    tox_secret = os.urandom(32).hex().upper()
    event = {
        "event": f"loaded key {wg_key} and {tox_secret}",
        "private_key": "anything at all",
        "pwd": "ice-password",
        "blob": os.urandom(32),
        "nested": {"secret_key": "s", "ok": 5},
        "public_key": wg_key,  # public identifiers keep their value
        "count": 3,
    }
    out = log.redact(None, "info", dict(event))
    text = json.dumps(out)
    assert wg_key not in json.dumps({k: v for k, v in out.items() if k != "public_key"})
    assert tox_secret not in text
    assert "ice-password" not in text and "anything at all" not in text
    assert out["public_key"] == wg_key
    assert out["blob"] == "<32 bytes>"
    assert out["nested"] == {"secret_key": log.REDACTED, "ok": 5}
    assert out["count"] == 3


def test_setup_writes_json_with_the_service_bound(capsys: pytest.CaptureFixture[str]) -> None:
    logger = log.setup("otrd", "info", "json")
    secret = os.urandom(32).hex()
    logger.info("hello", detail=f"key={secret}")
    logger.debug("hidden")
    line = capsys.readouterr().err.strip().splitlines()
    assert len(line) == 1
    rec = json.loads(line[0])
    assert rec["service"] == "otrd" and rec["event"] == "hello"
    assert secret not in line[0]
    structlog.reset_defaults()
