"""Faults for the two-NAT lab, and a ping that measures what they cost (issue 9).

Every fault works from the lab's names alone (``LabInfo`` / ``lab.json``), so ``punchguard lab
cut`` and friends can run in a process of their own, long after ``lab up`` returned:

* **cut** (``cut(info, "a")``): ``conntrack -F`` in the NAT's namespace. Every mapping is
  forgotten, as when a home router reboots or its table overflows. With a cone NAT the next
  packet from inside creates the same mapping again (MASQUERADE keeps the source port when it
  is free), so WireGuard's persistent keepalive heals it within K seconds; the peer's packets are
  dropped until then (stateful firewall, design 4.5).
* **rebind** (``rebind(info, "a")``): the NAT moves its mappings to another port range
  (``MASQUERADE --to-ports``; the next rebind moves them back to the other range) and forgets
  the old ones. The host's packets now leave from a new public port that the peer's NAT has never
  seen, and the peer's packets to the old port hit the stateful drop: the old path is dead for
  good and only a new punch finds the new one.
* **partition** (``partition(info)`` / ``heal(info)``): every packet between the two NATs' public
  addresses is dropped, both ways, in each NAT's ``raw`` table (before conntrack, so no state
  changes). Traffic to the public services (Tox bootstrap nodes, coturn) still flows: signaling
  over Tox's TCP relay survives, as it would when only the direct path between two ISPs breaks.
  The rules carry the comment ``pg-partition``; ``heal`` removes every such rule and is safe to
  run twice.

``Pinger`` runs ``ping -D -O -i 0.1`` through the tunnel in a host's namespace and parses its
output, so tests and ``bench/recovery.py`` can count lost replies and time a recovery from the
fault to the first reply.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from punchguard.lab import HOSTS, LabInfo
from punchguard.netlab import PUBLIC_NET, LabError, SideName

WAN = {"a": f"{PUBLIC_NET}.10", "b": f"{PUBLIC_NET}.20"}  # the NATs' public addresses (netlab)
REBIND_RANGES = ("10000-19999", "20000-29999")  # alternated; below the ephemeral ports
PARTITION_TAG = "pg-partition"


def nat_ns(info: LabInfo, side: SideName) -> str:
    return f"{info.lab_id}-nat{side}"


def _run(ns: str, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30, check=False
    )
    if check and r.returncode != 0:
        raise LabError(f"{ns}: {' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def sides(which: str) -> tuple[SideName, ...]:
    if which == "both":
        return ("a", "b")
    if which in ("a", "b"):
        return (which,)  # type: ignore[return-value]  # checked: "a" or "b"
    raise LabError(f"side {which!r}: expected a, b or both")


def cut(info: LabInfo, which: str = "both") -> list[str]:
    """Flush the conntrack table of one NAT or both; one line per NAT."""
    done = []
    for side in sides(which):
        _run(nat_ns(info, side), ["conntrack", "-F"], check=False)  # exit 1 when already empty
        done.append(f"NAT {side}: conntrack flushed (every mapping forgotten)")
    return done


def masquerade_rules(info: LabInfo, side: SideName) -> list[str]:
    """The NAT's MASQUERADE rules as ``iptables -S`` prints them, in order."""
    out = _run(nat_ns(info, side), ["iptables", "-t", "nat", "-S", "POSTROUTING"]).stdout
    rules = [line for line in out.splitlines() if "MASQUERADE" in line]
    if not rules:
        raise LabError(f"NAT {side}: no MASQUERADE rule (is this a punchguard lab?)")
    return rules


def rebind(info: LabInfo, side: SideName) -> str:
    """Move the NAT's UDP mappings to the other port range and forget the old ones.

    ``--to-ports`` needs a protocol, so the rebind is a UDP rule put in front of the lab's own
    MASQUERADE rule (which keeps serving TCP: Tox's relay connections); the next rebind
    replaces it with the other range."""
    rules = masquerade_rules(info, side)
    current = re.search(r"--to-ports (\S+)", rules[0])
    ports = (
        REBIND_RANGES[1] if current and current.group(1) == REBIND_RANGES[0] else (REBIND_RANGES[0])
    )
    rule = ["1", "-o", "wan", "-p", "udp", "-j", "MASQUERADE", "--to-ports", ports]
    if "--random-fully" in rules[-1]:
        rule.append("--random-fully")  # a symmetric NAT stays symmetric
    ns = nat_ns(info, side)
    _run(ns, ["iptables", "-t", "nat", "-R" if current else "-I", "POSTROUTING", *rule])
    _run(ns, ["conntrack", "-F"], check=False)
    return f"NAT {side}: public UDP ports now {ports}, old mappings forgotten"


