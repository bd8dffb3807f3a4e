"""Zero-copy relay for the opaque phase: `os.splice` socket -> pipe -> socket.

Once a stream is opaque (TLS after `<proceed/>`, or a ClientHello replayed), the gateway has
nothing left to read in it: bytes can move from one socket to the other through a kernel
pipe without ever being copied into Python. The session hands both sockets over (dup'd file
descriptors; the asyncio transports are retired) and a `SpliceRelay` moves the bytes on
readiness callbacks.

Pipes come from a per-process pool and a direction holds one only while bytes are stuck in
it (the destination could not take them all): a pipe per connection would cost four more
file descriptors per connection, a third of the ~9,900 connections a process can hold
within its 20,000-descriptor limit.

Flow control: a direction with bytes stuck in its pipe stops reading its source until the
destination is writable again. Half-close: EOF on a source is passed on as a shutdown of the
destination's write side once the pipe is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import Callable

AVAILABLE = hasattr(os, "splice")
CHUNK = 1 << 18  # up to 256 KiB per splice call (the pipe holds what fits)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
POOL_LIMIT = 64  # idle pipes kept per process
PIPE_SIZE = 1 << 20
READS_PER_WAKEUP = 8  # drain a busy source a few times per callback, then let others run


class PipePool:
    """Idle, empty pipes shared by every relay of one process."""

    def __init__(self) -> None:
        self._idle: list[tuple[int, int]] = []

    def take(self) -> tuple[int, int]:
        if self._idle:
            return self._idle.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError, AttributeError):
            # a bigger pipe moves more per system call; pages are only used while filled
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        return r, w

    def give_back(self, pipe: tuple[int, int]) -> None:
        """Only empty pipes come back; a pipe with bytes in it is closed instead."""
        if len(self._idle) < POOL_LIMIT:
            self._idle.append(pipe)
        else:
            close_pipe(pipe)

    def close(self) -> None:
        for pipe in self._idle:
            close_pipe(pipe)
        self._idle.clear()


def close_pipe(pipe: tuple[int, int]) -> None:
    for fd in pipe:
        with contextlib.suppress(OSError):
            os.close(fd)


class _Direction:
    """One way of the relay: `src` socket to `dst` socket."""

    __slots__ = ("dst", "eof", "last", "moved", "pending", "pipe", "prior", "relay", "src",
                 "waiting")

    def __init__(self, relay: SpliceRelay, src: socket.socket, dst: socket.socket) -> None:
        self.relay = relay
        self.src = src
        self.dst = dst
        self.pipe: tuple[int, int] | None = None
        self.pending = 0  # bytes in the pipe not yet written to dst
        self.moved = 0
        self.eof = False
        self.waiting = False  # stuck: watching dst for writability instead of src
        self.last = 0.0  # loop time of the last bytes read from src
        self.prior = 0.0  # ... and of the other direction's last bytes before them

    def readable(self) -> None:
        for _ in range(READS_PER_WAKEUP):
            if self.pipe is None:
                self.pipe = self.relay.pool.take()
            try:
                n = os.splice(self.src.fileno(), self.pipe[1], CHUNK, flags=_FLAGS)
            except BlockingIOError:
                self._release_if_empty()
                return
            except OSError:
                self.relay.ended_by(self.src)
                self.relay.close()
                return
            if n == 0:
                self.relay.ended_by(self.src)
                self._end_of_stream()
                return
            self.pending += n
            self.moved += n
            relay = self.relay
            self.prior = (relay.down if self is relay.up else relay.up).last
            self.last = relay.loop.time()
            self._flush()
            if self.waiting or self.relay.closed:
                return

    def _flush(self) -> None:
        relay = self.relay
        while self.pending:
            try:
                n = os.splice(self.pipe[0], self.dst.fileno(), self.pending,  # type: ignore[index]
                              flags=_FLAGS)
            except BlockingIOError:
                if not self.waiting:  # stop reading until the destination drains
                    self.waiting = True
                    relay.loop.remove_reader(self.src.fileno())
                    relay.loop.add_writer(self.dst.fileno(), self._flush)
                return
            except OSError:
                relay.ended_by(self.dst)
                relay.close()
                return
            self.pending -= n
        if self.waiting:
            self.waiting = False
            relay.loop.remove_writer(self.dst.fileno())
            if not self.eof:
                relay.loop.add_reader(self.src.fileno(), self.readable)
        self._release_if_empty()
        if self.eof:
            self._pass_eof()

    def _release_if_empty(self) -> None:
        if self.pipe is not None and self.pending == 0:
            self.relay.pool.give_back(self.pipe)
            self.pipe = None

    def _end_of_stream(self) -> None:
        self.eof = True
        self.relay.loop.remove_reader(self.src.fileno())
        if self.pending == 0:
            self._release_if_empty()
            self._pass_eof()

    def _pass_eof(self) -> None:
        """The source ended and everything it sent is delivered: pass its FIN on."""
        with contextlib.suppress(OSError):
            self.dst.shutdown(socket.SHUT_WR)
        self.relay.direction_done()

    def stop(self) -> None:
        loop = self.relay.loop
        loop.remove_reader(self.src.fileno())
        if self.waiting:
            loop.remove_writer(self.dst.fileno())
        if self.pipe is not None:
            if self.pending:
                close_pipe(self.pipe)  # bytes that will never be delivered: not reusable
            else:
                self.relay.pool.give_back(self.pipe)
            self.pipe = None


class SpliceRelay:
    """Both directions of one connection, on two sockets the relay now owns."""

    __slots__ = ("client", "closed", "done", "down", "loop", "on_close", "pool",
                 "real_first", "up", "upstream")

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: PipePool, client: socket.socket,
                 upstream: socket.socket, on_close: Callable[[SpliceRelay], None]) -> None:
        self.loop = loop
        self.pool = pool
        self.client = client
        self.upstream = upstream
        self.on_close = on_close
        self.up = _Direction(self, client, upstream)
        self.down = _Direction(self, upstream, client)
        self.done = 0
        self.closed = False
        # The upstream socket (the real's) ended first, by EOF or error: the real closed the
        # stream, not the client and not the gateway (the engine's mass-close rule).
        self.real_first: bool | None = None

    def ended_by(self, sock: socket.socket) -> None:
        """`sock` reached its end (EOF or error); only the first end counts."""
        if self.real_first is None and not self.closed:
            self.real_first = sock is self.upstream

    def start(self) -> None:
        self.loop.add_reader(self.client.fileno(), self.up.readable)
        self.loop.add_reader(self.upstream.fileno(), self.down.readable)

    def direction_done(self) -> None:
        self.done += 1
        if self.done == 2:
            self.close()

    def close(self) -> None:
        """Stop both directions and close both sockets (a FIN each); idempotent."""
        if self.closed:
            return
        self.closed = True
        self.up.stop()
        self.down.stop()
        self.client.close()
        self.upstream.close()
        self.on_close(self)
