"""The benchmark's backends (the "reals").

    python3 bench/backend.py xmpp HOST:PORT [HOST:PORT2]   an XMPP-ish responder (uvloop)
    python3 bench/backend.py bulk HOST:SINK HOST:SOURCE   bulk sink and source (threads)

The responder answers a stream header with its own header and `<stream:features>`, a
ClientHello (direct TLS) with a record standing for a ServerHello (then waits), a
`<starttls/>` with `<proceed/>` (then waits silently, as a server would for TLS), and echoes
anything else byte for byte (the latency figure).

The bulk backend reads the stream header, answers it, then either sinks every byte it gets
(into one preallocated buffer) and reports the count when the client half-closes, or sources
1 MiB writes until the client goes away.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading

from common import CHUNK, PAYLOAD, PROCEED, REPLY, SERVER_HELLO, STARTTLS, header_end, parse_addr

HEADER_WAIT, FIRST_STANZA, ECHO, TLS_WAIT = range(4)


class Responder(asyncio.Protocol):
    __slots__ = ("buf", "state", "transport")

    def __init__(self) -> None:
        self.buf = b""
        self.state = HEADER_WAIT
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == ECHO:
            self.transport.write(data)  # type: ignore[union-attr]
        elif state == HEADER_WAIT:
            if not self.buf and data[:1] == b"\x16":  # direct TLS: a ClientHello
                self.transport.write(SERVER_HELLO)  # type: ignore[union-attr]
                self.state = TLS_WAIT
                return
            self.buf += data
            end = header_end(self.buf)
            if end < 0:
                if len(self.buf) > 8192:
                    self.transport.close()  # type: ignore[union-attr]
                return
            rest, self.buf = self.buf[end:], b""
            self.transport.write(REPLY)  # type: ignore[union-attr]
            self.state = FIRST_STANZA
            if rest:
                self._first_stanza(rest)
        elif state == FIRST_STANZA:
            self._first_stanza(data)
        # TLS_WAIT: a real server would start TLS now; stay silent

    def _first_stanza(self, data: bytes) -> None:
        """The first element after the header decides: STARTTLS, or echo from then on."""
        if data.startswith(STARTTLS):
            self.transport.write(PROCEED)  # type: ignore[union-attr]
            self.state = TLS_WAIT
        else:
            self.transport.write(data)  # type: ignore[union-attr]
            self.state = ECHO


async def serve_xmpp(host: str, *ports: int) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(Responder, host, port, backlog=4096,
                                        reuse_address=True) for port in ports]
    await asyncio.gather(*(server.serve_forever() for server in servers))


def _answer_header(conn: socket.socket) -> bytes:
    buf = b""
    while (end := header_end(buf)) < 0:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the stream header")
        buf += chunk
    conn.sendall(REPLY)
    return buf[end:]


def _sink(conn: socket.socket) -> None:
    total = len(_answer_header(conn))
    buf = bytearray(CHUNK)
    while n := conn.recv_into(buf):
        total += n
    conn.sendall(b"%d\n" % total)


def _source(conn: socket.socket) -> None:
    _answer_header(conn)
    payload = memoryview(PAYLOAD)
    while True:
        conn.sendall(payload)


def _handle(conn: socket.socket, handler) -> None:
    try:
        with conn:
            handler(conn)
    except OSError:
        pass  # the client left: that is how a source run ends


def _accept_loop(listener: socket.socket, handler) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_handle, args=(conn, handler), daemon=True).start()


def serve_bulk(sink: tuple[str, int], source: tuple[str, int]) -> None:
    listeners = [(socket.create_server(sink, backlog=64), _sink),
                 (socket.create_server(source, backlog=64), _source)]
    threading.Thread(target=_accept_loop, args=listeners[0], daemon=True).start()
    _accept_loop(*listeners[1])


def main() -> None:
    mode = sys.argv[1]
    if mode == "xmpp":
        import uvloop
        host, port = parse_addr(sys.argv[2])
        uvloop.run(serve_xmpp(host, port, *(parse_addr(a)[1] for a in sys.argv[3:])))
    elif mode == "bulk":
        serve_bulk(parse_addr(sys.argv[2]), parse_addr(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
