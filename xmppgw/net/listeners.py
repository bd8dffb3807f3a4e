"""The vservers at run time and their listening sockets.

`Listeners` holds one `VserverRuntime` per vserver (plus the retired ones, gone from the
config at a reload, whose sessions run to their end) and starts or stops taking connections
for each. Whether a vserver should listen is the operator's and the config's word
(`net/operator.py` decides, and calls `listen` / `unlisten`).
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xmppgw.config import Keepalive, Limits, VserverConfig
from xmppgw.net.session import ClientSession
from xmppgw.net.sockopts import apply_freebind, apply_keepalive
from xmppgw.slb.limits import Admission

if TYPE_CHECKING:
    from collections.abc import Callable

    from xmppgw.config import Config
    from xmppgw.net.host import SessionHost

LISTEN_BACKLOG = 1024


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


class Listeners:
    """Every vserver of one worker. With workers the master binds the listening sockets
    (`sockets`, by vserver name) before forking; a vserver without one binds its own."""

    def __init__(self, host: SessionHost, config: Config, log: Any, reuse_port: bool,
                 sockets: dict[str, socket.socket] | None = None) -> None:
        self.host = host  # what the sessions accepted here talk to
        self.log = log
        self.reuse_port = reuse_port
        self.sockets = sockets or {}
        self.vservers = [VserverRuntime(v) for v in config.vservers]

    def live(self) -> list[VserverRuntime]:
        """The vservers of the current config (not the retired ones)."""
        return [vs for vs in self.vservers if not vs.retired]

    def find(self, name: Any) -> VserverRuntime | None:
        return next((vs for vs in self.live() if vs.name == name), None)

    def listening(self) -> list[VserverRuntime]:
        return [vs for vs in self.vservers if vs.server is not None]

    async def start(self, wanted: Callable[[VserverRuntime], bool]) -> None:
        """Listen on every vserver `wanted` says is in service; OSError if one cannot."""
        for vs in self.vservers:
            if not wanted(vs):
                self.log.info("vserver_out_of_service", vserver=vs.name)
                continue
            await self.listen(vs)

    async def listen(self, vs: VserverRuntime) -> None:
        """Start taking connections for a vserver: the master's socket when it bound one,
        else our own (with workers, one more SO_REUSEPORT socket in the vserver's group)."""
        sock = self.sockets.pop(vs.name, None) or listen_socket(
            vs.config, self.host.config.gateway.keepalive, reuse_port=self.reuse_port)
        host, loop = self.host, asyncio.get_running_loop()
        # The loop is handed to each session: asyncio.get_running_loop() costs a getpid(2)
        # system call per call on Python 3.11 (its check for a fork).
        vs.server = await loop.create_server(
            lambda: ClientSession(host, vs, loop), sock=sock, backlog=LISTEN_BACKLOG)
        self.log.info("vserver_listening", vserver=vs.name, virtual=str(vs.config.virtual),
                      mode=vs.config.mode, serverfarm=vs.config.serverfarm)

    def unlisten(self, vs: VserverRuntime) -> None:
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

    def reconfigure(self, config: Config, moved: set[str]) -> None:
        """A reload: kept vservers take their new config (their sessions read it), `moved`
        ones (virtual or mode changed) and those gone from `config` are retired, new ones
        and the moved ones get a runtime that listens once `operator.apply_vservers` says."""
        by_name = {vs.name: vs for vs in self.live()}
        runtimes = []
        for vs_config in config.vservers:
            vs = by_name.pop(vs_config.name, None)
            if vs is not None and vs_config.name in moved:
                self._retire(vs)
                vs = None
            if vs is None:
                vs = VserverRuntime(vs_config)
            else:
                vs.config = vs_config
                vs.set_limits()
            runtimes.append(vs)
        for vs in by_name.values():
            self._retire(vs)
        self.vservers = runtimes + [vs for vs in self.vservers if vs.retired]

    def _retire(self, vs: VserverRuntime) -> None:
        """A vserver gone from the config: stop listening, keep its sessions."""
        self.unlisten(vs)
        vs.retired = True
        self.sockets.pop(vs.name, None)

    def close(self) -> None:
        """Shutdown, first step: accept nothing more."""
        for vs in self.vservers:
            if vs.server is not None:
                vs.server.close()

    async def wait_closed(self) -> None:
        for vs in self.vservers:
            if vs.server is not None:
                await vs.server.wait_closed()
                vs.server = None


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
        if vserver.freebind:  # a VRRP address the host may not hold yet
            apply_freebind(sock)
        sock.bind((vserver.virtual.host, vserver.virtual.port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"vserver {vserver.name}: cannot listen on "
                      f"{vserver.virtual}: {exc.strerror}") from None
    return sock
