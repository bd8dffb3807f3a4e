"""The server: the HTTP API and the proxies on one event loop, in this loop or in a thread."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any, Self

from aiohttp import web

from chaos.toxiproxy.api import make_app, populate_from
from chaos.toxiproxy.engine import Proxy, ProxyCollection


class ToxiproxyServer:
    """`await start()` serves the API on host:port (0 picks a free port; see `.port`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8474) -> None:
        self.host = host
        self.port = port
        self.collection = ProxyCollection()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(make_app(self.collection), access_log=None,
                                     handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def populate(self, value: Any) -> list[Proxy]:
        """Create or replace proxies as POST /populate does (`value`: a list of proxies)."""
        done: list[Proxy] = []
        await populate_from(self.collection, value, done)
        return done

    async def stop(self) -> None:
        """Stop serving the API and take every proxy down."""
        async with self.collection.lock:
            await self.collection.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()


class ThreadedToxiproxy:
    """The server on its own event loop in a daemon thread, for synchronous callers
    (toxiproxy-python): `with ThreadedToxiproxy(port=0) as tp: tp.port`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8474) -> None:
        self.server = ToxiproxyServer(host, port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._main, name="toxiproxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:  # noqa: BLE001 - reported to start(), which raises it
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stopped.wait()
        await self.server.stop()

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
