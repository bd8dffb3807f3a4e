"""One process of a login storm: many slixmpp clients on one asyncio loop.

Run by tests/support/storm.py (``python -m tests.support.storm_client ...``), several at once,
because one process holds at most 20,000 files and one loop only so many TLS handshakes. The
process talks JSON lines on stdout and reads commands on stdin:

- it prints ``{"event": "ready"}`` once loaded, then waits for ``go`` so that every process
  of a storm starts its clients in the same instant;
- every client then logs in (STARTTLS or direct TLS, SASL, bind) and prints ``up`` with the
  wall-clock time of its session start, or ``fail`` with the reason and, when the server (or
  the gateway) sent a stream error, its condition (e.g. ``remote-connection-failed``);
- ``--mode once``: one attempt per client, then the sessions stay up until ``quit``;
- ``--mode stay``: clients behave as real ones: a failed login is retried with backoff, and a
  client whose connection is cut prints ``down`` and logs in again (after a short random
  delay), until ``quit``;
- ``quit`` (or end of input) aborts every connection and prints ``{"event": "exit"}``.

Clients can come from several loopback source addresses (``--sources``): real clients come
from many addresses, and the gateway's ``faildetect numclients`` counts distinct ones.
Certificates are not verified (the servers' are self-signed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import random
import ssl
import sys
import time
from typing import Any

from slixmpp import ClientXMPP

_keep: list[asyncio.Task[None]] = []
SOURCE: contextvars.ContextVar[str | None] = contextvars.ContextVar("source", default=None)


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
    sys.stdout.flush()


def bind_sources(loop: asyncio.AbstractEventLoop) -> None:
    """Make the loop's outgoing TCP connections start from the calling task's SOURCE address.

    slixmpp has no source-address option; it calls ``loop.create_connection`` from a task
    that ``connect()`` creates, which inherits the context of the client's own task."""
    original = loop.create_connection

    async def create_connection(protocol_factory: Any, host: Any = None, port: Any = None,
                                **kwargs: Any) -> Any:
        source = SOURCE.get()
        if source is not None and "sock" not in kwargs and "local_addr" not in kwargs:
            kwargs["local_addr"] = (source, 0)
        return await original(protocol_factory, host, port, **kwargs)

    loop.create_connection = create_connection  # type: ignore[method-assign]


