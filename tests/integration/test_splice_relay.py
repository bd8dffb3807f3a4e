"""The splice relay on its own, over socketpairs: bytes exact both ways, a stuck destination
holds a pipe only while stuck, EOF passed on, and no descriptor left behind."""

from __future__ import annotations

import asyncio
import os
import random
import socket

import pytest

from xmppgw.net import splice

pytestmark = pytest.mark.skipif(not splice.AVAILABLE, reason="no os.splice on this platform")


def pairs() -> tuple[socket.socket, ...]:
    """A client and a real, each a socketpair: (client, relay's end, real, relay's end)."""
    client_outer, client_inner = socket.socketpair()
    real_outer, real_inner = socket.socketpair()
    for s in (client_outer, client_inner, real_outer, real_inner):
        s.setblocking(False)
    return client_outer, client_inner, real_outer, real_inner


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def recv_all(sock: socket.socket, size: int, slow: bool = False) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    while len(out) < size:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            break
        out += chunk
        if slow:
            await asyncio.sleep(0.001)
    return bytes(out)


async def test_bytes_flow_both_ways_and_pipes_are_pooled() -> None:
    loop = asyncio.get_running_loop()
    before = fds()
    pool = splice.PipePool()
    client_outer, client_inner, real_outer, real_inner = pairs()
    ended = asyncio.Event()
    relay = splice.SpliceRelay(loop, pool, client_inner, real_inner, lambda _r: ended.set())
    relay.start()
    up = random.Random(1).randbytes(4 << 20)
    down = random.Random(2).randbytes(4 << 20)

    async def send(sock: socket.socket, data: bytes) -> None:
        await loop.sock_sendall(sock, data)
        sock.shutdown(socket.SHUT_WR)

    senders = [asyncio.create_task(send(client_outer, up)),
               asyncio.create_task(send(real_outer, down))]
    # the real reads slowly: its direction's pipe fills and is held while it is stuck
    got_up, got_down = await asyncio.gather(recv_all(real_outer, len(up), slow=True),
                                            recv_all(client_outer, len(down)))
    await asyncio.gather(*senders)
    assert got_up == up and got_down == down
    assert (relay.up.moved, relay.down.moved) == (len(up), len(down))
    # each EOF was passed on: both outer ends now read end-of-stream
    assert await loop.sock_recv(real_outer, 1) == b""
    assert await loop.sock_recv(client_outer, 1) == b""
    await asyncio.wait_for(ended.wait(), 5)
    assert relay.closed and relay.up.pipe is None and relay.down.pipe is None
    assert 1 <= len(pool._idle) <= 2  # pipes went back to the pool, at most one per direction
    for s in (client_outer, real_outer):
        s.close()
    pool.close()
    assert fds() == before


async def test_close_while_bytes_are_stuck_closes_that_pipe() -> None:
    loop = asyncio.get_running_loop()
    before = fds()
    pool = splice.PipePool()
    client_outer, client_inner, real_outer, real_inner = pairs()
    relay = splice.SpliceRelay(loop, pool, client_inner, real_inner, lambda _r: None)
    relay.start()
    # the real never reads: the socket buffers fill, then bytes stay stuck in a pipe
    payload = b"x" * (8 << 20)
    sender = asyncio.create_task(loop.sock_sendall(client_outer, payload))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if relay.up.waiting:
            break
    assert relay.up.waiting and relay.up.pending > 0
    relay.close()  # e.g. a drain deadline: the stuck bytes are dropped with their pipe
    sender.cancel()
    assert pool._idle == []  # the stuck pipe was closed, not pooled
    for s in (client_outer, real_outer):
        s.close()
    pool.close()
    await asyncio.sleep(0)
    assert fds() == before
