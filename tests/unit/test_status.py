"""`punchguard status`'s explanations, from states alone."""

from __future__ import annotations

from punchguard import config as c
from punchguard import messages as m
from punchguard.commands.status import explain

PAIRED = c.from_dict(
    {
        "peer": {
            "tox_address": "A" * 76,
            "otr_fingerprint": "b" * 40,
            "wireguard_public_key": "k" * 43 + "=",
            "tunnel_address": "10.1.1.2/24",
        }
    },
    source="t",
    env=False,
)
ALL_RUNNING = dict.fromkeys(("signald", "otrd", "punchd", "guardd"), True)


def test_all_well() -> None:
    states: dict[str, m.Message] = {
        "signald": m.SignalState(m.SignalStateKind.OFFLINE, want_online=False),
        "otrd": m.OtrState(m.OtrStateKind.SECURE, verified=True),
        "punchd": m.PunchState(m.PunchStateKind.CONNECTED, role=m.Role.CONTROLLING),
        "guardd": m.GuardState(m.GuardStateKind.UP, interface="pg0", last_handshake_age=3),
    }
    path = m.Path(40000, "198.51.100.20", 50000, m.Role.CONTROLLING, m.CandidateType.HOST,
                  m.CandidateType.SRFLX)  # fmt: skip
    r = explain(states, path, PAIRED, ALL_RUNNING)
    assert r.tunnel_up
    assert r.problems == []
    text = dict(r.lines)
    assert text["path"].startswith("direct")
    assert text["tunnel"] == "UP"


def test_reasons_in_words() -> None:
    states: dict[str, m.Message] = {
        "signald": m.SignalState(m.SignalStateKind.ONLINE, since=1.0, peer_since=1.0),
        "otrd": m.OtrState(m.OtrStateKind.FAILED, reason="OTR fingerprint mismatch"),
        "punchd": m.PunchState(
            m.PunchStateKind.BACKOFF,
            nat=m.NatKind.ENDPOINT_DEPENDENT,
            peer_nat=m.NatKind.ENDPOINT_DEPENDENT,
        ),
    }
    r = explain(states, None, PAIRED, {**ALL_RUNNING, "guardd": False})
    assert not r.tunnel_up
    joined = "\n".join(r.problems)
    assert "peer offline on Tox since" in joined
    assert "OTR fingerprint mismatch" in joined
    assert "both sides behind symmetric NAT and no TURN server configured" in joined
    assert "guardd not running" in joined


def test_not_paired() -> None:
    r = explain({}, None, c.from_dict({}, source="t", env=False), {})
    assert any("not paired" in p for p in r.problems)
