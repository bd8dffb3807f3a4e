"""Proxies, their connections and the two links of each, and the toxic collections.

Client <-> proxy listener <-> upstream. Each accepted client gets a `Connection` with two
`Link`s: "upstream" (client -> upstream) and "downstream" (upstream -> client). A link's reader
task reads its source into an inbox (bounded, so TCP back-pressure holds); its pump task feeds
each chunk through the toxic stages of its direction and writes the result to its destination.
When the source ends or a toxic closes the link, the destination is closed entirely (as the Go
server does: no half-close), which the other link then sees as the end of its own source.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections import deque
from typing import Any

from chaos.toxiproxy.toxics import Chunk, Stage, ToxicSpec, make_stage

log = logging.getLogger("chaos.toxiproxy")

READ_SIZE = 32 * 1024           # io.Copy's buffer
INBOX_LIMIT = 4 * 1024 * 1024   # bytes read ahead of the toxics before reading pauses
DIRECTIONS = ("upstream", "downstream")


class ApiError(Exception):
    """An error with the HTTP status Toxiproxy answers it with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class AlreadyStarted(Exception):
    pass


# -- addresses ----------------------------------------------------------------------------------

def split_host_port(addr: str) -> tuple[str, str]:
    """Go's net.SplitHostPort, with its error texts."""
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0:
            raise ApiError(f"address {addr}: missing ']' in address", 500)
        host, rest = addr[1:end], addr[end + 1:]
        if not rest.startswith(":"):
            raise ApiError(f"address {addr}: missing port in address", 500)
        return host, rest[1:]
    if ":" not in addr:
        raise ApiError(f"address {addr}: missing port in address", 500)
    host, port = addr.rsplit(":", 1)
    if ":" in host:
        raise ApiError(f"address {addr}: too many colons in address", 500)
    return host, port


def parse_port(port: str, addr: str) -> int:
    if port == "":
        return 0
    if port.isdigit():
        value = int(port)
        if value > 65535:
            raise ApiError(f"address {addr}: invalid port", 500)
        return value
    try:
        return socket.getservbyname(port, "tcp")
    except OSError:
        raise ApiError(f"lookup tcp/{port}: unknown port", 500) from None


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def resolve_listen(addr: str) -> tuple[str, int, str]:
    """(IP or "" for every interface, port, Go's ResolveTCPAddr(addr).String())."""
    if addr == "":  # Go: every interface, a port from the kernel
        return "", 0, ":0"
    host, port_text = split_host_port(addr)
    port = parse_port(port_text, addr)
    if host == "":
        return "", port, join_host_port("", port)
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError:
            raise ApiError(f"lookup {host}: no such host", 500) from None
        v4 = [info for info in infos if info[0] == socket.AF_INET]
        ip = str((v4 or infos)[0][4][0])
    return ip, port, join_host_port(ip, port)


def open_listener(host: str, port: int, listen: str) -> socket.socket:
    """A listening socket as net.Listen makes one (SO_REUSEADDR; "" is every interface)."""
    if host == "":
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            host = "::"
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            host = "0.0.0.0"
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise ApiError(f"listen tcp {listen}: bind: {reason}", 500) from None
    sock.setblocking(False)
    return sock


# -- toxics of a proxy --------------------------------------------------------------------------

class ToxicCollection:
    """The toxics of one proxy, in two chains (upstream, downstream), and the live links."""

    def __init__(self) -> None:
        self.chain: dict[str, list[ToxicSpec]] = {d: [] for d in DIRECTIONS}
        self.links: set[Link] = set()

    def all(self) -> list[ToxicSpec]:
        return self.chain["upstream"] + self.chain["downstream"]

    def find(self, name: str) -> ToxicSpec | None:
        for spec in self.all():
            if spec.name == name:
                return spec
        return None

    def _links(self, direction: str) -> list[Link]:
        return [link for link in self.links if link.direction == direction]

    def add(self, spec: ToxicSpec) -> None:
        self.chain[spec.direction] = self.chain[spec.direction] + [spec]
        for link in self._links(spec.direction):
            link.toxic_added(spec)

    def updated(self, spec: ToxicSpec) -> None:
        for link in self._links(spec.direction):
            link.toxic_updated(spec)

    def remove(self, spec: ToxicSpec) -> None:
        self.chain[spec.direction] = [s for s in self.chain[spec.direction] if s is not spec]
        for link in self._links(spec.direction):
            link.toxic_removed(spec)

    def reset(self) -> None:
        for spec in self.all():
            self.remove(spec)


# -- proxies ------------------------------------------------------------------------------------

