"""What punchd's core tells its runner to do, and what the runner reports back (pure).

The core (``core.py``) returns lists of the commands below; the runner (``runner.py``) carries
them out in order. ``StartGather`` ends in ``PunchCore.on_gathered`` with a ``Gathered`` (or
``on_gather_failed``), ``StartChecks`` in ``on_checks_done`` with the ``Selected`` pair (or
``on_checks_failed``).
"""

from __future__ import annotations

from dataclasses import dataclass

from punchguard.messages import CandidateType, IceParams, NatKind, Path, PunchState

# -- results the runner reports ---------------------------------------------------------------


@dataclass(frozen=True)
class Gathered:
    """What the runner's gather produced (see ice_adapter.Gathered)."""

    ufrag: str
    pwd: str
    candidates: tuple[str, ...]
    nat: NatKind
    srflx: int  # number of server-reflexive candidates
    relay: int  # number of relay candidates


@dataclass(frozen=True)
class Selected:
    """The pair ICE nominated (see ice_adapter.SelectedPair)."""

    local_port: int
    remote_host: str
    remote_port: int
    local_type: CandidateType
    remote_type: CandidateType
    via: str = ""  # relayed: the TURN server (ours if our side is relayed, else the relay address)


def candidate_type(typ: str) -> CandidateType:
    """aioice's candidate type (``host``, ``srflx``, ...) as a ``Selected`` carries it."""
    return {
        "host": CandidateType.HOST,
        "srflx": CandidateType.SRFLX,
        "prflx": CandidateType.PRFLX,
        "relay": CandidateType.RELAY,
    }.get(typ, CandidateType.UNKNOWN)


# -- commands ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartGather:
    session: int
    controlling: bool
    direct_only: bool = False  # a direct probe while relayed: no TURN allocation


@dataclass(frozen=True)
class SendParams:
    params: IceParams


@dataclass(frozen=True)
class StartChecks:
    session: int
    remote: IceParams


@dataclass(frozen=True)
class CloseSession:
    session: int
    keep_relay: bool = False  # the session's pair became the path: keep its TURN allocation


@dataclass(frozen=True)
class PublishState:
    state: PunchState


@dataclass(frozen=True)
class PublishPath:
    path: Path


Command = StartGather | SendParams | StartChecks | CloseSession | PublishState | PublishPath
