"""The running gateway, one worker's: wiring and lifecycle.

What each part does, and where it lives:
- `Gateway` (here): builds the farms and the parts below, starts and stops them (control
  socket, metrics listener, probes, SRV publisher, listeners, shutdown with
  `<system-shutdown/>`), and is the `SessionHost` the sessions talk to (`net/host.py`):
  worker sync through the shared table, state-change logging, waking queued connections;
- `net/listeners.py`: the vservers at run time and their listening sockets;
- `net/operator.py`: control commands, the admin table, drains;
- `net/reload.py`: what a new config changes (`diff`, pure) and applying it;
- `net/view.py`: the typed snapshot `show`, `--json` and the metrics read.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from xmppgw import notify
from xmppgw.config import Config
from xmppgw.control.server import ControlServer
from xmppgw.control.snapshot import GatewaySnapshot
from xmppgw.dns.publisher import SrvPublisher
from xmppgw.dns.records import Health
from xmppgw.health.runner import ProbeRunner
from xmppgw.health.state import RealVerdict
from xmppgw.metrics import Metrics
from xmppgw.net import reload as reloading
from xmppgw.net.listeners import Listeners, VserverRuntime, listen_socket
from xmppgw.net.operator import Operator
from xmppgw.net.reload import ReloadRefused
from xmppgw.net.shared import RowWriter, WorkerShared, make_shared
from xmppgw.net.splice import AVAILABLE as SPLICE
from xmppgw.net.splice import PipePool
from xmppgw.net.view import take_snapshot
from xmppgw.slb.farm import PanicChange, Real, Serverfarm

__all__ = ["Gateway", "ReloadRefused", "VserverRuntime", "WorkerShared", "listen_socket",
           "make_shared"]  # the last five: kept importable from here

KEEPALIVE_SWEEP = 5.0  # seconds between passes that give upstream legs their keepalive


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
        self._rows_out = RowWriter(shared.table, worker) if shared is not None else None
        self.admin, self.rows, self.slot = own.admin, own.rows, own.slot
        self.multi = shared is not None
        # The clock the sessions feed the engine. Kept: on CPython 3.11
        # asyncio.get_running_loop() makes a getpid(2) system call each time (its check for
        # a fork), and sync_peers runs once per stream open with workers.
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self.farms = {f.name: Serverfarm(f, now) for f in config.serverfarms}
        self.real_index: dict[Real, int] = {}
        self.index_reals()
        self.listeners = Listeners(self, config, log, reuse_port=self.multi, sockets=sockets)
        self.operator = Operator(self)
        self.config_generation = self.slot.generation()
        self.last_reload: dict[str, Any] = {}
        self.stopping = False
        self.sessions: set[Any] = set()  # ClientSession
        self.orphans: set[Any] = set()  # hedge losers still owing a verdict (UpstreamLeg)
        self._wake_scheduled = False
        self.control: ControlServer | None = None
        # Control commands that own their connection (`takeover`, added by net/workers.py)
        self.conversations: dict[str, Any] = {}
        self.health: ProbeRunner | None = None  # worker 0 only: reals are probed once
        self.srv: SrvPublisher | None = None  # worker 0 only: the SRV records ([srv])
        self._sweep: asyncio.TimerHandle | None = None
        # Zero-copy relay for opaque streams where the platform has os.splice.
        self.pipes = PipePool() if config.gateway.relay == "splice" and SPLICE else None
        self.metrics: Metrics | None = Metrics() if config.gateway.metrics else None
        self._metrics_server: Any = None

    @property
    def vservers(self) -> list[VserverRuntime]:
        """Every vserver at run time, the retired ones included (`listeners.vservers`)."""
        return self.listeners.vservers

    def index_reals(self) -> None:
        self.real_index = {real: self.rows.reals[(farm.name, real.name)]
                           for farm in self.farms.values() for real in farm.reals}

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, handover: bool = False) -> None:
        """Listen on every vserver in service; a vserver that cannot bind stops the start.

        `handover` (`xmppgw run --takeover`, net/takeover.py): the control socket is bound
        beside the old gateway's (`<path>.takeover-<pid>`, renamed over it by
        `take_control_path`), and the metrics and SRV listeners wait for `start_side`: the
        old process holds their ports until it lets go."""
        if self.config.gateway.control_socket and self.worker == 0:
            path = self.config.gateway.control_socket
            if handover:
                path = f"{path}.takeover-{os.getpid()}"
            self.control = ControlServer(path, self.operator.command, self.log,
                                         self.config.gateway.control_group,
                                         self.conversations)
            try:
                await self.control.start()
            except OSError as exc:
                raise OSError(exc.errno, f"control socket: {exc.strerror or exc}") from None
        if not self.config.gateway.domains:
            self.log.warning("no_domains", message="gateway.domains is empty: streams to any "
                             "domain are routed (as an IOS SLB would)")
        self.operator.apply_admin()  # a respawned worker takes up what the operator changed
        try:
            await self.listeners.start(self.operator.wanted)
        except OSError:
            await self.stop()
            raise
        self._sweep = asyncio.get_running_loop().call_later(KEEPALIVE_SWEEP,
                                                             self._keepalive_sweep)
        self.operator.start()
        if self.worker != 0:
            return
        await self.start_probes(self.config)
        if not handover:
            await self.start_side()

    def take_control_path(self) -> None:
        """After a handover: our control socket takes the configured path (rename(2) over
        the old gateway's file, atomic)."""
        if self.control is not None and self.config.gateway.control_socket:
            self.control.move_to(self.config.gateway.control_socket)

    async def start_side(self, fatal: bool = True) -> list[OSError]:
        """The metrics and SRV listeners (worker 0). One that cannot listen: with `fatal`
        (start-up), OSError after stopping the gateway; without (after a takeover, where the
        adopted listeners are the only ones serving and must stay up) the other still
        starts, and the errors are returned."""
        errors: list[OSError] = []
        for start in self._sides():
            try:
                await start()
            except OSError as exc:
                if fatal:
                    await self.stop()
                    raise
                errors.append(exc)
        return errors

    def _sides(self) -> list[Callable[[], Awaitable[None]]]:
        """What `start_side` starts, in order: the metrics listener, then the SRV publisher,
        each only if the config has it."""
        config = self.config
        sides: list[Callable[[], Awaitable[None]]] = []
        if config.gateway.metrics is not None:
            async def metrics() -> None:
                self._start_metrics(config.gateway.metrics)
            sides.append(metrics)
        if config.srv is not None:
            sides.append(lambda: self._start_srv(config))
        return sides

    async def stop_side(self) -> None:
        """Close the SRV and metrics listeners and stop the probes (a handover: the new
        process takes them over); the streams go on.

        The SRV publisher first, before any await: stopping as it is (listening nowhere),
        this gateway must not publish records without its own targets; the new process
        publishes its own set."""
        if self.srv is not None:
            srv, self.srv = self.srv, None
            await srv.stop()
        if self._metrics_server is not None:
            server, self._metrics_server = self._metrics_server, None
            await asyncio.get_running_loop().run_in_executor(None, server.shutdown)
            server.server_close()
        if self.health is not None:
            await self.health.stop()
            self.health = None

    async def start_probes(self, config: Config) -> None:
        """(Re)start the active probes of `config` (worker 0; none if no farm has any)."""
        if self.health is not None:
            await self.health.stop()
        self.health = ProbeRunner(config.serverfarms, self.log, self.probe_verdict)
        if self.health:
            self.health.start()
        else:
            self.health = None

    async def _start_srv(self, config: Config) -> None:
        """Start publishing the SRV records of `config` (worker 0); OSError if it cannot."""
        self.srv = SrvPublisher(config, self.log, self.srv_health)
        try:
            await self.srv.start()
        except OSError:
            self.srv = None
            raise

    async def reload_srv(self, config: Config, action: str | None) -> None:
        """`[srv]` added, changed or removed by a reload (`ReloadPlan.srv`, worker 0)."""
        if action in (None, "stop"):
            if self.srv is not None:
                await self.srv.stop()
                self.srv = None
        elif self.srv is not None:
            await self.srv.reload(config)
        else:  # added, or it could not start before
            try:
                await self._start_srv(config)
            except OSError as exc:
                self.log.error("srv_start_failed", error=exc.strerror or str(exc))

    def _start_metrics(self, address: Any) -> None:
        from xmppgw.metrics import serve

        loop = asyncio.get_running_loop()

        def snapshot() -> GatewaySnapshot:
            """Called on the HTTP thread: the engine is read on the loop's own thread."""
            done: concurrent.futures.Future[GatewaySnapshot] = concurrent.futures.Future()
            loop.call_soon_threadsafe(lambda: done.set_result(self.snapshot(loop.time())))
            return done.result(timeout=5)

        try:
            self._metrics_server = serve(address.host, address.port, snapshot)
        except OSError as exc:
            raise OSError(exc.errno, f"metrics: cannot listen on {address}: "
                          f"{exc.strerror}") from None
        self.log.info("metrics_listening", address=str(address))

    async def stop(self, graceful: bool = False) -> None:
        """Stop accepting, then close every live connection (both legs).

        `graceful` (SIGTERM): streams still in cleartext get `<system-shutdown/>` (RFC 6120
        §4.9.3.21: the client reconnects, and the SRV records or the other gateway take
        it); the opaque ones get up to `shutdown_timeout` seconds to end on their own."""
        self.stopping = True
        if self._sweep is not None:
            self._sweep.cancel()
        self.operator.stop()
        if self.health is not None:
            await self.health.stop()
            self.health = None
        if self.control is not None:
            await self.control.stop()
        if self._metrics_server is not None:
            server, self._metrics_server = self._metrics_server, None
            await asyncio.get_running_loop().run_in_executor(None, server.shutdown)
            server.server_close()
        self.listeners.close()
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
        await self.listeners.wait_closed()
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

    # --- reload ----------------------------------------------------------------------------

    async def reload(self, config: Config) -> dict[str, Any]:
        """Apply a new config to a running gateway without dropping a connection (see
        `net/reload.py`); the summary is what `xmppgw reload` prints."""
        if self.rows.missing(config):
            raise ReloadRefused("the new config adds more reals or vservers than the shared "
                                "tables have room for: restart the gateway instead")
        plan = reloading.diff(self.config, config)
        if plan.workers_changed:
            self.log.warning("reload_partial", reason="a change of gateway.workers takes a "
                             "restart; the rest is applied")
        self.rows.assign(config)
        if not self.multi:  # the one process is systemd's main PID (with workers: the master)
            notify.reloading()
        try:
            await reloading.apply(self, plan, config, asyncio.get_running_loop().time())
        finally:
            if not self.multi:
                notify.ready()
        summary: dict[str, Any] = plan.summary()
        self.last_reload = summary
        self.log.warning("reloaded", config=config.path, **summary)
        return summary

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
            self.operator.reloaded()

    # --- what the sessions, probes and SRV publisher call (net/host.py) -------------------

    def snapshot(self, now: float) -> GatewaySnapshot:
        """Every vserver, farm and real (for show, --json and the metrics scrape)."""
        return take_snapshot(self, now)

    def srv_health(self) -> Health:
        """What the SRV records are built from: the vservers listening now, and each real's
        state as every worker sees it (sync_peers: FAILED marks of the other workers)."""
        now = asyncio.get_running_loop().time()
        for farm in self.farms.values():
            self.sync_peers(farm)
        states = {(farm.name, real.name): farm.state(real, now)
                  for farm in self.farms.values() for real in farm.reals}
        up = () if self.stopping else (vs.name for vs in self.listeners.listening())
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
        self.operator.apply_admin()  # if an operator command reached worker 0 a moment ago
        now = self._loop.time()
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
            self._loop.call_soon(self._wake_waiters)
        if self._rows_out is None:  # one process: nobody else reads our counters
            return
        # Only rows whose counters moved since the last write reach the mapping (RowWriter);
        # the others would be the same bytes again. Still before this callback returns, so
        # the other workers see every change before this loop iteration ends.
        write, index = self._rows_out.write, self.real_index
        for real in farm.reals:
            write(index[real], (  # the fields of shared.Row, in order
                real.active + real.pending, real.pending, real.active, real.total,
                real.failed_attempts, real.reassigns, real.consecutive_failures,
                len(real.failed_clients), real.retry_at or 0.0, float(real.probe_failed)))

    def _wake_waiters(self) -> None:
        """Hand freed slots to queued connections, oldest first (each pick takes its slot
        before the next waiter is looked at, so none is handed out twice)."""
        self._wake_scheduled = False
        now = self._loop.time()
        for farm in self.farms.values():
            if not farm.queue:
                continue
            self.sync_peers(farm)
            while (plan := farm.next_waiter(now)) is not None:
                plan.owner.resume(plan)  # type: ignore[attr-defined]

    def wake_waiters_if_queued(self) -> None:
        """A farm has connections queued: hand them what freed up (also elsewhere: slots
        that other workers freed show up only here)."""
        if any(farm.queue for farm in self.farms.values()) and not self._wake_scheduled:
            self._wake_waiters()

    def counter(self, real: Real, field: str) -> int:
        """A real's counter over every worker (the shared table), or this process's own."""
        if self.shared is None:
            return int(getattr(real, field))
        return int(self.shared.total(self.real_index[real], field))
