"""guardd's asyncio runner: config and key file in, the bus and a backend wired to the core.

Start: settings from root-owned config (``Settings.from_config``), the key pair from
``<state_dir>/wg.key``, the backend (adopt the running interface, else create it), the tunnel
address and the peer's route. Then one loop: a bus message (``punch.path`` from punchd only) or
every ``POLL_INTERVAL`` a sample of the interface; after each, the core's desired device is
diffed against the sample and only the difference is applied. The state is published on every
change and refreshed once per heartbeat. Stopping (SIGTERM) touches nothing: the interface and
wireguard-go keep running for the next guardd.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from dataclasses import dataclass

import structlog

from guardd import backend as backends
from guardd import keys, lastpath, netlink, probe
from guardd.core import GuardCore, Identity, Phase, Refused, ValidPath
from guardd.device import DeviceChange, DeviceSample, diff, format_endpoint, host_cidr
from guardd.liveness import POLL_INTERVAL
from punchguard.config import Config
from punchguard.messages import GuardState, GuardStateKind
from punchguard.service import ServiceContext, refuse

IFNAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,14}$")


class StartError(Exception):
    """guardd cannot run with this config / key file / machine; the message says why."""


@dataclass(frozen=True)
class Settings:
    interface: str
    backend: str
    address: str  # this host's tunnel address, CIDR
    peer_public_key: str
    peer_address: str  # the peer's tunnel address as a host CIDR: its allowed IP and route
    keepalive: int

    @classmethod
    def from_config(cls, cfg: Config) -> Settings:
        wg, peer = cfg.wireguard, cfg.peer
        if not IFNAME.match(wg.interface) or wg.interface in (".", ".."):
            raise StartError(f"[wireguard] interface = {wg.interface!r}: not a valid name (<= 15)")
        if not 1 <= wg.keepalive <= 65535:
            raise StartError(f"[wireguard] keepalive = {wg.keepalive}: expected 1..65535")
        try:
            ours = ipaddress.ip_interface(wg.address)
        except ValueError:
            raise StartError(
                f"[wireguard] address = {wg.address!r}: expected this host's tunnel address, "
                "CIDR (e.g. 10.99.0.1/24)"
            ) from None
        try:
            theirs = ipaddress.ip_interface(peer.tunnel_address)
        except ValueError:
            raise StartError(
                f"[peer] tunnel_address = {peer.tunnel_address!r}: expected the peer's tunnel "
                "address, CIDR (e.g. 10.99.0.2/24)"
            ) from None
        if ours.version != theirs.version or ours.ip == theirs.ip:
            raise StartError(
                "[wireguard] address and [peer] tunnel_address must differ, same family"
            )
        try:
            peer_key = keys.check_key(peer.wireguard_public_key)
        except keys.KeyFileError as e:
            raise StartError(f"[peer] wireguard_public_key: {e}") from None
        return cls(
            wg.interface, wg.backend, str(ours), peer_key, host_cidr(str(theirs)), wg.keepalive
        )


def describe(change: DeviceChange) -> dict[str, object]:
    """A loggable summary of a change (the private key only as 'set')."""
    out: dict[str, object] = {}
    if change.private_key is not None:
        out["key"] = "set"
    if change.listen_port is not None:
        out["listen_port"] = change.listen_port
    if change.remove_peers:
        out["remove_peers"] = len(change.remove_peers)
    if (p := change.peer) is not None:
        if p.create:
            out["peer"] = "create"
        if p.endpoint is not None:
            out["endpoint"] = format_endpoint(p.endpoint)
        if p.keepalive is not None:
            out["keepalive"] = p.keepalive
        if p.allowed_ips is not None:
            out["allowed_ips"] = list(p.allowed_ips)
    return out


class Guard:
    def __init__(
        self,
        ctx: ServiceContext,
        settings: Settings,
        pair: keys.KeyPair,
        backend: backends.Backend,
    ) -> None:
        self.ctx = ctx
        self.bus = ctx.bus
        self.settings = settings
        self.backend = backend
        self.log: structlog.stdlib.BoundLogger = ctx.log.bind(interface=settings.interface)
        ident = Identity(
            interface=settings.interface,
            backend=backend.name,
            private_key=pair.private_key,
            public_key=pair.public_key,
            peer_public_key=settings.peer_public_key,
            allowed_ips=(settings.peer_address,),
            keepalive=settings.keepalive,
        )
        self.core = GuardCore(ident, on_transition=self._logged_transition)
        self.broken: str | None = None  # the interface is gone: recreate/adopt each tick
        self.refusal: str | None = None  # the interface refused the last change
        self._published: tuple[object, ...] | None = None
        self._published_at = 0.0
        self.state_dir = ctx.config.paths.state_dir
        self._saved_path: ValidPath | None = None  # what last-path.json holds, and since when
        self.prober: probe.Prober | None = None
        self._saved_at = 0.0

    def _logged_transition(self, old: Phase, new: Phase, reason: str) -> None:
        self.log.info("guard.state", old=old.value, new=new.value, reason=reason)

    async def run(self) -> None:
        self.bus.subscribe("punchd", types=("punch.path",))
        self.open_prober()
        try:
            await self._run()
        finally:
            if self.prober is not None:
                self.prober.close()

    async def _run(self) -> None:
        await self.tick()
        if self.restore_last_path():
            await self.tick()
        next_poll = time.monotonic() + POLL_INTERVAL
        while True:
            wake = next_poll
            if (due := self.core.next_deadline(time.monotonic())) is not None:
                wake = min(wake, due)
            timeout = max(0.0, wake - time.monotonic())
            try:
                incoming = await asyncio.wait_for(self.bus.receive(), timeout)
            except TimeoutError:
                incoming = None
            if incoming is not None:
                previous = self.core.path
                try:
                    path = self.core.on_message(incoming.endpoint, incoming.msg, time.monotonic())
                except Refused as e:
                    self.log.warning(
                        "guard.refused", endpoint=incoming.endpoint, type=incoming.msg.TYPE,
                        code=e.code, detail=e.detail, refused=sum(self.core.refused.values()),
                    )  # fmt: skip
                    self.publish()  # the count goes out with the next heartbeat refresh
                    continue
                if path != previous:
                    self.log.info(
                        "guard.path", endpoint=format_endpoint(path.endpoint),
                        port=path.listen_port, role=path.role.name.lower(),
                        generation=path.generation,
                    )  # fmt: skip
            if incoming is not None or time.monotonic() >= wake:
                await self.tick()
                self.save_last_path()
                next_poll = time.monotonic() + POLL_INTERVAL

    def open_prober(self) -> None:
        """(Re)open the probe socket: it is bound to the interface as it exists now, so a
        recreated interface needs a new one."""
        if self.prober is not None:
            self.prober.close()
            self.prober = None
        try:
            self.prober = probe.Prober(
                self.settings.interface, self.settings.peer_address, self.core.on_probe_reply
            )
        except OSError as e:
            self.log.warning("guard.no_probes", reason=str(e))  # the 15 s rule only

    def restore_last_path(self) -> bool:
        """Warm restart (issue 9): the interface has no endpoint for the peer (made afresh, not
        adopted) and no path came yet: apply the last path that worked, at once."""
        sample = self.core.sample
        peer = sample.peer(self.settings.peer_public_key) if sample is not None else None
        if self.core.path is not None or (peer is not None and peer.endpoint is not None):
            return False
        try:
            path, age = lastpath.load(self.state_dir, self.settings.peer_public_key, time.time())
        except lastpath.NoLastPath as e:
            self.log.info("guard.no_restore", reason=str(e))
            return False
        self.core.restore(path, time.monotonic(), age)
        self.log.info(
            "guard.restore", endpoint=format_endpoint(path.endpoint), port=path.listen_port,
            role=path.role.name.lower(), generation=path.generation, age=round(age, 1),
        )  # fmt: skip
        return True

    def save_last_path(self) -> None:
        """Keep the path in ``last-path.json`` while it works (see ``lastpath``)."""
        path = self.core.path
        if self.core.phase is not Phase.UP or path is None or self.broken or self.refusal:
            return
        now = time.monotonic()
        if path == self._saved_path and now - self._saved_at < lastpath.REFRESH:
            return
        try:
            lastpath.save(self.state_dir, path, self.settings.peer_public_key, time.time())
        except OSError as e:
            self.log.warning("guard.save_failed", reason=str(e))
        self._saved_path, self._saved_at = path, now

    async def tick(self) -> None:
        """Sample, diff, apply the difference, publish."""
        try:
            if self.broken is not None:
                await self.recover()
            sample = await self.sample()
            if self.prober is not None and self.core.probe_due(time.monotonic()):
                self.prober.send()
                self.core.on_probe_sent(time.monotonic())
            change = diff(self.core.desired(time.monotonic()), sample)
            if change:
                self.log.info("guard.apply", **describe(change))
                await self.backend.apply(change)
                await self.sample()
            self.refusal = None
        except backends.ApplyError as e:
            if self.refusal != str(e):
                self.log.error("guard.apply_failed", reason=str(e))
            self.refusal = str(e)  # retried every tick; ERROR until it works
        except (backends.BackendError, netlink.NetlinkFailure) as e:
            if self.broken is None:
                self.log.error("guard.backend_failed", reason=str(e))
            self.broken = str(e)
        self.publish()

    async def sample(self) -> DeviceSample:
        sample = await self.backend.read()
        self.core.on_sample(sample, time.monotonic(), time.time())
        return sample

    async def recover(self) -> None:
        self.backend.reap()
        adopted = await self.backend.ensure()
        await asyncio.to_thread(
            netlink.ensure_address,
            self.settings.interface,
            self.settings.address,
            self.settings.peer_address,
        )
        self.log.info("guard.recovered", adopted=adopted, after=self.broken)
        if not adopted:
            self.core.on_recreated(time.monotonic())
        self.open_prober()
        self.broken = None

    def publish(self) -> None:
        now, wall = time.monotonic(), time.time()
        st = self.core.state(now, wall)
        problem = self.broken or self.refusal
        if problem is not None:
            st = GuardState(
                GuardStateKind.ERROR,
                interface=st.interface,
                backend=st.backend,
                public_key=st.public_key,
                refused=st.refused,
                last_refused=st.last_refused,
                reason=problem[:200],
            )
        # refusals are not in the key: a flood of bad messages must not flood the bus
        key = (st.state, st.endpoint, st.reason, st.generation, st.listen_port)
        if key != self._published or now - self._published_at >= self.bus.heartbeat:
            self.bus.set_state(st)
            self._published = key
            self._published_at = now


async def start(ctx: ServiceContext) -> Guard:
    """Everything before the loop; ``StartError`` (and friends) with a clear message."""
    cfg = ctx.config
    settings = Settings.from_config(cfg)
    pair = await asyncio.to_thread(keys.ensure_key, cfg.paths.state_dir)
    backend = await asyncio.to_thread(
        backends.choose, settings.backend, settings.interface, cfg.paths.runtime_dir
    )
    adopted = await backend.ensure()
    changed = await asyncio.to_thread(
        netlink.ensure_address, settings.interface, settings.address, settings.peer_address
    )
    ctx.log.info(
        "guard.interface", interface=settings.interface, backend=backend.name,
        adopted=adopted, changed=changed, public_key=pair.public_key,
    )  # fmt: skip
    return Guard(ctx, settings, pair, backend)


async def serve(ctx: ServiceContext) -> None:
    try:
        guard = await start(ctx)
    except (
        StartError,
        keys.KeyFileError,
        backends.BackendError,
        netlink.NetlinkFailure,
    ) as e:
        ctx.log.error("guard.cannot_start", reason=str(e))
        # Exit 2 well before supervisord's startsecs: a failed start, FATAL after the retries.
        # Nothing to clean up: nothing was created.
        state = GuardState(
            GuardStateKind.ERROR, interface=ctx.config.wireguard.interface, reason=str(e)
        )
        await refuse(ctx, state, str(e))
    await guard.run()
