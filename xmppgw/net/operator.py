"""The operator's hand on a running gateway: control commands, the admin table, drains.

`real FARM ADDRESS inservice|no-inservice [--drain S]` and `vserver NAME ...` are written to
the shared admin table (worker 0 serves the control socket; every worker polls the table
every ADMIN_TICK and applies what moved). A drain's end is held as wall-clock time, since the
workers' loop clocks need not agree; each worker turns it into its own clock on reading
(`drain_until`, `drain_left`). `show`, `zone` and `reload` are answered here too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from xmppgw import config as configmod
from xmppgw.net.reload import ReloadRefused
from xmppgw.net.view import take_snapshot

if TYPE_CHECKING:
    from xmppgw.net.core import GatewayCore
    from xmppgw.net.listeners import VserverRuntime

ADMIN_TICK = 0.25  # seconds between looks at operator commands (other workers) and drains
RELOAD_WAIT = 10.0  # how long `reload` waits for the master to hand this worker the config


def drain_until(inservice: bool, drain: Any, wall: float) -> float | None:
    """The wall-clock end of a `no-inservice --drain S` (None: no drain, or inservice)."""
    return None if inservice or drain is None else wall + float(drain)


def same_deadline(a: float | None, b: float | None) -> bool:
    """Two drain deadlines (loop clock) that are the same drain: both none, or within an
    ADMIN_TICK (the wall-clock end is turned into loop time again at each look)."""
    if a is None or b is None:
        return a is b
    return abs(a - b) < ADMIN_TICK


def drain_left(until: float | None, wall: float) -> float | None:
    """Seconds left of a drain ending at wall-clock `until` (0 once past; None: no drain)."""
    return None if until is None else max(0.0, until - wall)


class Operator:
    def __init__(self, gateway: GatewayCore) -> None:
        self.gateway = gateway
        self._admin_seen = -1
        self._vservers_seen = -1
        self._vservers_lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._reloaded = asyncio.Event()

    # --- commands (the control socket, worker 0) -------------------------------------------

    async def command(self, request: dict[str, Any]) -> dict[str, Any]:
        """A control socket request (JSON): show, zone, real, vserver, reload."""
        gw = self.gateway
        what = request.get("command")
        if what == "show":
            snapshot = take_snapshot(gw, asyncio.get_running_loop().time(),
                                     conns=bool(request.get("conns")))
            return {"ok": True, "data": snapshot.to_json()}
        if what == "zone" and gw.srv is not None:
            return {"ok": True, "data": gw.srv.zone_text()}
        if what == "real":
            return self._command_real(request)
        if what == "vserver":
            return await self._command_vserver(request)
        if what == "reload":
            return await self._command_reload()
        return {"ok": False, "error": f"unknown command {what!r}"}

    def _command_real(self, request: dict[str, Any]) -> dict[str, Any]:
        """`xmppgw real FARM ADDRESS inservice|no-inservice [--drain S]`: written to the admin
        table (every worker applies it), applied here at once."""
        gw = self.gateway
        farm = gw.farms.get(str(request.get("farm")))
        if farm is None:
            return {"ok": False, "error": f"no serverfarm {request.get('farm')!r} (known: "
                    f"{', '.join(gw.farms) or 'none'})"}
        real = farm.find(str(request.get("real")))
        if real is None:
            return {"ok": False, "error": f"no real {request.get('real')!r} in serverfarm "
                    f"{farm.name} (known: {', '.join(r.name for r in farm.reals)})"}
        inservice, drain = bool(request.get("inservice")), request.get("drain")
        gw.admin.set_real(gw.real_index[real], inservice,
                          drain_until(inservice, drain, time.time()))
        gw.log.warning("operator_real", farm=farm.name, real=real.name,
                       inservice=inservice, drain=drain)
        self.apply_admin()
        now = asyncio.get_running_loop().time()
        return {"ok": True, "data": {"farm": farm.name, "real": real.name,
                                     "state": str(farm.state(real, now)),
                                     "conns": gw.counter(real, "active")}}

    async def _command_vserver(self, request: dict[str, Any]) -> dict[str, Any]:
        gw = self.gateway
        vs = gw.listeners.find(request.get("vserver"))
        if vs is None:
            return {"ok": False, "error": f"no vserver {request.get('vserver')!r} (known: "
                    f"{', '.join(v.name for v in gw.listeners.live())})"}
        inservice, drain = bool(request.get("inservice")), request.get("drain")
        gw.admin.set_vserver(gw.rows.vservers[vs.name], inservice,
                             drain_until(inservice, drain, time.time()))
        gw.log.warning("operator_vserver", vserver=vs.name, inservice=inservice, drain=drain)
        try:
            await self.apply_vservers(strict=True)
        except OSError as exc:
            return {"ok": False, "error": exc.strerror or str(exc)}
        return {"ok": True, "data": {"vserver": vs.name, "inservice": vs.server is not None}}

    async def _command_reload(self) -> dict[str, Any]:
        """`xmppgw reload`: the file is checked here first, so a bad one is refused with the
        checker's words; with workers the master then hands the checked text to each."""
        gw = self.gateway
        try:
            config = configmod.load(gw.config.path)
        except configmod.ConfigError as exc:
            gw.log.error("reload_refused", problems=exc.problems)
            return {"ok": False, "error": "\n".join(["config refused, the old one runs on:",
                                                      *exc.problems])}
        if not gw.multi:
            try:
                summary = await gw.reload(config)
            except ReloadRefused as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "data": summary, "config": str(gw.config.path)}
        seen = gw.config_generation
        self._reloaded.clear()
        os.kill(os.getppid(), signal.SIGHUP)
        deadline = asyncio.get_running_loop().time() + RELOAD_WAIT
        while gw.config_generation == seen:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return {"ok": False, "error": "the master did not hand out the new config "
                        "(see its log: reload_refused?)"}
            try:
                await asyncio.wait_for(self._reloaded.wait(), remaining)
            except TimeoutError:
                continue
        return {"ok": True, "data": gw.last_reload, "config": str(gw.config.path)}

    def reloaded(self) -> None:
        """A reload from the master's slot ended (applied or refused): `reload` may answer."""
        self._reloaded.set()

    # --- the admin table -----------------------------------------------------------------

    def wanted(self, vs: VserverRuntime) -> bool:
        """In service: the operator's last word if any, else the config's."""
        gw = self.gateway
        held = gw.admin.vserver(gw.rows.vservers[vs.name])
        return vs.config.inservice if held is None else held[0]

    def forget_admin(self) -> None:
        """After a reload: apply every override again at the next look (new reals)."""
        self._admin_seen = -1

    def apply_admin(self) -> None:
        """Bring reals and vserver drains in line with the admin table, if it moved since
        the last look."""
        gw = self.gateway
        generation = gw.admin.generation()
        if generation == self._admin_seen:
            return
        self._admin_seen = generation
        now, wall = asyncio.get_running_loop().time(), time.time()
        for farm in gw.farms.values():
            for real in farm.reals:
                held = gw.admin.real(gw.real_index[real])
                if held is None:
                    continue
                inservice, until = held
                drain = drain_left(until, wall)
                if inservice != real.inservice or not same_deadline(
                        None if drain is None else now + drain, real.drain_deadline):
                    farm.set_inservice(real, inservice, now, drain)  # a new drain replaces
            gw.engine_changed(farm)
        for vs in gw.listeners.live():
            held = gw.admin.vserver(gw.rows.vservers[vs.name])
            if held is not None:
                left = drain_left(held[1], wall)
                vs.drain_deadline = None if left is None else now + left
        if gw.srv is not None:
            gw.srv.changed()

    async def apply_vservers(self, strict: bool = False) -> None:
        """Listen or stop listening as the admin table and config say.

        Serialised (a tick and a command may both ask), and tracked by its own generation:
        `apply_admin` also runs before every pick, and must not make a vserver change look
        done here. A vserver that cannot listen is logged; `strict` raises it to the caller."""
        gw = self.gateway
        async with self._vservers_lock:
            self._vservers_seen = gw.admin.generation()
            self.apply_admin()
            for vs in gw.listeners.live():
                wanted = self.wanted(vs)
                if wanted and vs.server is None and not gw.stopping:
                    try:
                        await gw.listeners.listen(vs)
                    except OSError as exc:
                        gw.log.error("vserver_listen_failed", vserver=vs.name,
                                     error=exc.strerror or str(exc))
                        if strict:
                            raise
                elif not wanted and vs.server is not None:
                    gw.listeners.unlisten(vs)
                    gw.log.info("vserver_out_of_service", vserver=vs.name)
        if gw.srv is not None:
            gw.srv.changed()

    # --- the tick: other workers' commands, and drains -------------------------------------

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(ADMIN_TICK, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _tick(self) -> None:
        """Every ADMIN_TICK: take up other workers' commands, close what a drain ended."""
        gw = self.gateway
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(ADMIN_TICK, self._tick)
        if gw.admin.generation() != self._vservers_seen and not self._vservers_lock.locked():
            loop.create_task(self.apply_vservers())
        gw.wake_waiters_if_queued()  # slots freed by other workers show up here
        now = loop.time()
        drained = {real for farm in gw.farms.values() for real in farm.reals_to_drain(now)}
        ended = {vs for vs in gw.listeners.vservers if vs.drain_deadline is not None
                 and now >= vs.drain_deadline and vs.server is None}
        if not drained and not ended:
            return
        closed = 0
        for session in list(gw.sessions):
            if session.drain(drained, ended):
                closed += 1
        if closed:
            gw.log.warning("drained", closed=closed, reals=sorted(r.name for r in drained),
                           vservers=sorted(v.name for v in ended))
        for vs in ended:
            vs.drain_deadline = None
