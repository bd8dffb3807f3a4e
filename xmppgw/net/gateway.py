"""The running gateway: one listener per vserver in service, the farms, the live sessions."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any

from xmppgw.config import Config, VserverConfig
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

    async def start(self) -> None:
        """Listen on every vserver in service; a vserver that cannot bind stops the start."""
        loop = asyncio.get_running_loop()
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

    async def stop(self) -> None:
        """Stop accepting, then close every live connection (both legs)."""
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