class Proxy:
    def __init__(self, name: str, listen: str, upstream: str) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.toxics = ToxicCollection()
        self.connections: set[Connection] = set()
        self._server: asyncio.AbstractServer | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "listen": self.listen, "upstream": self.upstream,
                "enabled": self.enabled, "toxics": [t.to_json() for t in self.toxics.all()]}

    async def start(self) -> None:
        if self.enabled:
            raise AlreadyStarted
        host, port, _ = await resolve_listen(self.listen)
        sock = open_listener(host, port, self.listen)
        self._server = await asyncio.start_server(self._accept, sock=sock)
        name = sock.getsockname()
        if host == "" and sock.family == socket.AF_INET6:
            self.listen = join_host_port("::", name[1])
        else:
            self.listen = join_host_port(name[0], name[1])
        self.enabled = True
        log.info("started proxy %s on %s -> %s", self.name, self.listen, self.upstream)

    async def stop(self) -> None:
        """Close the listener and every connection."""
        if not self.enabled:
            return
        self.enabled = False
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self.connections):
            conn.abort()
        if server is not None:
            await server.wait_closed()
        log.info("terminated proxy %s", self.name)

    async def differs(self, listen: str, upstream: str) -> bool:
        _, _, resolved = await resolve_listen(listen)
        return self.listen != resolved or self.upstream != upstream

    async def update(self, listen: str, upstream: str, enabled: bool) -> None:
        """Go's Proxy.Update: a new listen or upstream restarts the proxy."""
        if await self.differs(listen, upstream):
            await self.stop()
            self.listen = listen
            self.upstream = upstream
        if enabled != self.enabled:
            if enabled:
                await self.start()
            else:
                await self.stop()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, and a task of our own: asyncio 3.11's stream callback does not
        # expect a connection task of its own making to be cancelled (as abort() does).
        conn = Connection(self, reader, writer)
        self.connections.add(conn)
        conn.task = asyncio.create_task(conn.run())
        conn.task.add_done_callback(lambda _: self.connections.discard(conn))


