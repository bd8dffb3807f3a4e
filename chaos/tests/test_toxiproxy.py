"""The bundled Toxiproxy server on its own: the HTTP API (shapes, status codes, error bodies),
each toxic's behaviour on either stream, toxicity, enable/disable, live toxic changes, and
toxiproxy-python (the client the chaos suite drives it with) against it, unchanged.

Everything binds 127.0.0.1 on ports the kernel picks. Time is asserted only where a toxic is
about time, and then with wide bounds (lower bounds mostly)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chaos.toxiproxy import VERSION, ThreadedToxiproxy, ToxiproxyServer

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


# -- fixtures: the server, upstreams ---------------------------------------------------------------

class Api:
    def __init__(self, server: ToxiproxyServer, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http

    async def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if raw is not None:
            kwargs["data"] = raw
        elif body is not None:
            kwargs["json"] = body
        async with self.http.request(method, self.server.url + path, **kwargs) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def proxy(self, upstream: str, name: str = "p", **extra: Any) -> tuple[str, int]:
        status, body = await self.call("POST", "/proxies", {
            "name": name, "listen": f"{LOOPBACK}:0", "upstream": upstream, **extra})
        assert status == 201, body
        host, port = body["listen"].rsplit(":", 1)
        return host, int(port)

    async def toxic(self, proxy: str, **toxic: Any) -> dict[str, Any]:
        status, body = await self.call("POST", f"/proxies/{proxy}/toxics", toxic)
        assert status == 200, body
        return body


@pytest.fixture
async def tp() -> AsyncIterator[Api]:
    server = ToxiproxyServer(LOOPBACK, 0)
    await server.start()
    async with aiohttp.ClientSession() as http:
        yield Api(server, http)
    await server.stop()


class Upstream:
    """A TCP server on loopback: echoes, or records what it gets, or greets and closes."""

    def __init__(self, mode: str = "echo", greeting: bytes = b"") -> None:
        self.mode = mode
        self.greeting = greeting
        self.received = bytearray()
        self.reads = 0
        self.closed = asyncio.Event()
        self.server: asyncio.AbstractServer | None = None

    @property
    def addr(self) -> str:
        assert self.server is not None
        return f"{LOOPBACK}:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> Upstream:
        self.server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.greeting:
                writer.write(self.greeting)
                await writer.drain()
            if self.mode == "greet-close":
                return
            while data := await reader.read(65536):
                self.reads += 1
                self.received += data
                if self.mode == "echo":
                    writer.write(data)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def echo() -> AsyncIterator[Upstream]:
    up = await Upstream("echo").start()
    yield up
    await up.stop()


async def connect(addr: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*addr)


async def read_until_eof(reader: asyncio.StreamReader,
                         timeout: float = 5.0) -> tuple[bytes, int, float]:
    """(bytes, number of reads that returned data, loop time of the EOF)."""
    loop = asyncio.get_running_loop()
    data, reads = bytearray(), 0
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            data += chunk
            reads += 1
    return bytes(data), reads, loop.time()


async def read_exactly(reader: asyncio.StreamReader, n: int,
                       timeout: float = 5.0) -> tuple[bytes, int]:
    data, reads = bytearray(), 0
    async with asyncio.timeout(timeout):
        while len(data) < n:
            chunk = await reader.read(n - len(data))
            if not chunk:
                break
            data += chunk
            reads += 1
    return bytes(data), reads


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     payload: bytes = b"ping") -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    writer.write(payload)
    await writer.drain()
    data, _ = await read_exactly(reader, len(payload))
    assert data == payload
    return loop.time() - start


# -- the HTTP API ----------------------------------------------------------------------------------

async def test_version(tp: Api) -> None:
    async with tp.http.get(tp.server.url + "/version") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json;charset=utf-8"
        assert await resp.text() == f'{{"version": "{VERSION}"}}\n'


async def test_proxy_create_show_list_delete(tp: Api, echo: Upstream) -> None:
    status, body = await tp.call("POST", "/proxies", {
        "name": "p", "listen": f"{LOOPBACK}:0", "upstream": echo.addr})
    assert status == 201
    assert list(body) == ["name", "listen", "upstream", "enabled", "toxics"]
    assert body["name"] == "p" and body["upstream"] == echo.addr
    assert body["enabled"] is True and body["toxics"] == []
    host, port = body["listen"].rsplit(":", 1)
    assert host == LOOPBACK and int(port) > 0  # port 0 replaced by the port picked

    assert await tp.call("GET", "/proxies/p") == (200, body)
    assert await tp.call("GET", "/proxies") == (200, {"p": body})
    assert await tp.call("POST", "/proxies", {"name": "p", "upstream": echo.addr}) == (
        409, {"error": "proxy already exists", "status": 409})

    assert (await tp.call("DELETE", "/proxies/p"))[0] == 204
    assert await tp.call("GET", "/proxies/p") == (
        404, {"error": "proxy not found", "status": 404})
    assert await tp.call("DELETE", "/proxies/p") == (
        404, {"error": "proxy not found", "status": 404})
    assert await tp.call("GET", "/proxies") == (200, {})
    with pytest.raises(OSError):
        await connect((host, int(port)))


async def test_proxy_create_errors(tp: Api) -> None:
    assert await tp.call("POST", "/proxies", {"upstream": "x:1"}) == (
        400, {"error": "missing required field: name", "status": 400})
    assert await tp.call("POST", "/proxies", {"name": "a"}) == (
        400, {"error": "missing required field: upstream", "status": 400})
    assert await tp.call("POST", "/proxies", raw=b"") == (
        400, {"error": "bad request body: EOF", "status": 400})
    status, body = await tp.call("POST", "/proxies", raw=b"{nope")
    assert status == 400 and body["error"].startswith("bad request body: ")
    status, body = await tp.call("POST", "/proxies", {"name": 5, "upstream": "x:1"})
    assert status == 400 and body["error"].startswith(
        "bad request body: json: cannot unmarshal number into Go struct field")
    # a listen address that can't be bound is a 500, and the proxy is not created
    taken = socket.socket()
    taken.bind((LOOPBACK, 0))
    taken.listen()
    try:
        status, body = await tp.call("POST", "/proxies", {
            "name": "a", "upstream": "x:1", "listen": "{}:{}".format(*taken.getsockname())})
        assert status == 500 and body["status"] == 500
        assert body["error"].startswith("listen tcp ") and "address already in use" in body[
            "error"]
    finally:
        taken.close()
    assert await tp.call("GET", "/proxies") == (200, {})
    # Go's decoder: keys match without regard to case, trailing bytes are ignored
    status, body = await tp.call("POST", "/proxies", raw=b'{"NAME":"b","Upstream":"x:1",'
                                 b'"listen":"127.0.0.1:0","enabled":false} trailing')
    assert status == 201 and body["name"] == "b" and body["enabled"] is False


async def test_routing_and_refusals(tp: Api) -> None:
    status, text = await tp.call("GET", "/nowhere")
    assert (status, text) == (404, "404 page not found\n")
    status, _ = await tp.call("PUT", "/proxies")
    assert status == 405
    status, text = await tp.call("GET", "/proxies", headers={"User-Agent": "Mozilla/5.0"})
    assert (status, text) == (403, "User agent not allowed\n")


async def test_proxy_update_disable_enable(tp: Api, echo: Upstream) -> None:
    addr = await tp.proxy(echo.addr)
    reader, writer = await connect(addr)
    await round_trip(reader, writer)

    status, body = await tp.call("POST", "/proxies/p", {"enabled": False})
    assert status == 200 and body["enabled"] is False
    assert body["listen"] == "{}:{}".format(*addr)
    # the existing connection is closed and the listener is gone
    data, _, _ = await read_until_eof(reader)
    assert data == b""
    writer.close()
    with pytest.raises(OSError):
        await connect(addr)

    status, body = await tp.call("PATCH", "/proxies/p", {"enabled": True})
    assert status == 200 and body["enabled"] is True and body["listen"] == "{}:{}".format(*addr)
    reader, writer = await connect(addr)
    await round_trip(reader, writer)

    # a new upstream restarts the proxy: the connection is dropped
    other = await Upstream("greet-close", greeting=b"other").start()
    status, body = await tp.call("POST", "/proxies/p", {"upstream": other.addr})
    assert status == 200 and body["upstream"] == other.addr and body["enabled"] is True
    data, _, _ = await read_until_eof(reader)
    assert data == b""
    writer.close()
    host, port = body["listen"].rsplit(":", 1)
    reader, writer = await connect((host, int(port)))
    data, _, _ = await read_until_eof(reader)
    assert data == b"other"
    writer.close()
    await other.stop()

    assert await tp.call("POST", "/proxies/nope", {"enabled": False}) == (
        404, {"error": "proxy not found", "status": 404})


async def test_toxic_crud(tp: Api, echo: Upstream) -> None:
    await tp.proxy(echo.addr)
    status, body = await tp.call("POST", "/proxies/p/toxics", {"type": "latency"})
    assert status == 200
    assert body == {"attributes": {"latency": 0, "jitter": 0}, "name": "latency_downstream",
                    "type": "latency", "stream": "downstream", "toxicity": 1}
    assert list(body) == ["attributes", "name", "type", "stream", "toxicity"]

    status, up = await tp.call("POST", "/proxies/p/toxics", {
        "name": "slow", "type": "slicer", "stream": "upstream", "toxicity": 0.5,
        "attributes": {"average_size": 10, "delay": 5, "unknown": "ignored"}})
    assert status == 200
    assert up == {"attributes": {"average_size": 10, "size_variation": 0, "delay": 5},
                  "name": "slow", "type": "slicer", "stream": "upstream", "toxicity": 0.5}

    # upstream toxics are listed first, as Go does
    assert await tp.call("GET", "/proxies/p/toxics") == (200, [up, body])
    assert (await tp.call("GET", "/proxies/p"))[1]["toxics"] == [up, body]
    assert await tp.call("GET", "/proxies/p/toxics/slow") == (200, up)

    assert await tp.call("POST", "/proxies/p/toxics", {"type": "latency"}) == (
        409, {"error": "toxic already exists", "status": 409})
    assert await tp.call("POST", "/proxies/p/toxics", {"type": "latency", "stream": "sideways"}
                         ) == (400, {"error": "stream was invalid, can be either upstream or "
                                              "downstream", "status": 400})
    assert await tp.call("POST", "/proxies/p/toxics", {"type": "explode"}) == (
        400, {"error": "invalid toxic type", "status": 400})
    status, err = await tp.call("POST", "/proxies/p/toxics", {
        "name": "bad", "type": "latency", "attributes": {"latency": "1s"}})
    assert status == 400 and err["error"].startswith(
        "bad request body: json: cannot unmarshal string into Go struct field")
    status, err = await tp.call("POST", "/proxies/p/toxics", {
        "name": "bad", "type": "latency", "attributes": {"latency": 1.5}})
    assert status == 400 and "cannot unmarshal number 1.5" in err["error"]
    assert await tp.call("POST", "/proxies/nope/toxics", {"type": "latency"}) == (
        404, {"error": "proxy not found", "status": 404})

    # update merges attributes; toxicity kept unless given
    status, upd = await tp.call("POST", "/proxies/p/toxics/latency_downstream", {
        "attributes": {"jitter": 7}})
    assert status == 200 and upd["attributes"] == {"latency": 0, "jitter": 7}
    assert upd["toxicity"] == 1
    status, upd = await tp.call("PATCH", "/proxies/p/toxics/latency_downstream", {
        "attributes": {"latency": 9}, "toxicity": 0.25})
    assert upd["attributes"] == {"latency": 9, "jitter": 7} and upd["toxicity"] == 0.25
    status, upd = await tp.call("POST", "/proxies/p/toxics/latency_downstream", {
        "toxicity": 0.3333333333})
    assert upd["toxicity"] == 0.33333334  # kept as a float32, printed as Go prints one
    assert await tp.call("POST", "/proxies/p/toxics/nope", {}) == (
        404, {"error": "toxic not found", "status": 404})

    assert (await tp.call("DELETE", "/proxies/p/toxics/slow"))[0] == 204
    assert await tp.call("GET", "/proxies/p/toxics/slow") == (
        404, {"error": "toxic not found", "status": 404})
    assert await tp.call("DELETE", "/proxies/p/toxics/slow") == (
        404, {"error": "toxic not found", "status": 404})
    assert await tp.call("GET", "/proxies/p/toxics") == (200, [upd])
    await tp.call("POST", "/proxies/p/toxics/latency_downstream", {"toxicity": 1})

    for type_, attrs in [("bandwidth", {"rate": 0}), ("slow_close", {"delay": 0}),
                         ("timeout", {"timeout": 0}), ("reset_peer", {"timeout": 0}),
                         ("limit_data", {"bytes": 0}), ("noop", {})]:
        status, body = await tp.call("POST", "/proxies/p/toxics", {
            "type": type_, "stream": "upstream"})
        assert status == 200 and body["attributes"] == attrs and body["name"] == (
            f"{type_}_upstream")


async def test_populate(tp: Api, echo: Upstream) -> None:
    status, body = await tp.call("POST", "/populate", [
        {"name": "a", "listen": f"{LOOPBACK}:0", "upstream": echo.addr},
        {"name": "b", "listen": f"{LOOPBACK}:0", "upstream": echo.addr, "enabled": False}])
    assert status == 201
    a, b = body["proxies"]
    assert (a["name"], a["enabled"], b["name"], b["enabled"]) == ("a", True, "b", False)
    await tp.toxic("a", type="latency")

    # the same again, with the addresses as they are now: nothing changes (toxics stay)
    status, again = await tp.call("POST", "/populate", [
        {"name": "a", "listen": a["listen"], "upstream": echo.addr}])
    assert status == 201 and again["proxies"][0]["listen"] == a["listen"]
    assert len(again["proxies"][0]["toxics"]) == 1

    # a different upstream replaces the proxy (its toxics go with it)
    status, again = await tp.call("POST", "/populate", [
        {"name": "a", "listen": a["listen"], "upstream": f"{LOOPBACK}:9"}])
    assert status == 201 and again["proxies"][0]["upstream"] == f"{LOOPBACK}:9"
    assert again["proxies"][0]["toxics"] == []

    assert await tp.call("POST", "/populate", [
        {"name": "c", "upstream": "x:1"}, {"name": "d"}]) == (
        400, {"error": "missing required field: upstream at proxy 2", "status": 400,
              "proxies": None})
    assert await tp.call("POST", "/populate", []) == (201, {"proxies": None})
    status, body = await tp.call("POST", "/populate", {"name": "x"})
    assert status == 400 and body["error"].startswith("bad request body: json: cannot")
    assert sorted((await tp.call("GET", "/proxies"))[1]) == ["a", "b"]


async def test_reset(tp: Api, echo: Upstream) -> None:
    addr = await tp.proxy(echo.addr)
    await tp.toxic("p", type="latency", attributes={"latency": 1000})
    await tp.toxic("p", type="limit_data", stream="upstream", attributes={"bytes": 1})
    await tp.call("POST", "/proxies/p", {"enabled": False})
    status, _ = await tp.call("POST", "/reset")
    assert status == 204
    status, body = await tp.call("GET", "/proxies/p")
    assert body["enabled"] is True and body["toxics"] == []
    reader, writer = await connect(addr)
    assert await round_trip(reader, writer, b"x" * 100) < 0.9
    writer.close()


# -- the proxy and its toxics -------------------------------------------------------------------

async def test_plain_proxy_carries_bytes_both_ways(tp: Api, echo: Upstream) -> None:
    addr = await tp.proxy(echo.addr)
    reader, writer = await connect(addr)
    payload = os.urandom(300_000)
    writer.write(payload)
    data, _ = await read_exactly(reader, len(payload))
    assert data == payload
    writer.close()
    await asyncio.wait_for(echo.closed.wait(), 5)  # the client's close reaches the upstream


async def test_unreachable_upstream_closes_client(tp: Api) -> None:
    dead = socket.socket()
    dead.bind((LOOPBACK, 0))
    port = dead.getsockname()[1]
    dead.close()
    addr = await tp.proxy(f"{LOOPBACK}:{port}")
    reader, writer = await connect(addr)
    data, _, _ = await read_until_eof(reader)
    assert data == b""
    writer.close()


async def test_latency_and_jitter(tp: Api, echo: Upstream) -> None:
    addr = await tp.proxy(echo.addr)
    reader, writer = await connect(addr)
    assert await round_trip(reader, writer) < 0.5
    await tp.toxic("p", type="latency", attributes={"latency": 200})
    assert 0.19 <= await round_trip(reader, writer) < 3
    await tp.toxic("p", type="latency", stream="upstream", attributes={"latency": 100,
                                                                       "jitter": 50})
    assert 0.24 <= await round_trip(reader, writer) < 3  # 200 + (100 ± 50)
    # pipelined: chunks sent 50 ms apart each take the latency, not the sum of latencies
    await tp.call("DELETE", "/proxies/p/toxics/latency_upstream")
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(5):
        writer.write(b"x")
        await asyncio.sleep(0.05)
    data, _ = await read_exactly(reader, 5)
    assert data == b"xxxxx" and loop.time() - start < 1.0
    writer.close()


async def test_bandwidth(tp: Api, echo: Upstream) -> None:
    addr = await tp.proxy(echo.addr)
    await tp.toxic("p", type="bandwidth", attributes={"rate": 50})  # 50 KB/s
    reader, writer = await connect(addr)
    payload = os.urandom(25_000)  # 0.5 s at 50 KB/s
    loop = asyncio.get_running_loop()
    start = loop.time()
    writer.write(payload)
    data, reads = await read_exactly(reader, len(payload), timeout=10)
    elapsed = loop.time() - start
    assert data == payload
    assert 0.35 <= elapsed < 5
    assert reads >= 3  # sent in 100 ms slices of 5000 bytes
    writer.close()


async def test_slow_close(tp: Api) -> None:
    up = await Upstream("greet-close", greeting=b"bye").start()
    addr = await tp.proxy(up.addr)
    loop = asyncio.get_running_loop()
    start = loop.time()
    reader, writer = await connect(addr)
    data, _, eof = await read_until_eof(reader)
    assert data == b"bye" and eof - start < 0.25  # no toxic: closes at once
    writer.close()

    await tp.toxic("p", type="slow_close", attributes={"delay": 400})
    start = loop.time()
    reader, writer = await connect(addr)
    data, _, eof = await read_until_eof(reader)
    assert data == b"bye"  # the data is not delayed, only the close
    assert 0.38 <= eof - start < 3
    writer.close()
    await up.stop()


async def test_timeout_drops_data_then_closes(tp: Api, echo: Upstream) -> None:
    addr = await tp.proxy(echo.addr)
    await tp.toxic("p", type="timeout", attributes={"timeout": 300})
    loop = asyncio.get_running_loop()
    start = loop.time()
    reader, writer = await connect(addr)
    writer.write(b"hello")
    data, _, eof = await read_until_eof(reader)
    assert data == b""  # the echo never came through
    assert echo.received == b"hello"  # the other stream was untouched
    assert 0.28 <= eof - start < 3
    writer.close()


async def test_timeout_zero_holds_until_removed(tp: Api, echo: Upstream) -> None:
    addr = await tp.proxy(echo.addr)
    await tp.toxic("p", type="timeout", stream="upstream", attributes={"timeout": 0})
    reader, writer = await connect(addr)
    writer.write(b"hello")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.4):
            await reader.read(1)  # neither data nor a close
    assert echo.received == b""
    # as in Go, removing a timeout toxic closes the connections it held
    assert (await tp.call("DELETE", "/proxies/p/toxics/timeout_upstream"))[0] == 204
    data, _, _ = await read_until_eof(reader)
    assert data == b""
    writer.close()
    reader, writer = await connect(addr)  # new connections are clean
    await round_trip(reader, writer)
    writer.close()


async def test_reset_peer(tp: Api, echo: Upstream) -> None:
    addr = await tp.proxy(echo.addr)
    await tp.toxic("p", type="reset_peer", attributes={"timeout": 0})
    reader, writer = await connect(addr)
    writer.write(b"hello")
    with pytest.raises(ConnectionResetError):
        await read_until_eof(reader)
    writer.close()

    # with a timeout: the reset comes that long after the first data
    await tp.call("POST", "/proxies/p/toxics/reset_peer_downstream",
                  {"attributes": {"timeout": 300}})
    loop = asyncio.get_running_loop()
    reader, writer = await connect(addr)
    start = loop.time()
    writer.write(b"hello")
    with pytest.raises(ConnectionResetError):
        await read_until_eof(reader)
    assert 0.28 <= loop.time() - start < 3
    writer.close()


async def test_reset_peer_upstream_resets_the_server_side_too(tp: Api) -> None:
    up = await Upstream("sink").start()
    got_reset = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(100):
                pass
        except ConnectionResetError:
            got_reset.set()
        writer.close()

    server = await asyncio.start_server(handle, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    addr = await tp.proxy(f"{LOOPBACK}:{port}")
    await tp.toxic("p", type="reset_peer", stream="upstream")
    reader, writer = await connect(addr)
    writer.write(b"x")
    with pytest.raises(ConnectionResetError):
        await read_until_eof(reader)
    await asyncio.wait_for(got_reset.wait(), 3)
    writer.close()
    server.close()
    await up.stop()


async def test_slicer(tp: Api, echo: Upstream) -> None:
    addr = await tp.proxy(echo.addr)
    payload = os.urandom(2000)
    reader, writer = await connect(addr)
    writer.write(payload)
    data, plain_reads = await read_exactly(reader, len(payload))
    assert data == payload

    await tp.toxic("p", type="slicer", attributes={"average_size": 20, "size_variation": 10,
                                                    "delay": 500})
    writer.write(payload)
    data, sliced_reads = await read_exactly(reader, len(payload))
    assert data == payload  # the same bytes, in order
    assert sliced_reads >= 10 and sliced_reads > plain_reads  # ~100 slices of ~20 bytes
    writer.close()


async def test_slicer_upstream(tp: Api) -> None:
    sink = await Upstream("sink").start()
    addr = await tp.proxy(sink.addr)
    await tp.toxic("p", type="slicer", stream="upstream",
                   attributes={"average_size": 50, "delay": 1000})
    _reader, writer = await connect(addr)
    payload = os.urandom(1000)
    writer.write(payload)
    writer.write_eof()
    await asyncio.wait_for(sink.closed.wait(), 5)
    assert bytes(sink.received) == payload and sink.reads >= 5
    writer.close()
    await sink.stop()


async def test_limit_data_downstream(tp: Api, echo: Upstream) -> None:
    addr = await tp.proxy(echo.addr)
    await tp.toxic("p", type="limit_data", attributes={"bytes": 100})
    reader, writer = await connect(addr)
    payload = os.urandom(1000)
    writer.write(payload)
    data, _, _ = await read_until_eof(reader)
    assert data == payload[:100]
    writer.close()


async def test_limit_data_upstream(tp: Api) -> None:
    sink = await Upstream("sink").start()
    addr = await tp.proxy(sink.addr)
    await tp.toxic("p", type="limit_data", stream="upstream", attributes={"bytes": 10})
    reader, writer = await connect(addr)
    writer.write(b"0123456789abcdef")
    data, _, _ = await read_until_eof(reader)
    assert data == b""
    await asyncio.wait_for(sink.closed.wait(), 5)
    assert bytes(sink.received) == b"0123456789"
    writer.close()
    await sink.stop()


async def test_limit_data_counts_across_chunks(tp: Api, echo: Upstream) -> None:
    addr = await tp.proxy(echo.addr)
    await tp.toxic("p", type="limit_data", attributes={"bytes": 25})
    reader, writer = await connect(addr)
    received = b""
    for _ in range(2):
        writer.write(b"x" * 10)
        chunk, _ = await read_exactly(reader, 10)
        received += chunk
    writer.write(b"y" * 10)
    rest, _, _ = await read_until_eof(reader)
    assert received + rest == b"x" * 20 + b"y" * 5
    writer.close()


async def test_toxicity(tp: Api, echo: Upstream) -> None:
    addr = await tp.proxy(echo.addr)
    await tp.toxic("p", type="limit_data", toxicity=0, attributes={"bytes": 1})
    for _ in range(5):  # toxicity 0 never applies
        reader, writer = await connect(addr)
        assert await round_trip(reader, writer, b"abc") < 1
        writer.close()

    # 0.5: decided per connection; over 30 connections both outcomes show up
    await tp.call("POST", "/proxies/p/toxics/limit_data_downstream", {"toxicity": 0.5})
    outcomes = set()
    for _ in range(30):
        reader, writer = await connect(addr)
        writer.write(b"ab")
        data, _ = await read_exactly(reader, 2)
        outcomes.add(data)
        writer.close()
    assert outcomes == {b"a", b"ab"}


async def test_toxics_change_on_live_connections_without_losing_bytes(
        tp: Api, echo: Upstream) -> None:
    addr = await tp.proxy(echo.addr)
    reader, writer = await connect(addr)
    await tp.toxic("p", name="s_down", type="slicer",
                   attributes={"average_size": 700, "size_variation": 300, "delay": 100})
    await tp.toxic("p", name="s_up", type="slicer", stream="upstream",
                   attributes={"average_size": 1000, "size_variation": 500})
    await tp.toxic("p", name="bw", type="bandwidth", attributes={"rate": 2000})
    payload = os.urandom(400_000)

    async def send() -> None:
        for i in range(0, len(payload), 10_000):
            writer.write(payload[i:i + 10_000])
            await writer.drain()
            await asyncio.sleep(0.002)

    async def meddle() -> None:
        await asyncio.sleep(0.05)
        await tp.toxic("p", name="lat", type="latency", attributes={"latency": 20,
                                                                    "jitter": 10})
        await asyncio.sleep(0.05)
        await tp.call("POST", "/proxies/p/toxics/bw", {"attributes": {"rate": 3000}})
        await tp.call("DELETE", "/proxies/p/toxics/s_down")
        await asyncio.sleep(0.05)
        await tp.call("DELETE", "/proxies/p/toxics/lat")
        await tp.toxic("p", name="noop", type="noop", stream="upstream")
        await tp.call("DELETE", "/proxies/p/toxics/s_up")

    sent = asyncio.create_task(send())
    meddled = asyncio.create_task(meddle())
    data, _ = await read_exactly(reader, len(payload), timeout=20)
    await sent
    await meddled
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(payload).hexdigest()
    writer.close()


async def test_delete_proxy_closes_connections(tp: Api, echo: Upstream) -> None:
    addr = await tp.proxy(echo.addr)
    await tp.toxic("p", type="latency", attributes={"latency": 10_000})
    reader, writer = await connect(addr)
    writer.write(b"held in the latency toxic")
    await asyncio.sleep(0.1)
    assert (await tp.call("DELETE", "/proxies/p"))[0] == 204
    data, _, _ = await read_until_eof(reader, timeout=2)
    assert data == b""
    writer.close()


# -- toxiproxy-python against it ------------------------------------------------------------------

class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def threaded_echo() -> Iterator[str]:
    server = _EchoServer((LOOPBACK, 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "{}:{}".format(*server.server_address)
    server.shutdown()
    server.server_close()


@pytest.fixture
def client() -> Iterator[Any]:
    from toxiproxy import Toxiproxy
    from toxiproxy.api import APIConsumer

    saved = (APIConsumer.host, APIConsumer.port)
    with ThreadedToxiproxy(LOOPBACK, 0) as server:
        toxiproxy = Toxiproxy()
        toxiproxy.update_api_consumer(server.host, server.port)
        try:
            yield toxiproxy
        finally:
            APIConsumer.host, APIConsumer.port = saved


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _echo_once(listen: str, payload: bytes = b"ping") -> bytes:
    host, port = listen.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=3) as s:
        s.sendall(payload)
        data = b""
        while len(data) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_toxiproxy_python_proxies(client: Any, threaded_echo: str) -> None:
    from toxiproxy.exceptions import NotFound, ProxyExists
    from toxiproxy.proxy import Proxy

    assert client.running() is True
    assert client.version() == f'{{"version": "{VERSION}"}}\n'.encode()

    proxy = client.create(upstream=threaded_echo, name="echo")
    assert isinstance(proxy, Proxy)
    assert proxy.name == "echo" and proxy.upstream == threaded_echo and proxy.enabled is True
    assert proxy.listen.startswith(f"{LOOPBACK}:") and not proxy.listen.endswith(":0")
    assert _echo_once(proxy.listen) == b"ping"
    with pytest.raises(ProxyExists):
        client.create(upstream=threaded_echo, name="echo")
    from toxiproxy.api import APIConsumer
    with pytest.raises(ProxyExists):  # the server's own 409, past the client's check
        APIConsumer.post("/proxies", json={"name": "echo", "upstream": threaded_echo})

    assert set(client.proxies()) == {"echo"}
    assert client.get_proxy("echo").listen == proxy.listen
    assert client.get_proxy("nope") is None

    # disable / enable and the down() context
    proxy.disable()
    assert proxy.enabled is False and client.get_proxy("echo").enabled is False
    with pytest.raises(OSError):
        _echo_once(proxy.listen)
    proxy.enable()
    assert _echo_once(proxy.listen) == b"ping"
    with proxy.down(), pytest.raises(OSError):
        _echo_once(proxy.listen)
    assert _echo_once(proxy.listen) == b"ping"

    # populate: creates what is missing, keeps what matches, replaces what differs
    listen_a, listen_b = f"{LOOPBACK}:{_free_port()}", f"{LOOPBACK}:{_free_port()}"
    wanted = [{"name": "a", "upstream": threaded_echo, "listen": listen_a},
              {"name": "b", "upstream": threaded_echo, "listen": listen_b}]
    created = client.populate(wanted)
    assert [p.name for p in created] == ["a", "b"]
    assert [p.listen for p in created] == [listen_a, listen_b]
    assert client.populate(wanted) == []
    assert _echo_once(listen_b, b"via b") == b"via b"
    moved = client.populate([{"name": "b", "upstream": proxy.listen, "listen": listen_b}])
    assert [p.upstream for p in moved] == [proxy.listen]
    assert _echo_once(listen_b, b"via echo") == b"via echo"  # b -> echo proxy -> echo

    assert client.destroy(client.get_proxy("a")) is True
    with pytest.raises(NotFound):  # 404 for a proxy that is gone
        APIConsumer.delete("/proxies/a")
    client.destroy_all()
    assert client.proxies() == {}


def test_toxiproxy_python_toxics_and_reset(client: Any, threaded_echo: str) -> None:
    from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

    proxy = client.create(upstream=threaded_echo, name="echo")
    all_toxics = {
        "latency": {"latency": 50, "jitter": 10},
        "bandwidth": {"rate": 100},
        "slow_close": {"delay": 10},
        "timeout": {"timeout": 0},
        "reset_peer": {"timeout": 10},
        "slicer": {"average_size": 10, "size_variation": 5, "delay": 10},
        "limit_data": {"bytes": 1000},
    }
    for type_, attributes in all_toxics.items():
        for stream in ("upstream", "downstream"):
            proxy.add_toxic(type=type_, stream=stream, attributes=attributes)
    toxics = proxy.toxics()
    assert set(toxics) == {f"{t}_{s}" for t in all_toxics for s in ("upstream", "downstream")}
    latency = proxy.get_toxic("latency_downstream")
    assert (latency.type, latency.stream, latency.toxicity, latency.attributes) == (
        "latency", "downstream", 1, {"latency": 50, "jitter": 10})
    assert proxy.get_toxic("nope") is None
    with pytest.raises(ProxyExists):  # 409 for a toxic too
        proxy.add_toxic(type="latency")
    with pytest.raises(InvalidToxic):
        proxy.add_toxic(type="nonsense")
    with pytest.raises(InvalidToxic):
        proxy.add_toxic(type="latency", name="x", stream="sideways")

    for name in list(toxics):
        assert proxy.destroy_toxic(name) is True
    assert proxy.toxics() == {}
    with pytest.raises(NotFound):
        proxy.destroy_toxic("latency_downstream")

    # a toxic added through the client acts: limit_data cuts the echo short
    proxy.add_toxic(type="limit_data", attributes={"bytes": 3}, toxicity=1.0)
    assert _echo_once(proxy.listen, b"abcdef") == b"abc"
    proxy.add_toxic(name="named", type="latency", stream="upstream",
                    attributes={"latency": 1})
    assert proxy.get_toxic("named").stream == "upstream"

    # reset: every proxy enabled, every toxic gone
    proxy.disable()
    assert client.reset() is True
    assert client.get_proxy("echo").enabled is True
    assert proxy.toxics() == {}
    assert _echo_once(proxy.listen, b"abcdef") == b"abcdef"


def test_python_m_chaos_toxiproxy(tmp_path: Path) -> None:
    port = _free_port()
    config = tmp_path / "proxies.json"
    config.write_text(json.dumps([{"name": "from_config", "listen": f"{LOOPBACK}:0",
                                   "upstream": f"{LOOPBACK}:9", "enabled": False}]))
    proc = subprocess.Popen([sys.executable, "-m", "chaos.toxiproxy", "--port", str(port),
                             "--config", str(config)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/version", timeout=1) as r:
                    assert r.read() == f'{{"version": "{VERSION}"}}\n'.encode()
                with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/proxies", timeout=1) as r:
                    assert json.loads(r.read()) == {"from_config": {
                        "name": "from_config", "listen": f"{LOOPBACK}:0",
                        "upstream": f"{LOOPBACK}:9", "enabled": False, "toxics": []}}
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        proc.terminate()
        code = proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0
