"""The floor of a Python TCP proxy: what any asyncio/uvloop relay pays per stream open.

    python3 bench/floor.py LISTEN_HOST:PORT BACKEND_HOST:PORT

The steps of the stream-open load and nothing else: accept, wait for the client's first
bytes (its stream header), connect to the backend, send them, relay the answer, pass the
client's FIN on, close both legs, write one log line per connection (as xmppgw and HAProxy
do). No parsing, no balancing, no timers, no limits. bench.py runs it beside xmppgw and
HAProxy so the CPU per open splits into what the runtime costs (this) and what xmppgw's own
work adds (the rest). Not a product: no error handling beyond closing.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, client: Client, first: bytes) -> None:
        self.client, self.first = client, first
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client.upstream = self
        self.transport.write(self.first)
        if self.client.fin:
            self.transport.write_eof()

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.client.transport.close()  # type: ignore[union-attr]
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()  # type: ignore[union-attr]


class Client(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, backend: tuple[str, int]) -> None:
        self.loop, self.backend = loop, backend
        self.transport: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        self.peer: tuple[str, int] | None = None
        self.dialled = self.fin = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")

    def data_received(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.transport.write(data)  # type: ignore[union-attr]
        elif not self.dialled:
            self.dialled = True
            self.loop.create_task(self.loop.create_connection(
                lambda: Upstream(self, data), *self.backend))

    def eof_received(self) -> bool:
        self.fin = True
        if self.upstream is not None:
            self.upstream.transport.write_eof()  # type: ignore[union-attr]
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        sys.stdout.write(json.dumps({"event": "connection", "client": self.peer[0] if self.peer
                                     else "?", "time": time.time()}) + "\n")
        if self.upstream is not None:
            self.upstream.transport.close()  # type: ignore[union-attr]


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(listen: tuple[str, int], backend: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(loop, backend), *listen, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(serve(_addr(sys.argv[1]), _addr(sys.argv[2])))