class Connection:
    """One accepted client and its upstream connection."""

    def __init__(self, proxy: Proxy, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client = (reader, writer)
        self.upstream_pair: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.links: list[Link] = []
        self.dead = False
        self.task: asyncio.Task[None] | None = None
        self._done: asyncio.Future[None] | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        c_reader, c_writer = self.client
        peer = c_writer.get_extra_info("peername")
        try:
            host, port_text = split_host_port(self.proxy.upstream)
            port = parse_port(port_text, self.proxy.upstream)
            u_reader, u_writer = await asyncio.open_connection(host or None, port)
        except (OSError, ApiError) as exc:
            log.warning("proxy %s: unable to open connection to upstream %s for %s: %s",
                        self.proxy.name, self.proxy.upstream, peer, exc)
            c_writer.close()
            return
        if self.dead:
            u_writer.transport.abort()
            return
        self.upstream_pair = (u_reader, u_writer)
        toxics = self.proxy.toxics
        self.links = [Link(self, "upstream", c_reader, u_writer, toxics.chain["upstream"]),
                      Link(self, "downstream", u_reader, c_writer, toxics.chain["downstream"])]
        for link in self.links:
            toxics.links.add(link)
            link.start()
        try:
            await self._done
        finally:
            for link in self.links:
                toxics.links.discard(link)
                link.stop()
            for _, writer in (self.client, self.upstream_pair):
                if not writer.transport.is_closing():
                    writer.transport.abort()

    def link_done(self) -> None:
        if all(link.done for link in self.links) and self._done is not None \
                and not self._done.done():
            self._done.set_result(None)

    def _transports(self) -> list[asyncio.Transport]:
        pairs = [self.client] + ([self.upstream_pair] if self.upstream_pair else [])
        return [writer.transport for _, writer in pairs]  # type: ignore[misc]

    def reset(self) -> None:
        """Both sockets closed with SO_LINGER 0: each peer gets a TCP RST."""
        self.dead = True
        for transport in self._transports():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        for link in self.links:
            link.interrupt_all()

    def abort(self) -> None:
        """The proxy is going down: close both sockets now."""
        self.dead = True
        for transport in self._transports():
            transport.abort()
        for link in self.links:
            link.stop()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


class Link:
    """One direction of a connection, through the toxics of that direction."""

    def __init__(self, conn: Connection, direction: str, source: asyncio.StreamReader,
                 dest: asyncio.StreamWriter, specs: list[ToxicSpec]) -> None:
        self.conn = conn
        self.direction = direction
        self.source = source
        self.dest = dest
        self.stages: list[Stage] = [make_stage(spec, self) for spec in specs]
        self.done = False
        self.reset_on_close = False
        self._inbox: deque[Chunk | None] = deque()
        self._inbox_bytes = 0
        self._signal = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._closing: tuple[list[Stage], bool] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        for stage in self.stages:
            stage.attach()
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._pump())]

    def stop(self) -> None:
        for stage in self.stages:
            stage.detach()
            stage.interrupt()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()

    def interrupt_all(self) -> None:
        for stage in self.stages:
            stage.interrupt()
        self._signal.set()

    # -- toxic changes --------------------------------------------------------------------------
    def _stage_of(self, spec: ToxicSpec) -> Stage | None:
        for stage in self.stages:
            if stage.spec is spec:
                return stage
        return None

    def toxic_added(self, spec: ToxicSpec) -> None:
        stage = make_stage(spec, self)
        self.stages = self.stages + [stage]
        stage.attach()

    def toxic_updated(self, spec: ToxicSpec) -> None:
        stage = self._stage_of(spec)
        if stage is None:
            return
        stage.detach()
        stage.interrupt()
        stage.roll()
        stage.attach()

    def toxic_removed(self, spec: ToxicSpec) -> None:
        stage = self._stage_of(spec)
        if stage is None:
            return
        old = self.stages
        self.stages = [s for s in old if s is not stage]
        stage.removed = True
        stage.detach()
        stage.interrupt()
        if spec.type == "timeout" and stage.applies:
            # Go's TimeoutToxic.Cleanup closes the link when the toxic goes.
            self.request_close(stage, stages=old)

    def request_close(self, stage: Stage, reset: bool = False,
                      stages: list[Stage] | None = None) -> None:
        """`stage` closes the link: the stages after it see the end, then the destination is
        closed (reset: with a TCP RST)."""
        if self._closing is not None or self.done:
            return
        stages = self.stages if stages is None else stages
        tail = stages[stages.index(stage) + 1:] if stage in stages else []
        self._closing = (tail, reset)
        self.interrupt_all()

    # -- data -------------------------------------------------------------------------------------
    def _push(self, item: Chunk | None) -> None:
        self._inbox.append(item)
        if item is not None:
            self._inbox_bytes += len(item.data)
        self._signal.set()

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await self.source.read(READ_SIZE)
            except (OSError, asyncio.IncompleteReadError):
                data = b""
            if not data:
                self._push(None)
                return
            self._push(Chunk(data, loop.time()))
            while self._inbox_bytes >= INBOX_LIMIT:
                self._space.clear()
                await self._space.wait()

    async def _pump(self) -> None:
        try:
            while not self.conn.dead:
                if self._closing is not None:
                    tail, reset = self._closing
                    await self._finish(tail, reset)
                    return
                if not self._inbox:
                    self._signal.clear()
                    await self._signal.wait()
                    continue
                item = self._inbox.popleft()
                if item is None:
                    await self._finish(list(self.stages), False)
                    return
                self._inbox_bytes -= len(item.data)
                if self._inbox_bytes < INBOX_LIMIT:
                    self._space.set()
                await self._feed(self.stages, 0, item)
                if self.done:
                    return
        except Exception:  # pragma: no cover - a bug here must not kill the loop silently
            log.exception("proxy %s: %s link failed", self.conn.proxy.name, self.direction)
            self.conn.abort()
        finally:
            self.done = True
            for stage in self.stages:
                stage.detach()
            self.conn.link_done()

    async def _feed(self, stages: list[Stage], index: int, chunk: Chunk) -> None:
        if self._closing is not None or self.conn.dead or self.done:
            return
        while index < len(stages) and (stages[index].removed or not stages[index].applies):
            index += 1
        if index == len(stages):
            await self._write(chunk.data)
            return

        async def emit(out: Chunk) -> None:
            await self._feed(stages, index + 1, out)

        await stages[index].process(chunk, emit)

    async def _write(self, data: bytes) -> None:
        if not data:
            return
        transport = self.dest.transport
        if transport.is_closing():
            self.done = True
            return
        self.dest.write(data)
        try:
            await self.dest.drain()
        except (OSError, RuntimeError):
            self.done = True
            transport.abort()

    async def _finish(self, tail: list[Stage], reset: bool) -> None:
        for stage in tail:
            if self.conn.dead:
                return
            if stage.applies and not stage.removed:
                await stage.on_eof()
        if self.conn.dead:
            return
        if reset or self.reset_on_close:
            self.conn.reset()
        elif not self.dest.transport.is_closing():
            self.dest.close()


# -- the collection -----------------------------------------------------------------------------

class ProxyCollection:
    def __init__(self) -> None:
        self.proxies: dict[str, Proxy] = {}
        self.lock = asyncio.Lock()

    def get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise ApiError("proxy not found", 404)
        return proxy

    async def add(self, proxy: Proxy, start: bool) -> None:
        if proxy.name in self.proxies:
            raise ApiError("proxy already exists", 409)
        if start:
            await proxy.start()
        self.proxies[proxy.name] = proxy

    async def add_or_replace(self, proxy: Proxy, start: bool) -> Proxy:
        existing = self.proxies.get(proxy.name)
        if existing is not None:
            if not await existing.differs(proxy.listen, proxy.upstream):
                return existing
            await existing.stop()
        if start:
            await proxy.start()
        self.proxies[proxy.name] = proxy
        return proxy

    async def remove(self, name: str) -> None:
        proxy = self.get(name)
        await proxy.stop()
        self.proxies.pop(name, None)

    async def clear(self) -> None:
        for name in list(self.proxies):
            await self.remove(name)
