"""otrd's runner routing: which endpoint may send which message."""

from __future__ import annotations

from typing import Any, cast

import structlog

from otrd.identity import fingerprint
from otrd.potr_compat import generate_key
from otrd.runner import Runner
from otrd.session import OtrSession
from punchguard.bus import Bus, Incoming
from punchguard.config import Config
from punchguard.messages import (
    Envelope,
    Error,
    Message,
    OtrSend,
    OtrState,
    OtrStateKind,
    SignalRecv,
    SignalSend,
    SignalState,
    SignalStateKind,
)
from punchguard.service import ServiceContext


class FakeBus:
    def __init__(self) -> None:
        self.published: list[Message] = []
        self.states: list[Message] = []

    def publish(self, msg: Message) -> None:
        self.published.append(msg)

    def set_state(self, msg: Message) -> None:
        self.states.append(msg)


def incoming(endpoint: str, msg: Message) -> Incoming:
    return Incoming(endpoint, Envelope(1, msg.TYPE, endpoint, 1, 0.0), msg)


def make_runner() -> tuple[Runner, FakeBus]:
    key, peer = generate_key(), generate_key()
    session = OtrSession(key, fingerprint(peer), now=0.0)
    bus = FakeBus()
    log: Any = structlog.get_logger()
    ctx = ServiceContext("otrd", Config(), cast(Bus, bus), log)
    return Runner(ctx, session), bus


def test_routing_by_endpoint() -> None:
    runner, bus = make_runner()
    online = SignalState(SignalStateKind.PEER_ONLINE)
    # only signald may say the peer is online, only punchd may ask to encrypt
    assert runner.handle(incoming("punchd", online), 1.0) == []
    assert runner.handle(incoming("signald", OtrSend(b"x")), 1.0) == []
    assert runner.handle(incoming("punchd", SignalRecv(b"?OTRv2?")), 1.0) == []
    assert sum(runner.drops.values()) == 3
    out = runner.handle(incoming("signald", online), 1.0)
    assert any(isinstance(m, SignalSend) for m in out)
    runner.emit(out)
    assert any(isinstance(m, OtrState) and m.state == OtrStateKind.AKE for m in bus.states)
    refused = runner.handle(incoming("punchd", OtrSend(b"too early")), 1.0)
    runner.emit(refused)
    assert any(isinstance(m, Error) and m.code == "otr_not_secure" for m in bus.published)
    offline = runner.handle(incoming("signald", SignalState(SignalStateKind.ONLINE)), 2.0)
    assert isinstance(offline[-1], OtrState) and offline[-1].state == OtrStateKind.NO_SESSION
