"""The benchmark's load clients. Each run prints one JSON line on stdout.

    python3 bench/clients.py bulk HOST:PORT up|down SECONDS
    python3 bench/clients.py latency COUNT HOST:PORT [HOST:PORT...]
    python3 bench/clients.py handshakes HOST:PORT CONNS GROUP START SECONDS [tls]
    python3 bench/clients.py hold HOST:PORT GROUP [parked]   (commands on stdin: "hold N")

Every connection speaks real c2s XMPP first: the stream header, then it waits for the
backend's header and `<stream:features>` (checked byte for byte), so a proxy that reads the
header, as xmppgw does, is on the path exactly as it would be for a real client.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

from common import (
    CHUNK,
    CLIENT_HELLO,
    FEATURES_END,
    HEADER,
    PAYLOAD,
    PRESENCE,
    PROCEED,
    REPLY,
    SERVER_HELLO,
    STANZA,
    STARTTLS,
    client_socket,
    parse_addr,
    source_ip,
)


def _open_stream(target: tuple[str, int], first: bytes = HEADER,
                 group: int = 0) -> tuple[socket.socket, bytes]:
    """A blocking connection with the stream opened; returns it and any bytes past the
    features."""
    sock = client_socket(source_ip(group, 0))
    sock.connect(target)
    sock.sendall(first)
    buf = b""
    while FEATURES_END not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before the features: {buf[:300]!r}")
        buf += chunk
    end = buf.index(FEATURES_END) + len(FEATURES_END)
    if buf[:end] != REPLY:
        raise ValueError(f"unexpected answer: {buf[:300]!r}")
    return sock, buf[end:]


def bulk(target: tuple[str, int], direction: str, seconds: float) -> dict:
    """Bulk bytes over one opened stream; `<presence/>` after the header is the first stanza
    without STARTTLS, as after a real negotiation the gateway then relays without parsing."""
    sock, extra = _open_stream(target, HEADER + PRESENCE, group=1)
    with sock:
        if direction == "up":
            payload = memoryview(PAYLOAD)
            t0 = time.perf_counter()
            deadline = t0 + seconds
            while time.perf_counter() < deadline:
                sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(64):
                answer += chunk
            t1 = time.perf_counter()  # the sink has counted every byte by now
            nbytes = int(answer) - len(PRESENCE)
        else:
            buf = bytearray(CHUNK)
            nbytes = len(extra)
            t0 = time.perf_counter()
            deadline = t0 + seconds
            while time.perf_counter() < deadline:
                n = sock.recv_into(buf)
                if not n:
                    raise ConnectionError("the source closed")
                nbytes += n
            t1 = time.perf_counter()
    return {"bytes": nbytes, "seconds": t1 - t0, "GBps": nbytes / (t1 - t0) / 1e9}


def latency(targets: list[tuple[str, int]], count: int, warmup: int = 200) -> list[dict]:
    """Sequential round trips of one 100-byte stanza, echoed by the backend, over one stream
    per target, taking the targets in turn (A, B, C, A, B, C...): a hiccup of the machine
    hits every target alike."""
    socks = [_open_stream(t, group=2)[0] for t in targets]
    size = len(STANZA)
    buf = bytearray(size)
    view = memoryview(buf)
    samples: list[list[int]] = [[] for _ in targets]
    clock = time.perf_counter_ns
    try:
        for i in range(warmup + count):
            for sock, out in zip(socks, samples):
                t0 = clock()
                sock.sendall(STANZA)
                got = 0
                while got < size:
                    n = sock.recv_into(view[got:])
                    if not n:
                        raise ConnectionError("closed during the round trips")
                    got += n
                t1 = clock()
                if i >= warmup:
                    out.append(t1 - t0)
                if i == 0 and buf != STANZA:
                    raise ValueError(f"echo differs: {bytes(buf)!r}")
    finally:
        for sock in socks:
            sock.close()
    return [{"target": f"{host}:{port}", "count": count, "p50_us": _percentile(out, 0.50),
             "p99_us": _percentile(out, 0.99), "max_us": max(out) / 1000}
            for (host, port), out in zip(targets, samples)]


def _percentile(ns: list[int], q: float) -> float:
    """Nearest-rank percentile, in µs."""
    ordered = sorted(ns)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


# --- asyncio clients (many connections) ------------------------------------------------------


class Stream(asyncio.Protocol):
    """Opens a stream; with `starttls` also asks for STARTTLS and waits for `<proceed/>`."""

    __slots__ = ("buf", "done", "expect", "first", "starttls", "transport")

    def __init__(self, done: asyncio.Future, starttls: bool = False, tls: bool = False) -> None:
        self.done = done
        self.starttls = starttls
        self.first = CLIENT_HELLO if tls else HEADER  # tls: direct TLS, a ClientHello first
        self.expect = SERVER_HELLO if tls else REPLY
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.first)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) < len(self.expect):
            return
        if self.buf != self.expect:
            self._finish(False)
        elif self.starttls and self.expect is REPLY:
            self.expect, self.buf = PROCEED, b""
            self.transport.write(STARTTLS)  # type: ignore[union-attr]
        else:
            self._finish(True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(False)

    def _finish(self, ok: bool) -> None:
        if not self.done.done():
            self.done.set_result(ok)


async def _connect(target: tuple[str, int], src: str, starttls: bool, tls: bool = False
                   ) -> tuple[asyncio.Transport, bool]:
    loop = asyncio.get_running_loop()
    sock = client_socket(src)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, target)
    except BaseException:
        sock.close()
        raise
    done = loop.create_future()
    transport, _ = await loop.create_connection(lambda: Stream(done, starttls, tls), sock=sock)
    return transport, await done


async def handshakes(target: tuple[str, int], conns: int, group: int, start: float,
                     seconds: float, tls: bool = False) -> dict:
    """`conns` loops of: connect, header, wait for header + features, close (with `tls`:
    ClientHello, wait for the backend's first record, close). Counts those completed in
    [start, start + seconds) (wall clock, shared with the other processes)."""
    end = start + seconds
    stats = {"ok": 0, "bad": 0, "errors": 0, "first_error": None}

    async def loop_one(i: int) -> None:
        src = source_ip(group, i)
        while time.time() < end:
            try:
                transport, ok = await _connect(target, src, starttls=False, tls=tls)
                transport.close()
            except OSError as exc:
                ok = None
                stats["first_error"] = stats["first_error"] or repr(exc)
            now = time.time()
            if start <= now < end:
                stats["ok" if ok else "bad" if ok is False else "errors"] += 1

    await asyncio.gather(*(loop_one(i) for i in range(conns)))
    return stats


async def hold(target: tuple[str, int], group: int, parallel: int = 100,
               starttls: bool = True) -> None:
    """Holds streams open past STARTTLS (the gateway relays them opaquely, as it would a
    TLS session), or with `starttls` False parked before it: header sent, the real's header
    and features received, then silence (a client slow to start TLS, or a slowloris).
    Reads "hold N" lines on stdin, answers {"held": N} once there; EOF ends."""
    loop = asyncio.get_running_loop()
    held: list[asyncio.Transport] = []
    errors = 0
    gate = asyncio.Semaphore(parallel)

    async def open_one(i: int) -> None:
        nonlocal errors
        async with gate:
            try:
                transport, ok = await _connect(target, source_ip(group, i), starttls=starttls)
            except OSError:
                errors += 1
                return
        if ok:
            held.append(transport)
        else:
            transport.close()
            errors += 1

    while line := await loop.run_in_executor(None, sys.stdin.readline):
        want = int(line.split()[1])
        while len(held) > want:
            held.pop().close()
        tries = 0
        while len(held) < want and tries < 3:
            await asyncio.gather(*(open_one(i) for i in range(want - len(held))))
            tries += 1
        print(json.dumps({"held": len(held), "errors": errors}), flush=True)
    for transport in held:
        transport.close()
    await asyncio.sleep(0.1)


def main() -> None:
    cmd = sys.argv[1]
    target = parse_addr(sys.argv[2]) if cmd != "latency" else ("", 0)
    args = sys.argv[3:]
    if cmd == "bulk":
        result = bulk(target, args[0], float(args[1]))
    elif cmd == "latency":  # latency COUNT HOST:PORT...: here `target` is the count
        result = latency([parse_addr(a) for a in args], int(sys.argv[2]))
    elif cmd == "handshakes":
        import uvloop
        result = uvloop.run(handshakes(target, int(args[0]), int(args[1]), float(args[2]),
                                       float(args[3]), tls=args[4:5] == ["tls"]))
    elif cmd == "hold":
        import uvloop
        uvloop.run(hold(target, int(args[0]), starttls=args[1:2] != ["parked"]))
        return
    else:
        raise SystemExit(f"unknown command {cmd!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
