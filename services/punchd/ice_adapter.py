"""The one place punchd touches aioice (0.13.0), internals included (design 4.3).

What we rely on, pinned by tests/unit/test_punchd_ice_adapter.py:

* ``aioice.stun.RETRY_RTO`` / ``RETRY_MAX``: module globals read when a STUN transaction is
  created; we lower them for VPN timers (``set_timers``).
* ``Connection._nominated[1]``: the selected ``CandidatePair`` of component 1 after
  ``connect()``; its ``local_candidate`` is the ``host`` base (or a ``relay``) so
  ``local_candidate.port`` is WireGuard's listen port, and ``remote_addr`` the endpoint;
  ``remote_candidate.type`` is ``host``/``srflx``/``relay``/``prflx``.
* ``Connection._protocols``: the host ``StunProtocol`` objects after ``gather_candidates()``;
  we send our own STUN binding requests from them (``server_reflexive_candidate``) to *every*
  configured STUN server, because aioice asks only one, and we need two answers to tell a cone
  NAT from a symmetric one.
* ``add_remote_candidate(None)`` is end-of-candidates: without it ``connect()`` never fails.
* ``aioice.ice.get_host_addresses(use_ipv4, use_ipv6)``: the module function
  ``gather_candidates()`` calls for host addresses; ``exclude_interfaces`` wraps it so that our
  own WireGuard interface never yields a host candidate (a path through the tunnel itself must
  never be chosen, and a STUN request from the tunnel address goes unanswered, which held every
  gathering up for the full STUN timeout: 3.1 s per side).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import aioice
import aioice.ice
import aioice.stun
import ifaddr

from punchguard.config import TurnServer
from punchguard.messages import NatKind

MAX_REMOTE_CANDIDATES = 32  # a peer sending more is broken or hostile: the rest are ignored
_AIOICE_HOST_ADDRESSES = aioice.ice.get_host_addresses
_excluded_interfaces: frozenset[str] = frozenset()


def exclude_interfaces(names: Sequence[str]) -> None:
    """Never gather host candidates on these interfaces (our WireGuard interface)."""
    global _excluded_interfaces
    _excluded_interfaces = frozenset(n for n in names if n)
    aioice.ice.get_host_addresses = _host_addresses


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    excluded: set[str] = set()
    for adapter in ifaddr.get_adapters():
        if adapter.name in _excluded_interfaces or adapter.nice_name in _excluded_interfaces:
            excluded.update(ip.ip if isinstance(ip.ip, str) else ip.ip[0] for ip in adapter.ips)
    found: list[str] = _AIOICE_HOST_ADDRESSES(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    return [a for a in found if a not in excluded]


class IceFailed(Exception):
    """Gathering or the checks failed; ``str()`` is a short reason for the bus."""


@dataclass(frozen=True)
class StunAnswer:
    server: tuple[str, int]
    local: tuple[str, int]  # the host candidate it was sent from
    mapped: tuple[str, int]  # XOR-MAPPED-ADDRESS


@dataclass(frozen=True)
class Gathered:
    ufrag: str
    pwd: str
    candidates: tuple[str, ...]  # RFC 8839 candidate-attribute strings, ours
    nat: NatKind
    srflx: int
    relay: int
    answers: tuple[StunAnswer, ...]


@dataclass(frozen=True)
class SelectedPair:
    local_host: str
    local_port: int  # the host port to hand to WireGuard (or the relay's port)
    local_type: str
    remote_host: str
    remote_port: int
    remote_type: str


def set_timers(rto: float, retries: int) -> None:
    """STUN retransmission for every transaction from now on (design 4.3: 0.1 s brings a good
    path up in about 0.16 s; ``rto * (2 ** (retries + 1) - 1)`` is when a check gives up)."""
    aioice.stun.RETRY_RTO = rto
    aioice.stun.RETRY_MAX = retries


def parse_server(text: str, default_port: int = 3478) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``, or a bare host) -> (host, port); ValueError if bad."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    else:
        host, port = text, default_port
    if not host or not 0 < port < 65536:
        raise ValueError(f"bad server address {text!r}")
    return host, port


def classify_nat(answers: Sequence[StunAnswer], host_addresses: Sequence[str]) -> NatKind:
    """RFC 4787 mapping behaviour from STUN answers sent from one local socket to several
    servers: one public address for all = endpoint-independent, several = endpoint-dependent."""
    by_local: dict[tuple[str, int], set[tuple[str, int]]] = {}
    for a in answers:
        if a.mapped[0] in host_addresses and a.mapped == a.local:
            return NatKind.NO_NAT
        by_local.setdefault(a.local, set()).add(a.mapped)
    kinds = set()
    for local, mapped in by_local.items():
        servers = {a.server for a in answers if a.local == local}
        if len(mapped) > 1:
            kinds.add(NatKind.ENDPOINT_DEPENDENT)
        elif len(servers) > 1:
            kinds.add(NatKind.ENDPOINT_INDEPENDENT)
    if NatKind.ENDPOINT_DEPENDENT in kinds:
        return NatKind.ENDPOINT_DEPENDENT
    if NatKind.ENDPOINT_INDEPENDENT in kinds:
        return NatKind.ENDPOINT_INDEPENDENT
    return NatKind.UNKNOWN


class IceSession:
    """One ICE attempt: gather, exchange (by the caller), connect, close."""

    def __init__(
        self,
        *,
        controlling: bool,
        stun_servers: Sequence[tuple[str, int]],
        turn: TurnServer | None = None,
        ipv6: bool = False,
        gather_timeout: float = 4.0,
    ) -> None:
        self.stun_servers = list(stun_servers)
        self.gather_timeout = gather_timeout
        turn_server = (turn.host, turn.port) if turn is not None else None
        # stun_server=None: we ask every STUN server ourselves (see the module docstring)
        self.connection = aioice.Connection(
            ice_controlling=controlling, components=1, stun_server=None,
            use_ipv4=True, use_ipv6=ipv6, turn_server=turn_server,
            turn_username=turn.username if turn else None,
            turn_password=turn.password if turn else None,
            turn_transport=turn.transport if turn else "udp",
        )  # fmt: skip
        self._closed = False

    async def gather(self) -> Gathered:
        conn = self.connection
        try:
            await asyncio.wait_for(conn.gather_candidates(), self.gather_timeout + 1.0)
        except (OSError, TimeoutError) as e:
            raise IceFailed(f"gather: {type(e).__name__}: {e}") from None
        hosts = [p for p in conn._protocols if p.local_candidate.type == "host"]
        jobs = [
            self._ask(protocol, server)
            for protocol in hosts
            if ipaddress.ip_address(protocol.local_candidate.host).version == 4
            for server in self.stun_servers
        ]
        results = await asyncio.gather(*jobs)
        answers = tuple(a for a, _ in results if a is not None)
        cands = list(conn.local_candidates)
        seen = {c.to_sdp() for c in cands}
        for _, cand in results:
            redundant = cand is not None and (cand.host, cand.port) == (
                cand.related_address,
                cand.related_port,
            )  # no NAT: the srflx is the host candidate itself (RFC 8445 5.1.3)
            if cand is not None and not redundant and cand.to_sdp() not in seen:
                seen.add(cand.to_sdp())
                cands.append(cand)
        host_addresses = [c.host for c in cands if c.type == "host"]
        return Gathered(
            ufrag=conn.local_username, pwd=conn.local_password,
            candidates=tuple(c.to_sdp() for c in cands),
            nat=classify_nat(answers, host_addresses),
            srflx=sum(1 for c in cands if c.type == "srflx"),
            relay=sum(1 for c in cands if c.type == "relay"),
            answers=answers,
        )  # fmt: skip

    async def _ask(
        self, protocol: aioice.ice.StunProtocol, server: tuple[str, int]
    ) -> tuple[StunAnswer | None, aioice.Candidate | None]:
        try:
            cand, _ = await asyncio.wait_for(
                aioice.ice.server_reflexive_candidate(protocol, server), self.gather_timeout
            )
        except Exception:  # unreachable / unresolvable server, timeout: no answer
            return None, None
        local = (protocol.local_candidate.host, protocol.local_candidate.port)
        return StunAnswer(server, local, (cand.host, cand.port)), cand

    async def connect(
        self, remote_ufrag: str, remote_pwd: str, candidates: Sequence[str]
    ) -> SelectedPair:
        conn = self.connection
        conn.remote_username = remote_ufrag
        conn.remote_password = remote_pwd
        for text in candidates[:MAX_REMOTE_CANDIDATES]:
            try:
                await conn.add_remote_candidate(aioice.Candidate.from_sdp(text))
            except (ValueError, IndexError):
                continue  # a malformed or unsupported candidate from the peer: skip it
        await conn.add_remote_candidate(None)  # end-of-candidates (design 4.3)
        try:
            await conn.connect()
        except ConnectionError as e:
            raise IceFailed(str(e) or "ICE failed") from None
        return selected_pair(conn)

    async def close(self) -> None:
        """Close every ICE socket (the NAT mapping outlives it: design 4.3). Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # closing half-made aioice state must not raise
            await self.connection.close()


def selected_pair(conn: aioice.Connection) -> SelectedPair:
    pair = conn._nominated.get(1)
    if pair is None:
        raise IceFailed("no nominated pair")
    local = pair.local_candidate
    rhost, rport = pair.remote_addr
    return SelectedPair(
        local_host=local.host, local_port=local.port, local_type=local.type,
        remote_host=rhost, remote_port=rport, remote_type=pair.remote_candidate.type,
    )  # fmt: skip
