"""The splice relay says which side ended a stream first (the engine's mass-close rule counts
only streams the real closed): over socketpairs, an EOF or a reset from the real's socket
reads as the real's, one from the client's as the client's, a close by the gateway as
neither."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from xmppgw.net import splice

pytestmark = pytest.mark.skipif(not splice.AVAILABLE, reason="no os.splice on this platform")


async def relay_ended(end: str) -> bool | None:
    """Start a relay, end it as `end` says, return its `real_first`."""
    loop = asyncio.get_running_loop()
    client_outer, client_inner = socket.socketpair()
    real_outer, real_inner = socket.socketpair()
    for s in (client_outer, client_inner, real_outer, real_inner):
        s.setblocking(False)
    pool = splice.PipePool()
    ended = asyncio.Event()
    relay = splice.SpliceRelay(loop, pool, client_inner, real_inner, lambda _r: ended.set())
    relay.start()
    if end == "gateway":
        relay.close()
    else:
        first, second = (real_outer, client_outer) if end.startswith("real") else (
            client_outer, real_outer)
        if end.endswith("reset"):  # SO_LINGER 0 (over TCP the close would send a RST)
            first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            first.close()
        else:
            first.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.05)  # the relay sees the first end alone
        second.close()
    await asyncio.wait_for(ended.wait(), 5)
    for s in (client_outer, real_outer):
        s.close()
    pool.close()
    return relay.real_first


@pytest.mark.parametrize("end, real_first", [
    ("real", True), ("real-reset", True), ("client", False), ("client-reset", False),
    ("gateway", None)])
async def test_which_side_ended_first(end: str, real_first: bool | None) -> None:
    assert await relay_ended(end) is real_first
