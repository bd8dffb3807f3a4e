"""The running gateway: one listener per vserver in service, the farms, the live sessions."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any

from xmppgw.config import Config, VserverConfig
from xmppgw.control.server import ControlServer
from xmppgw.net.session import ClientSession
from xmppgw.slb.farm import Serverfarm

LISTEN_BACKLOG = 1024


@dataclass(slots=True)
class VserverRuntime:
    config: VserverConfig
    server: asyncio.AbstractServer | None = None

    @property
    def name(self) -> str:
        return self.config.name


class Gateway:
    def __init__(self, config: Config, log: Any) -> None:
        self.config = config
        self.log = log
        now = asyncio.get_running_loop().time()  # the clock the sessions feed the engine
        self.farms = {f.name: Serverfarm(f, now) for f in config.serverfarms}
        self.vservers = [VserverRuntime(v) for v in config.vservers]
        self.sessions: set[ClientSession] = set()
        self.control: ControlServer | None = None

    async def start(self) -> None:
        """Listen on every vserver in service; a vserver that cannot bind stops the start."""
        loop = asyncio.get_running_loop()
        if self.config.gateway.control_socket:
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
            host, port = vs.config.virtual.host, vs.config.virtual.port
            family = socket.AF_INET6 if vs.config.virtual.family_v6 else socket.AF_INET
            try:
                vs.server = await loop.create_server(
                    lambda vs=vs: ClientSession(self, vs), host, port, family=family,
                    reuse_address=True, backlog=LISTEN_BACKLOG)
            except OSError as exc:
                await self.stop()
                raise OSError(exc.errno, f"vserver {vs.name}: cannot listen on "
                              f"{vs.config.virtual}: {exc.strerror}") from None
            self.log.info("vserver_listening", vserver=vs.name, virtual=str(vs.config.virtual),
                          mode=vs.config.mode, serverfarm=vs.config.serverfarm)

    def log_state_changes(self, farm: Serverfarm) -> None:
        """Every state change of a real is logged once, by whoever drove the engine."""
        for change in farm.drain_events():
            self.log.warning("real_state", farm=change.farm, real=change.real,
                             old=str(change.old), new=str(change.new), reason=change.reason)

    def command(self, request: dict[str, Any]) -> dict[str, Any]:
        """A control socket request; `show` is all there is so far."""
        if request.get("command") == "show":
            return {"ok": True, "data": self.snapshot(asyncio.get_running_loop().time())}
        return {"ok": False, "error": f"unknown command {request.get('command')!r}"}

    def snapshot(self, now: float) -> dict[str, Any]:
        """The state of every vserver, farm and real as plain data (for show and --json)."""
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
                           "state": str(farm.state(real, now)), "conns": real.active,
                           "total": real.total, "failed_attempts": real.failed_attempts,
                           "reassigns": real.reassigns,
                           "state_age": round(now - real.last_change, 3)}
                          for real in farm.reals],
            })
        return {"vservers": vservers, "serverfarms": farms}

    async def stop(self) -> None:
        """Stop accepting, then close every live connection (both legs)."""
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