def tls_context() -> ssl.SSLContext:
    """A client context that verifies nothing, and so loads no CA certificates."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def cheap_contexts() -> None:
    """Every ClientXMPP makes two default contexts, each loading the system's CA bundle
    (~20 ms of CPU); these clients verify nothing, so hand them contexts without it."""
    ssl.create_default_context = lambda *_a, **_k: tls_context()  # type: ignore[assignment]


class Client:
    """One account/resource, with one ClientXMPP made before the storm (making one costs
    ~40 ms of CPU: 500 of them would otherwise be the storm's bottleneck). Like a real
    client, it connects again with the same object after a failure or a cut."""

    def __init__(self, index: int, jid: str, args: argparse.Namespace, context: ssl.SSLContext,
                 source: str | None) -> None:
        self.index, self.jid, self.args, self.source = index, jid, args, source
        self.stopping = False
        self.task: asyncio.Task[None] | None = None
        self.waiter: asyncio.Future[tuple[bool, str | None]] | None = None
        self.cut: asyncio.Future[str] | None = None
        self.condition: str | None = None
        xmpp = self.xmpp = ClientXMPP(jid, args.password)
        xmpp.ssl_context = context
        xmpp.enable_direct_tls = args.direct_tls
        xmpp.enable_starttls = not args.direct_tls
        xmpp.enable_plaintext = False
        xmpp.add_event_handler("session_start", lambda _: self._settle(True, None))
        xmpp.add_event_handler("failed_all_auth",
                               lambda _: self._settle(False, "authentication failed"))
        xmpp.add_event_handler("connection_failed",
                               lambda e: self._settle(False, f"cannot connect: {e}"))
        xmpp.add_event_handler("stream_error", self._stream_error)
        xmpp.add_event_handler("disconnected", self._disconnected)
        self.stage = "nothing"  # how far the current attempt got, for a timeout's reason
        for event, stage in (("connected", "TCP"), ("tls_success", "TLS"),
                             ("auth_success", "SASL"), ("session_bind", "bind")):
            xmpp.add_event_handler(event, lambda _, stage=stage: setattr(self, "stage", stage))

    def _settle(self, ok: bool, why: str | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((ok, why))

    def _stream_error(self, error: Any) -> None:
        self.condition = str(error["condition"])
        self._settle(False, f"stream error <{error['condition']}/> {error['text'] or ''}".strip())

    def _disconnected(self, reason: Any) -> None:
        if self.waiter is not None and not self.waiter.done():
            self._settle(False, f"disconnected: {reason}")
        elif self.cut is not None and not self.cut.done():
            self.cut.set_result(str(reason))

    async def attempt(self) -> tuple[bool, str | None, str | None]:
        """One login: (ok, reason, stream error condition)."""
        SOURCE.set(self.source)  # connect() runs create_connection in a copy of this context
        self.condition = None
        self.stage = "nothing"
        self.waiter = asyncio.get_running_loop().create_future()
        self.xmpp.connect(self.args.host, self.args.port)
        try:
            ok, why = await asyncio.wait_for(asyncio.shield(self.waiter),
                                             self.args.attempt_timeout)
        except TimeoutError:
            ok, why = False, (f"no session after {self.args.attempt_timeout:g} s"
                              f" (got as far as: {self.stage})")
        self.waiter = None
        if not ok:
            self.drop()
            await asyncio.sleep(0)  # let the abort's `disconnected` pass while no one waits
        return ok, why, self.condition

    def drop(self) -> None:
        self.xmpp.cancel_connection_attempt()  # slixmpp would otherwise retry on its own
        self.xmpp.abort()

    async def run(self) -> None:
        fails = 0
        attempt = 0
        since = time.time()
        while not self.stopping:
            attempt += 1
            ok, why, condition = await self.attempt()
            if self.stopping:
                return
            if not ok:
                fails += 1
                emit("fail", client=self.index, jid=self.jid, attempt=attempt, reason=why,
                     condition=condition, source=self.source, since=since)
                if self.args.mode == "once":
                    return
                await asyncio.sleep(min(5.0, 0.5 * 2 ** (fails - 1)) * random.uniform(0.5, 1.5))
                continue
            fails = 0
            self.cut = asyncio.get_running_loop().create_future()
            emit("up", client=self.index, jid=self.jid, attempt=attempt, source=self.source,
                 since=since)
            if self.args.mode == "once":
                return
            reason = await self.cut
            self.cut = None
            if self.stopping:
                return
            emit("down", client=self.index, jid=self.jid, reason=reason)
            self.drop()
            await asyncio.sleep(random.uniform(0, self.args.reconnect_jitter))
            attempt, since = 0, time.time()

    def stop(self) -> None:
        self.stopping = True
        self.drop()
        if self.task is not None:
            self.task.cancel()


async def commands() -> asyncio.Queue[str]:
    """Lines of standard input (`go`, `quit`); end of input reads as `quit`."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def pump() -> None:
        while True:
            line = await reader.readline()
            await queue.put(line.decode().strip() if line else "quit")
            if not line:
                return

    _keep.append(asyncio.ensure_future(pump()))  # a task nobody references may be collected
    return queue


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    bind_sources(loop)
    cheap_contexts()
    context = tls_context()
    sources = args.sources.split(",") if args.sources else [None]
    clients = [Client(i, f"{args.user_prefix}{i}@{args.domain}/{args.resource}", args, context,
                      sources[i % len(sources)])
               for i in range(args.first, args.first + args.count)]
    queue = await commands()
    emit("ready", clients=len(clients))
    while (command := await queue.get()) != "go":
        if command == "quit":
            emit("exit")
            return
    for client in clients:
        client.task = asyncio.ensure_future(client.run())
    while await queue.get() != "quit":
        pass
    for client in clients:
        client.stop()
    await asyncio.sleep(0.2)  # let the aborts reach the sockets
    emit("exit")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--direct-tls", action="store_true", help="XEP-0368 TLS, not STARTTLS")
    p.add_argument("--domain", required=True)
    p.add_argument("--user-prefix", required=True, help="accounts are <prefix><index>")
    p.add_argument("--first", type=int, default=0, help="index of this process's first client")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--resource", default="storm")
    p.add_argument("--sources", default="", help="comma-separated source addresses")
    p.add_argument("--mode", choices=["once", "stay"], default="once")
    p.add_argument("--attempt-timeout", type=float, default=60.0)
    p.add_argument("--reconnect-jitter", type=float, default=0.5)
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse(sys.argv[1:])))
