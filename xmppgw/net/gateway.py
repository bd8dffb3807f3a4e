"""The running gateway: one listener per vserver in service, the farms, the live sessions."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from typing import Any

from xmppgw.config import Config, Keepalive, VserverConfig
from xmppgw.control.server import ControlServer
from xmppgw.health.runner import ProbeRunner
from xmppgw.health.state import RealVerdict
from xmppgw.net.session import ClientSession
from xmppgw.net.shared import Row, SharedTable
from xmppgw.net.sockopts import apply_keepalive
from xmppgw.net.splice import AVAILABLE as SPLICE
from xmppgw.net.splice import PipePool
from xmppgw.slb.farm import Real, Serverfarm

LISTEN_BACKLOG = 1024
KEEPALIVE_SWEEP = 5.0  # seconds between passes that give upstream legs their keepalive


@dataclass(slots=True)
class VserverRuntime:
    config: VserverConfig
    server: asyncio.AbstractServer | None = None

    @property
    def name(self) -> str:
        return self.config.name


class Gateway:
    """One worker's gateway. With `workers > 1` the master binds the listening sockets and
    forks; each worker gets its sockets, its index and the shared table of SLB counters."""

    def __init__(self, config: Config, log: Any, worker: int = 0,
                 shared: SharedTable | None = None,
                 sockets: dict[str, socket.socket] | None = None) -> None:
        self.config = config
        self.log = log
        self.worker = worker
        self.shared = shared
        self.sockets = sockets or {}
        now = asyncio.get_running_loop().time()  # the clock the sessions feed the engine
        self.farms = {f.name: Serverfarm(f, now) for f in config.serverfarms}
        self.real_index = {real: i for i, real in
                           enumerate(r for farm in self.farms.values() for r in farm.reals)}
        self.vservers = [VserverRuntime(v) for v in config.vservers]
        self.sessions: set[ClientSession] = set()
        self.control: ControlServer | None = None
        self.health: ProbeRunner | None = None  # worker 0 only: reals are probed once
        self._sweep: asyncio.TimerHandle | None = None
        # Zero-copy relay for opaque streams where the platform has os.splice.
        self.pipes = PipePool() if config.gateway.relay == "splice" and SPLICE else None

    async def start(self) -> None:
        """Listen on every vserver in service; a vserver that cannot bind stops the start."""
        loop = asyncio.get_running_loop()
        if self.config.gateway.control_socket and self.worker == 0:
            self.control = ControlServer(self.config.gateway.control_socket, self.command,
                                         self.log)
            try:
                await self.control.start()
            except OSError as exc:
                raise OSError(exc.errno, f"control socket: {exc.strerror or exc}") from None
        if not self.config.gateway.domains:
            self.log.warning("no_domains", message="gateway.domains is empty: streams to any "
                             "domain are routed (as an IOS SLB would)")
        for vs in self.vservers:
            if not vs.config.inservice:
                self.log.info("vserver_out_of_service", vserver=vs.name)
                continue
            try:
                sock = self.sockets.get(vs.name) or listen_socket(
                    vs.config, self.config.gateway.keepalive)
            except OSError:
                await self.stop()
                raise
            vs.server = await loop.create_server(lambda vs=vs: ClientSession(self, vs),
                                                 sock=sock, backlog=LISTEN_BACKLOG)
            self.log.info("vserver_listening", vserver=vs.name, virtual=str(vs.config.virtual),
                          mode=vs.config.mode, serverfarm=vs.config.serverfarm)
        self._sweep = loop.call_later(KEEPALIVE_SWEEP, self._keepalive_sweep)
        if self.worker == 0:
            self.health = ProbeRunner(self.config.serverfarms, self.log, self.probe_verdict)
            if self.health:
                self.health.start()
            else:
                self.health = None

    def probe_verdict(self, verdict: RealVerdict) -> None:
        """The probes changed their mind about a real: tell the engine, log the state
        change, and publish it for the other workers."""
        farm = self.farms[verdict.farm]
        real = farm.find(verdict.real)
        if real is not None:
            farm.probe_result(real, verdict.ok, asyncio.get_running_loop().time())
            self.engine_changed(farm)

    def _keepalive_sweep(self) -> None:
        """Upstream legs get keepalive once they have lived a sweep interval.

        Keepalive only matters for connections that outlive a probe interval (60 s by
        default), so setting it on every upstream connection at connect time would be wasted
        on the many short ones; a pass every few seconds covers the long ones.
        """
        keepalive = self.config.gateway.keepalive
        for session in self.sessions:
            session.upstream_keepalive(keepalive)
        self._sweep = asyncio.get_running_loop().call_later(KEEPALIVE_SWEEP, self._keepalive_sweep)

    def sync_peers(self, farm: Serverfarm) -> None:
        """Before the engine picks: what the other workers hold of each real."""
        if self.shared is None:
            return
        now = asyncio.get_running_loop().time()
        for real in farm.reals:
            index = self.real_index[real]
            farm.observe_peers(real, *self.shared.peers(self.worker, index), now)
            if self.worker != 0:  # worker 0 runs the probes; the others take its verdict
                failed = self.shared.probe_failed(index)
                if failed is not real.probe_failed:
                    farm.probe_result(real, not failed, now)

    def engine_changed(self, farm: Serverfarm) -> None:
        """After the engine ran: log every state change once, publish this worker's counters."""
        for change in farm.drain_events():
            self.log.warning("real_state", farm=change.farm, real=change.real,
                             old=str(change.old), new=str(change.new), reason=change.reason)
        if self.shared is None:
            return
        for real in farm.reals:
            self.shared.publish(self.worker, self.real_index[real], Row(
                load=real.active + real.pending, active=real.active, total=real.total,
                failed_attempts=real.failed_attempts, reassigns=real.reassigns,
                consecutive_failures=real.consecutive_failures,
                failed_clients=len(real.failed_clients), failed_until=real.retry_at or 0.0,
                probe_failed=float(real.probe_failed)))

    def _counter(self, real: Real, field: str) -> int:
        """A real's counter over every worker (the shared table), or this process's own."""
        if self.shared is None:
            return int(getattr(real, field))
        return int(self.shared.total(self.real_index[real], field))

    def command(self, request: dict[str, Any]) -> dict[str, Any]:
        """A control socket request; `show` is all there is so far."""
        if request.get("command") == "show":
            return {"ok": True, "data": self.snapshot(asyncio.get_running_loop().time())}
        return {"ok": False, "error": f"unknown command {request.get('command')!r}"}

    def snapshot(self, now: float) -> dict[str, Any]:
        """The state of every vserver, farm and real as plain data (for show and --json).

        Counters are summed over the workers; vserver conns are this worker's."""
        for farm in self.farms.values():
            self.sync_peers(farm)
        wall = time.time()
        conns: dict[str, int] = {}
        for session in self.sessions:
            conns[session.vserver.name] = conns.get(session.vserver.name, 0) + 1
        vservers = [{"name": vs.name, "virtual": str(vs.config.virtual), "mode": vs.config.mode,
                     "serverfarm": vs.config.serverfarm, "inservice": vs.server is not None,
                     "conns": conns.get(vs.name, 0)} for vs in self.vservers]
        farms = []
        for farm in self.farms.values():
            users = [vs for vs in self.vservers if vs.server is not None and (
                vs.config.serverfarm == farm.name
                or any(r.serverfarm == farm.name for r in vs.config.routes))]
            farms.append({
                "name": farm.name, "predictor": farm.config.predictor, "nat": farm.config.nat,
                "virtuals_inservice": len(users),
                "reals": [{"address": real.name, "weight": real.config.weight,
                           "state": str(farm.state(real, now)),
                           "conns": self._counter(real, "active"),
                           "total": self._counter(real, "total"),
                           "failed_attempts": self._counter(real, "failed_attempts"),
                           "reassigns": self._counter(real, "reassigns"),
                           "state_age": round(now - real.last_change, 3),
                           "probes": self.health.describe(farm.name, real.name, now, wall)
                           if self.health is not None else []}
                          for real in farm.reals],
            })
        return {"vservers": vservers, "serverfarms": farms}

    async def stop(self) -> None:
        """Stop accepting, then close every live connection (both legs)."""
        if self._sweep is not None:
            self._sweep.cancel()
        if self.health is not None:
            await self.health.stop()
            self.health = None
        if self.control is not None:
            await self.control.stop()
        for vs in self.vservers:
            if vs.server is not None:
                vs.server.close()
        for session in list(self.sessions):
            session.close()
        for vs in self.vservers:
            if vs.server is not None:
                await vs.server.wait_closed()
                vs.server = None
        # let connection_lost callbacks run so every connection is logged and released
        for _ in range(50):
            if not self.sessions:
                break
            await asyncio.sleep(0.01)
        if self.pipes is not None:
            self.pipes.close()


def listen_socket(vserver: VserverConfig, keepalive: Keepalive,
                  reuse_port: bool = False) -> socket.socket:
    """The vserver's listening socket; with `reuse_port` one of several a worker each takes
    (SO_REUSEPORT: the kernel spreads new connections over them).

    Keepalive, TCP_USER_TIMEOUT and TCP_NODELAY are set here once: Linux copies them to every
    accepted socket, which saves six system calls per client connection."""
    family = socket.AF_INET6 if vserver.virtual.family_v6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        apply_keepalive(sock, keepalive)
        sock.bind((vserver.virtual.host, vserver.virtual.port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"vserver {vserver.name}: cannot listen on "
                      f"{vserver.virtual}: {exc.strerror}") from None
    return sock
