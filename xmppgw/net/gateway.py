"""The running gateway: one listener per vserver in service, the farms, the live sessions."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from xmppgw import config as configmod
from xmppgw.config import Config, Keepalive, Limits, VserverConfig
from xmppgw.control.server import ControlServer
from xmppgw.dns.publisher import SrvPublisher
from xmppgw.dns.records import Health
from xmppgw.health.runner import ProbeRunner
from xmppgw.health.state import RealVerdict
from xmppgw.metrics import Metrics
from xmppgw.net.session import ClientSession
from xmppgw.net.shared import AdminTable, ConfigSlot, Row, RowMap, SharedTable
from xmppgw.net.sockopts import apply_keepalive
from xmppgw.net.splice import AVAILABLE as SPLICE
from xmppgw.net.splice import PipePool
from xmppgw.slb.farm import PanicChange, Real, Serverfarm
from xmppgw.slb.limits import Admission

LISTEN_BACKLOG = 1024
KEEPALIVE_SWEEP = 5.0  # seconds between passes that give upstream legs their keepalive
ADMIN_TICK = 0.25  # seconds between looks at operator commands (other workers) and drains
RELOAD_WAIT = 10.0  # how long `reload` waits for the master to hand this worker the config


@dataclass(slots=True, eq=False)
class VserverRuntime:
    config: VserverConfig
    server: asyncio.AbstractServer | None = None
    drain_deadline: float | None = None  # loop time; set by `vserver NAME no-inservice --drain`
    retired: bool = False  # gone from the config at a reload; its sessions run to their end
    admission: Admission | None = None  # [vserver.limits], if any limit is set
    refused: int = 0  # refusals not logged yet (one line per second at most)
    refused_logged: float = float("-inf")

    def __post_init__(self) -> None:
        self.set_limits()

    @property
    def name(self) -> str:
        return self.config.name

    def set_limits(self) -> None:
        limits = self.config.limits
        if limits == Limits():
            self.admission = None
        elif self.admission is None or self.admission.limits != limits:
            self.admission = Admission(limits)

    def note_refusal(self, log: Any, client: str, reason: str, now: float) -> None:
        """A flood of refusals must not become a flood of log lines: one per second, with
        the count of those not logged in between."""
        self.refused += 1
        if now - self.refused_logged >= 1.0:
            log.warning("limit_refused", vserver=self.name, client=client, limit=reason,
                        refused=self.refused)
            self.refused, self.refused_logged = 0, now


@dataclass(slots=True)
class WorkerShared:
    """What the workers of one gateway share (see xmppgw/net/shared.py)."""

    table: SharedTable
    admin: AdminTable
    slot: ConfigSlot
    rows: RowMap


def make_shared(config: Config, workers: int) -> WorkerShared:
    """Tables with room for reals and vservers that reloads add (rows are never reused)."""
    reals = sum(len(f.reals) for f in config.serverfarms)
    rows = RowMap(max(256, 4 * reals), max(64, 4 * len(config.vservers)))
    rows.assign(config)
    return WorkerShared(SharedTable(workers, rows.real_capacity),
                        AdminTable(rows.real_capacity, rows.vserver_capacity), ConfigSlot(),
                        rows)


class Gateway:
    """One worker's gateway. With `workers > 1` the master binds the listening sockets and
    forks; each worker gets its sockets, its index and the shared table of SLB counters."""

    def __init__(self, config: Config, log: Any, worker: int = 0,
                 shared: WorkerShared | None = None,
                 sockets: dict[str, socket.socket] | None = None) -> None:
        self.config = config
        self.log = log
        self.worker = worker
        # With one worker the admin table and row map are this process's own; the counters
        # table exists only with workers (one process needs nobody else's counts).
        own = shared or make_shared(config, 1)
        self.shared = shared.table if shared is not None else None
        self.admin, self.rows, self.slot = own.admin, own.rows, own.slot
        self.multi = shared is not None
        self.sockets = sockets or {}
        now = asyncio.get_running_loop().time()  # the clock the sessions feed the engine
        self.farms = {f.name: Serverfarm(f, now) for f in config.serverfarms}
        self.real_index: dict[Real, int] = {}
        self._index_reals()
        self.vservers = [VserverRuntime(v) for v in config.vservers]
        self._admin_seen = -1
        self._vservers_seen = -1
        self._vservers_lock = asyncio.Lock()
        self._admin_timer: asyncio.TimerHandle | None = None
        self.config_generation = self.slot.generation()
        self._reloaded = asyncio.Event()
        self.stopping = False
        self.sessions: set[ClientSession] = set()
        self.orphans: set[Any] = set()  # hedge losers still owing a verdict (UpstreamLeg)
        self._wake_scheduled = False
        self.control: ControlServer | None = None
        self.health: ProbeRunner | None = None  # worker 0 only: reals are probed once
        self.srv: SrvPublisher | None = None  # worker 0 only: the SRV records ([srv])
        self._sweep: asyncio.TimerHandle | None = None
        # Zero-copy relay for opaque streams where the platform has os.splice.
        self.pipes = PipePool() if config.gateway.relay == "splice" and SPLICE else None
        self.metrics: Metrics | None = Metrics() if config.gateway.metrics else None
        self._metrics_server: Any = None

    def _index_reals(self) -> None:
        self.real_index = {real: self.rows.reals[(farm.name, real.name)]
                           for farm in self.farms.values() for real in farm.reals}

    async def start(self) -> None:
        """Listen on every vserver in service; a vserver that cannot bind stops the start."""
        loop = asyncio.get_running_loop()
        if self.config.gateway.control_socket and self.worker == 0:
            self.control = ControlServer(self.config.gateway.control_socket, self.command,
                                         self.log, self.config.gateway.control_group)
            try:
                await self.control.start()
            except OSError as exc:
                raise OSError(exc.errno, f"control socket: {exc.strerror or exc}") from None
        if not self.config.gateway.domains:
            self.log.warning("no_domains", message="gateway.domains is empty: streams to any "
                             "domain are routed (as an IOS SLB would)")
        self.apply_admin()  # a respawned worker takes up what the operator changed before
        for vs in self.vservers:
            if not self._wanted(vs):
                self.log.info("vserver_out_of_service", vserver=vs.name)
                continue
            try:
                await self._listen(vs)
            except OSError:
                await self.stop()
                raise
        self._sweep = loop.call_later(KEEPALIVE_SWEEP, self._keepalive_sweep)
        self._admin_timer = loop.call_later(ADMIN_TICK, self._admin_tick)
        if self.worker == 0:
            self.health = ProbeRunner(self.config.serverfarms, self.log, self.probe_verdict)
            if self.health:
                self.health.start()
            else:
                self.health = None
        try:
            if self.worker == 0 and self.config.gateway.metrics is not None:
                self._start_metrics(self.config.gateway.metrics)
            if self.worker == 0 and self.config.srv is not None:
                self.srv = SrvPublisher(self.config, self.log, self.srv_health)
                await self.srv.start()
        except OSError:
            await self.stop()
            raise

    def _wanted(self, vs: VserverRuntime) -> bool:
        """In service: the operator's last word if any, else the config's."""
        held = self.admin.vserver(self.rows.vservers[vs.name])
        return vs.config.inservice if held is None else held[0]

    async def _listen(self, vs: VserverRuntime) -> None:
        """Start taking connections for a vserver: the master's socket when it bound one,
        else our own (with workers, one more SO_REUSEPORT socket in the vserver's group)."""
        sock = self.sockets.pop(vs.name, None) or listen_socket(
            vs.config, self.config.gateway.keepalive, reuse_port=self.multi)
        vs.server = await asyncio.get_running_loop().create_server(
            lambda: ClientSession(self, vs), sock=sock, backlog=LISTEN_BACKLOG)
        self.log.info("vserver_listening", vserver=vs.name, virtual=str(vs.config.virtual),
                      mode=vs.config.mode, serverfarm=vs.config.serverfarm)

    def _unlisten(self, vs: VserverRuntime) -> None:
        """Stop taking connections; the vserver's live sessions go on.

        shutdown() first: with workers the master holds a copy of this socket (to hand to a
        respawned worker), and closing our descriptor alone would leave it listening with
        nobody accepting. shutdown() acts on the socket itself, so new clients are refused at
        once (RST), which is what makes them try their next SRV target without a timeout."""
        if vs.server is None:
            return
        for sock in vs.server.sockets:
            try:
                socket.socket(fileno=os.dup(sock.fileno())).shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        vs.server.close()
        vs.server = None

    def _start_metrics(self, address: Any) -> None:
        from xmppgw.metrics import serve

        loop = asyncio.get_running_loop()

        def snapshot() -> dict[str, Any]:
            """Called on the HTTP thread: the engine is read on the loop's own thread."""
            done: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
            loop.call_soon_threadsafe(lambda: done.set_result(self.snapshot(loop.time())))
            return done.result(timeout=5)

        try:
            self._metrics_server = serve(address.host, address.port, snapshot)
        except OSError as exc:
            raise OSError(exc.errno, f"metrics: cannot listen on {address}: "
                          f"{exc.strerror}") from None
        self.log.info("metrics_listening", address=str(address))

    def srv_health(self) -> Health:
        """What the SRV records are built from: the vservers listening now, and each real's
        state as every worker sees it (sync_peers: FAILED marks of the other workers)."""
        now = asyncio.get_running_loop().time()
        for farm in self.farms.values():
            self.sync_peers(farm)
        states = {(farm.name, real.name): farm.state(real, now)
                  for farm in self.farms.values() for real in farm.reals}
        up = () if self.stopping else (vs.name for vs in self.vservers if vs.server is not None)
        return Health(frozenset(up), states)

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
        if self.admin.generation() != self._admin_seen:
            self.apply_admin()  # an operator command reached worker 0 a moment ago
        now = asyncio.get_running_loop().time()
        for real in farm.reals:
            index = self.real_index[real]
            farm.observe_peers(real, *self.shared.peers(self.worker, index), now)
            if self.worker != 0:  # worker 0 runs the probes; the others take its verdict
                failed = self.shared.probe_failed(index)
                if failed is not real.probe_failed:
                    farm.probe_result(real, not failed, now)

    def engine_changed(self, farm: Serverfarm) -> None:
        """After the engine ran: log every state change once, publish this worker's counters,
        and let waiting connections at a real that has room again."""
        changes = farm.drain_events()
        for change in changes:
            if isinstance(change, PanicChange):
                self.log.warning("farm_panic" if change.panic else "farm_panic_end",
                                 farm=change.farm, available=change.available,
                                 inservice=change.inservice, threshold=change.threshold)
                continue
            self.log.warning("real_state", farm=change.farm, real=change.real,
                             old=str(change.old), new=str(change.new), reason=change.reason)
        if changes and self.srv is not None:
            self.srv.changed()
        if farm.queue and not self._wake_scheduled:
            self._wake_scheduled = True
            asyncio.get_running_loop().call_soon(self._wake_waiters)
        if self.shared is None:
            return
        for real in farm.reals:
            self.shared.publish(self.worker, self.real_index[real], Row(
                load=real.active + real.pending, pending=real.pending, active=real.active,
                total=real.total,
                failed_attempts=real.failed_attempts, reassigns=real.reassigns,
                consecutive_failures=real.consecutive_failures,
                failed_clients=len(real.failed_clients), failed_until=real.retry_at or 0.0,
                probe_failed=float(real.probe_failed)))

    def _wake_waiters(self) -> None:
        """Hand freed slots to queued connections, oldest first (each pick takes its slot
        before the next waiter is looked at, so none is handed out twice)."""
        self._wake_scheduled = False
        now = asyncio.get_running_loop().time()
        for farm in self.farms.values():
            if not farm.queue:
                continue
            self.sync_peers(farm)
            while (plan := farm.next_waiter(now)) is not None:
                plan.owner.resume(plan)  # type: ignore[attr-defined]

    def _counter(self, real: Real, field: str) -> int:
        """A real's counter over every worker (the shared table), or this process's own."""
        if self.shared is None:
            return int(getattr(real, field))
        return int(self.shared.total(self.real_index[real], field))

    async def command(self, request: dict[str, Any]) -> dict[str, Any]:
        """A control socket request (JSON): show, zone, real, vserver, reload."""
        what = request.get("command")
        if what == "show":
            data = self.snapshot(asyncio.get_running_loop().time())
            if request.get("conns"):
                data["conns"] = self.connections()
                if self.multi:
                    data["conns_note"] = (f"worker 0 of {self.config.gateway.workers}: each "
                                          "worker holds its own connections")
            return {"ok": True, "data": data}
        if what == "zone" and self.srv is not None:
            return {"ok": True, "data": self.srv.zone_text()}
        if what == "real":
            return self._command_real(request)
        if what == "vserver":
            return await self._command_vserver(request)
        if what == "reload":
            return await self._command_reload()
        return {"ok": False, "error": f"unknown command {what!r}"}

    # --- operator commands ---------------------------------------------------------------

    def _command_real(self, request: dict[str, Any]) -> dict[str, Any]:
        """`xmppgw real FARM ADDRESS inservice|no-inservice [--drain S]`: written to the admin
        table (every worker applies it), applied here at once."""
        farm = self.farms.get(str(request.get("farm")))
        if farm is None:
            return {"ok": False, "error": f"no serverfarm {request.get('farm')!r} (known: "
                    f"{', '.join(self.farms) or 'none'})"}
        real = farm.find(str(request.get("real")))
        if real is None:
            return {"ok": False, "error": f"no real {request.get('real')!r} in serverfarm "
                    f"{farm.name} (known: {', '.join(r.name for r in farm.reals)})"}
        inservice, drain = bool(request.get("inservice")), request.get("drain")
        drain_wall = None if inservice or drain is None else time.time() + float(drain)
        self.admin.set_real(self.real_index[real], inservice, drain_wall)
        self.log.warning("operator_real", farm=farm.name, real=real.name,
                         inservice=inservice, drain=drain)
        self.apply_admin()
        now = asyncio.get_running_loop().time()
        return {"ok": True, "data": {"farm": farm.name, "real": real.name,
                                     "state": str(farm.state(real, now)),
                                     "conns": self._counter(real, "active")}}

    async def _command_vserver(self, request: dict[str, Any]) -> dict[str, Any]:
        vs = next((v for v in self.vservers if v.name == request.get("vserver")
                   and not v.retired), None)
        if vs is None:
            return {"ok": False, "error": f"no vserver {request.get('vserver')!r} (known: "
                    f"{', '.join(v.name for v in self.vservers if not v.retired)})"}
        inservice, drain = bool(request.get("inservice")), request.get("drain")
        drain_wall = None if inservice or drain is None else time.time() + float(drain)
        self.admin.set_vserver(self.rows.vservers[vs.name], inservice, drain_wall)
        self.log.warning("operator_vserver", vserver=vs.name, inservice=inservice, drain=drain)
        try:
            await self._apply_vservers(strict=True)
        except OSError as exc:
            return {"ok": False, "error": exc.strerror or str(exc)}
        return {"ok": True, "data": {"vserver": vs.name, "inservice": vs.server is not None}}

    def apply_admin(self) -> None:
        """Bring reals in line with the admin table, if it moved since the last look."""
        generation = self.admin.generation()
        if generation == self._admin_seen:
            return
        self._admin_seen = generation
        loop = asyncio.get_running_loop()
        now, wall = loop.time(), time.time()
        for farm in self.farms.values():
            for real in farm.reals:
                held = self.admin.real(self.real_index[real])
                if held is None:
                    continue
                inservice, drain_wall = held
                drain = None if drain_wall is None else max(0.0, drain_wall - wall)
                if inservice != real.inservice or (
                        drain is not None) != (real.drain_deadline is not None):
                    farm.set_inservice(real, inservice, now, drain)
            self.engine_changed(farm)
        for vs in self.vservers:
            held = self.admin.vserver(self.rows.vservers[vs.name])
            if held is not None and not vs.retired:
                vs.drain_deadline = None if held[1] is None else now + max(0.0, held[1] - wall)
        if self.srv is not None:
            self.srv.changed()

    async def _apply_vservers(self, strict: bool = False) -> None:
        """Listen or stop listening as the admin table and config say.

        Serialised (a tick and a command may both ask), and tracked by its own generation:
        `apply_admin` also runs before every pick, and must not make a vserver change look
        done here. A vserver that cannot listen is logged; `strict` raises it to the caller."""
        async with self._vservers_lock:
            self._vservers_seen = self.admin.generation()
            self.apply_admin()
            for vs in self.vservers:
                if vs.retired:
                    continue
                wanted = self._wanted(vs)
                if wanted and vs.server is None and not self.stopping:
                    try:
                        await self._listen(vs)
                    except OSError as exc:
                        self.log.error("vserver_listen_failed", vserver=vs.name,
                                       error=exc.strerror or str(exc))
                        if strict:
                            raise
                elif not wanted and vs.server is not None:
                    self._unlisten(vs)
                    self.log.info("vserver_out_of_service", vserver=vs.name)
        if self.srv is not None:
            self.srv.changed()

    def _admin_tick(self) -> None:
        """Every ADMIN_TICK: take up other workers' commands, close what a drain ended."""
        loop = asyncio.get_running_loop()
        self._admin_timer = loop.call_later(ADMIN_TICK, self._admin_tick)
        if self.admin.generation() != self._vservers_seen and not self._vservers_lock.locked():
            loop.create_task(self._apply_vservers())
        if any(farm.queue for farm in self.farms.values()) and not self._wake_scheduled:
            self._wake_waiters()  # slots freed by other workers show up here
        now = loop.time()
        drained = {real for farm in self.farms.values() for real in farm.reals_to_drain(now)}
        ended = {vs for vs in self.vservers if vs.drain_deadline is not None
                 and now >= vs.drain_deadline and vs.server is None}
        if not drained and not ended:
            return
        closed = 0
        for session in list(self.sessions):
            if session.drain(drained, ended):
                closed += 1
        if closed:
            self.log.warning("drained", closed=closed, reals=sorted(r.name for r in drained),
                             vservers=sorted(v.name for v in ended))
        for vs in ended:
            vs.drain_deadline = None

    # --- reload ----------------------------------------------------------------------------

    async def _command_reload(self) -> dict[str, Any]:
        """`xmppgw reload`: the file is checked here first, so a bad one is refused with the
        checker's words; with workers the master then hands the checked text to each."""
        try:
            config = configmod.load(self.config.path)
        except configmod.ConfigError as exc:
            self.log.error("reload_refused", problems=exc.problems)
            return {"ok": False, "error": "\n".join(["config refused, the old one runs on:",
                                                      *exc.problems])}
        if not self.multi:
            try:
                summary = await self.reload(config)
            except ReloadRefused as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "data": summary}
        seen = self.config_generation
        self._reloaded.clear()
        os.kill(os.getppid(), signal.SIGHUP)
        deadline = asyncio.get_running_loop().time() + RELOAD_WAIT
        while self.config_generation == seen:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return {"ok": False, "error": "the master did not hand out the new config "
                        "(see its log: reload_refused?)"}
            try:
                await asyncio.wait_for(self._reloaded.wait(), remaining)
            except TimeoutError:
                continue
        return {"ok": True, "data": self.last_reload}

    async def reload_from_slot(self) -> None:
        """With workers: SIGHUP from the master, the config it checked and resolved is in
        the slot. It is applied as it is: a worker reads no file of its own."""
        generation, config = self.slot.read()
        if generation <= self.config_generation or config is None:
            return
        try:
            await self.reload(config)
        except ReloadRefused as exc:
            self.log.error("reload_refused", error=str(exc))
        finally:
            self.config_generation = generation
            self._reloaded.set()

    async def reload(self, config: Config) -> dict[str, Any]:
        """Apply a new config to a running gateway without dropping a connection.

        Farms and reals are reconfigured in place (`Serverfarm.reconfigure`): new reals and
        weights apply to new connections, a removed real takes no new ones and its
        connections run to their end. A vserver whose address or mode changed is treated as
        removed and added. What an operator changed at run time (`real ... no-inservice`)
        stays, unless the new file changes that very setting.
        """
        if self.rows.missing(config):
            raise ReloadRefused("the new config adds more reals or vservers than the shared "
                                "tables have room for: restart the gateway instead")
        if config.gateway.workers != self.config.gateway.workers:
            self.log.warning("reload_partial", reason="a change of gateway.workers takes a "
                             "restart; the rest is applied")
        old = self.config
        self.rows.assign(config)
        now = asyncio.get_running_loop().time()
        summary: dict[str, Any] = {"reals_added": [], "reals_removed": [],
                                   "vservers_added": [], "vservers_removed": []}
        self._reload_farms(old, config, now, summary)
        self.config = config
        await self._reload_vservers(old, config, summary)
        self._index_reals()
        for farm in self.farms.values():
            self.engine_changed(farm)
        self._admin_seen = -1
        await self._apply_vservers()
        if self.worker == 0 and _probes_of(old) != _probes_of(config):  # also from none
            if self.health is not None:
                await self.health.stop()
            self.health = ProbeRunner(config.serverfarms, self.log, self.probe_verdict)
            if self.health:
                self.health.start()
            else:
                self.health = None
        await self._reload_srv(config)
        self.last_reload = summary
        self.log.warning("reloaded", config=config.path, **summary)
        return summary

    async def _reload_srv(self, config: Config) -> None:
        """`[srv]` added, changed or removed by a reload (worker 0 publishes)."""
        if self.worker != 0:
            return
        if config.srv is None:
            if self.srv is not None:
                await self.srv.stop()
                self.srv = None
        elif self.srv is not None:
            await self.srv.reload(config)
        else:
            self.srv = SrvPublisher(config, self.log, self.srv_health)
            try:
                await self.srv.start()
            except OSError as exc:
                self.srv = None
                self.log.error("srv_start_failed", error=exc.strerror or str(exc))

    def _reload_farms(self, old: Config, new: Config, now: float,
                      summary: dict[str, Any]) -> None:
        for farm_config in new.serverfarms:
            farm = self.farms.get(farm_config.name)
            if farm is None:
                self.farms[farm_config.name] = Serverfarm(farm_config, now)
                summary["reals_added"] += [f"{farm_config.name}/{r.address}"
                                           for r in farm_config.reals]
                continue
            before = {r.name for r in farm.reals}
            for real_config in farm_config.reals:
                previous = next((r for r in old.farm(farm.name).reals
                                 if r.address == real_config.address), None)
                if previous is not None and previous.inservice != real_config.inservice:
                    self.admin.clear_real(self.rows.reals[(farm.name, str(real_config.address))])
            removed = farm.reconfigure(farm_config, now)
            summary["reals_added"] += [f"{farm.name}/{r.name}" for r in farm.reals
                                       if r.name not in before]
            summary["reals_removed"] += [f"{farm.name}/{r.name}" for r in removed]
            for real in removed:
                self.admin.clear_real(self.rows.reals[(farm.name, real.name)])
        for name in [n for n in self.farms if all(f.name != n for f in new.serverfarms)]:
            farm = self.farms.pop(name)
            summary["reals_removed"] += [f"{name}/{r.name}" for r in farm.reals]

    async def _reload_vservers(self, old: Config, new: Config, summary: dict[str, Any]) -> None:
        by_name = {vs.name: vs for vs in self.vservers if not vs.retired}
        runtimes = []
        for vs_config in new.vservers:
            vs = by_name.pop(vs_config.name, None)
            if vs is not None and (vs.config.virtual, vs.config.mode) != (
                    vs_config.virtual, vs_config.mode):
                self._retire(vs)
                vs = None
            if vs is None:
                vs = VserverRuntime(vs_config)
                summary["vservers_added"].append(vs_config.name)
                self.admin.clear_vserver(self.rows.vservers[vs_config.name])
            else:
                if vs.config.inservice != vs_config.inservice:
                    self.admin.clear_vserver(self.rows.vservers[vs.name])
                vs.config = vs_config  # sessions of this vserver read it: new values apply
                vs.set_limits()
            runtimes.append(vs)
        for vs in by_name.values():
            self._retire(vs)
            summary["vservers_removed"].append(vs.name)
        self.vservers = runtimes + [vs for vs in self.vservers if vs.retired]

    def _retire(self, vs: VserverRuntime) -> None:
        """A vserver gone from the config: stop listening, keep its sessions."""
        self._unlisten(vs)
        vs.retired = True
        self.sockets.pop(vs.name, None)

    def connections(self) -> list[dict[str, Any]]:
        """This worker's client connections, oldest first, for `show conns`."""
        now = asyncio.get_running_loop().time()
        return [{"vserver": s.vserver.name, "client": s.client,
                 "real": s.real.name if s.real else None, "kind": s.conn.kind,
                 "to": s.conn.domain, "state": s.conn.state, "age": round(now - s.started, 1)}
                for s in sorted(self.sessions, key=lambda s: s.started)]

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
                     "conns": conns.get(vs.name, 0)} for vs in self.vservers if not vs.retired]
        farms = []
        for farm in self.farms.values():
            users = [vs for vs in self.vservers if vs.server is not None and (
                vs.config.serverfarm == farm.name
                or any(r.serverfarm == farm.name for r in vs.config.routes))]
            available, inservice = farm.availability()
            farms.append({
                "name": farm.name, "predictor": farm.config.predictor, "nat": farm.config.nat,
                "virtuals_inservice": len(users),
                "panic": farm.panic, "available": available, "inservice": inservice,
                "panic_threshold": farm.config.panic_threshold,
                "queue": len(farm.queue), "queued_total": farm.queued_total,
                "queue_timeouts": farm.queue_timeouts,
                "reals": [{"address": real.name, "weight": real.config.weight,
                           "state": str(farm.state(real, now)),
                           "conns": self._counter(real, "active"),
                           "connecting": real.connecting,
                           "max_connecting": real.config.max_connecting
                           or farm.config.max_connecting,
                           "total": self._counter(real, "total"),
                           "failed_attempts": self._counter(real, "failed_attempts"),
                           "reassigns": self._counter(real, "reassigns"),
                           "state_age": round(now - real.last_change, 3),
                           "probes": self.health.describe(farm.name, real.name, now, wall)
                           if self.health is not None else []}
                          for real in farm.reals],
            })
        return {"vservers": vservers, "serverfarms": farms}

    async def stop(self, graceful: bool = False) -> None:
        """Stop accepting, then close every live connection (both legs).

        `graceful` (SIGTERM): streams still in cleartext get `<system-shutdown/>` (RFC 6120
        §4.9.3.21: the client reconnects, and the SRV records or the other gateway take
        it); the opaque ones get up to `shutdown_timeout` seconds to end on their own."""
        self.stopping = True
        for timer in (self._sweep, self._admin_timer):
            if timer is not None:
                timer.cancel()
        if self.health is not None:
            await self.health.stop()
            self.health = None
        if self.control is not None:
            await self.control.stop()
        if self._metrics_server is not None:
            server, self._metrics_server = self._metrics_server, None
            await asyncio.get_running_loop().run_in_executor(None, server.shutdown)
            server.server_close()
        for vs in self.vservers:
            if vs.server is not None:
                vs.server.close()
        if self.srv is not None and graceful:
            self.srv.refresh()  # the gateway's own targets leave the SRV answers first:
            # clients told <system-shutdown/> find the reals (or the other gateway) there
        if graceful and self.sessions:
            await self._wind_down(self.config.gateway.shutdown_timeout)
        if self.srv is not None:
            await self.srv.stop()
            self.srv = None
        for session in list(self.sessions):
            session.close()
        for orphan in list(self.orphans):
            orphan.cancel_orphan()
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

    async def _wind_down(self, timeout: float) -> None:
        told = sum(session.system_shutdown() for session in list(self.sessions))
        self.log.info("shutting_down", sessions=len(self.sessions), told_system_shutdown=told,
                      wait=timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.sessions and loop.time() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
        if self.sessions:
            self.log.warning("shutdown_timeout", closing=len(self.sessions), waited=timeout)


class ReloadRefused(Exception):
    """A config that checks out but cannot be applied to the running gateway."""


def _probes_of(config: Config) -> list[Any]:
    return [(f.name, f.probes, [(r.address, r.probes) for r in f.reals])
            for f in config.serverfarms]


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