def unrebind(info: LabInfo, side: SideName) -> str:
    """Remove a rebinding's rule: new mappings keep their source port again (mappings in use
    stay as they are, so a working path is not disturbed)."""
    rules = masquerade_rules(info, side)
    if "--to-ports" not in rules[0]:
        return f"NAT {side}: not rebound"
    _run(nat_ns(info, side), ["iptables", "-t", "nat", "-D", "POSTROUTING", "1"])
    return f"NAT {side}: keeps source ports again (mappings in use unchanged)"


def _partition_rules(info: LabInfo, side: SideName) -> list[list[str]]:
    other = WAN["b" if side == "a" else "a"]
    tag = ["-m", "comment", "--comment", PARTITION_TAG, "-j", "DROP"]
    return [["-s", other, *tag], ["-d", other, *tag]]


def partition(info: LabInfo) -> str:
    """Drop everything between the two NATs (both directions, both NATs) until ``heal``."""
    heal(info)  # never stack two partitions
    for side in HOSTS:
        for rule in _partition_rules(info, side):
            _run(nat_ns(info, side), ["iptables", "-t", "raw", "-I", "PREROUTING", *rule])
    return f"partition: traffic between {WAN['a']} and {WAN['b']} dropped"


def heal(info: LabInfo) -> str:
    """Remove every partition rule (safe to call twice, and after a crash)."""
    removed = 0
    for side in HOSTS:
        ns = nat_ns(info, side)
        out = _run(ns, ["iptables", "-t", "raw", "-S", "PREROUTING"], check=False).stdout
        for line in out.splitlines():
            if PARTITION_TAG in line and line.startswith("-A "):
                _run(ns, ["iptables", "-t", "raw", "-D", *line.split()[1:]], check=False)
                removed += 1
    return f"partition healed ({removed} rules removed)"


def partitioned(info: LabInfo) -> bool:
    for side in HOSTS:
        ns = nat_ns(info, side)
        if PARTITION_TAG in _run(ns, ["iptables", "-t", "raw", "-S"], check=False).stdout:
            return True
    return False


# --------------------------------------------------------------------------------------------
# a ping through the tunnel


_REPLY = re.compile(r"^\[(\d+\.\d+)\] .*icmp_seq=(\d+) .*time=([\d.]+) ms")
_NO_ANSWER = re.compile(r"^\[(\d+\.\d+)\] no answer yet for icmp_seq=(\d+)")


@dataclass
class PingLog:
    """Parsed ``ping -D -O`` output: reply and no-answer times (unix time) by sequence, and
    when each answered request was sent (reply time minus round-trip time)."""

    replies: dict[int, float] = field(default_factory=dict)
    sent: dict[int, float] = field(default_factory=dict)
    missed: dict[int, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> PingLog:
        log = cls()
        for line in text.splitlines():
            if m := _REPLY.match(line):
                seq, at = int(m.group(2)), float(m.group(1))
                log.replies.setdefault(seq, at)
                log.sent.setdefault(seq, at - float(m.group(3)) / 1000)
            elif m := _NO_ANSWER.match(line):
                log.missed[int(m.group(2))] = float(m.group(1))
        return log

    def lost_between(self, start: float, end: float) -> list[int]:
        """Sequence numbers reported unanswered within [start, end] and never answered."""
        return sorted(s for s, t in self.missed.items() if start <= t <= end and s not in
                      self.replies)  # fmt: skip

    def first_reply_after(self, t: float) -> float | None:
        """When the first reply to a request *sent* after ``t`` arrived (replies to requests
        already in flight at ``t`` say nothing about the path after a fault)."""
        times = [r for s, r in self.replies.items() if self.sent[s] > t]
        return min(times) if times else None

    def last_reply(self) -> float | None:
        return max(self.replies.values()) if self.replies else None


class Pinger:
    """``ping -D -O -i <interval>`` from one lab host to the other's tunnel address, in the
    background, its output in a file; ``log()`` parses what it printed so far."""

    def __init__(self, info: LabInfo, src: str, address: str, out: Path, interval: float = 0.1):
        self.host = info.hosts[src]
        self.out = out
        self._fh = open(out, "w")  # noqa: SIM115  # closed in stop()
        argv = ["ping", "-D", "-O", "-n", "-i", f"{interval}", "-W", "1", address]
        self.proc = subprocess.Popen(
            self.host.argv(argv), env=self.host.env(), stdout=self._fh, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def log(self) -> PingLog:
        return PingLog.parse(self.out.read_text(errors="replace"))

    def wait_reply_after(self, t: float, timeout: float) -> float | None:
        """The unix time of the first reply after ``t``, waiting up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.log().first_reply_after(t)
            if got is not None:
                return got
            time.sleep(0.1)
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._fh.close()

    def __enter__(self) -> Pinger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
