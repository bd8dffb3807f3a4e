"""Toxic types: their attributes (as Toxiproxy 2.x names and orders them) and their behaviour.

A *spec* (`ToxicSpec`) is the toxic as the API sees it: shared by every connection of a proxy.
A *stage* is one toxic on one link (one direction of one connection). A link feeds each chunk
through its stages in order; each stage's `process` passes on zero or more chunks by awaiting
`emit`, and `on_eof` runs when the source ends or a stage upstream of it closed the link.

Whether a toxic applies to a link (its `toxicity`) is decided when the stage is made: at the
link's start or when the toxic is added, and again when the toxic is updated.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chaos.toxiproxy.engine import Link

# type -> (Go struct name, attribute names in Go's field order). "noop" is registered in Go too.
TOXIC_TYPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "noop": ("NoopToxic", ()),
    "latency": ("LatencyToxic", ("latency", "jitter")),
    "bandwidth": ("BandwidthToxic", ("rate",)),
    "slow_close": ("SlowCloseToxic", ("delay",)),
    "timeout": ("TimeoutToxic", ("timeout",)),
    "reset_peer": ("ResetToxic", ("timeout",)),
    "slicer": ("SlicerToxic", ("average_size", "size_variation", "delay")),
    "limit_data": ("LimitDataToxic", ("bytes",)),
}

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


class Chunk:
    """Bytes read from the source, with the loop time they arrived (latency counts from it)."""

    __slots__ = ("data", "ts")

    def __init__(self, data: bytes, ts: float) -> None:
        self.data = data
        self.ts = ts


Emit = Callable[[Chunk], Awaitable[None]]


class ToxicSpec:
    """A toxic as configured through the API."""

    def __init__(self, name: str, type_: str, stream: str, direction: str, toxicity: float,
                 attributes: dict[str, int]) -> None:
        self.name = name
        self.type = type_
        self.stream = stream          # as given by the client (Go keeps it verbatim)
        self.direction = direction    # "upstream" or "downstream"
        self.toxicity = toxicity
        self.attributes = attributes

    def to_json(self) -> dict[str, Any]:
        return {"attributes": dict(self.attributes), "name": self.name, "type": self.type,
                "stream": self.stream, "toxicity": float32_json(self.toxicity)}


def to_float32(value: float) -> float:
    """The nearest float32 (Toxiproxy keeps toxicity as one)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def float32_json(value: float) -> float | int:
    """As Go's encoding/json prints a float32: the shortest decimal that reads back as the
    same float32 (0.3, not 0.30000001192092896), and 1 rather than 1.0."""
    if value.is_integer() and abs(value) < 1e21:
        return int(value)
    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        if to_float32(float(text)) == value:
            return float(text)
    return value


def default_attributes(type_: str) -> dict[str, int]:
    return {field: 0 for field in TOXIC_TYPES[type_][1]}


class Stage:
    """One toxic on one link. The base class passes data through untouched."""

    def __init__(self, spec: ToxicSpec, link: Link) -> None:
        self.spec = spec
        self.link = link
        self.applies = False
        self.removed = False
        self._sleeper: asyncio.Future[bool] | None = None
        self.roll()

    def roll(self) -> None:
        self.applies = random.random() < self.spec.toxicity

    def attr(self, name: str) -> int:
        return self.spec.attributes.get(name, 0)

    # -- life cycle -------------------------------------------------------------------------
    def attach(self) -> None:
        """The stage joined a running link (start, add, or update after `roll`)."""

    def detach(self) -> None:
        """The stage leaves the link (toxic removed or updated, or the link ends)."""

    # -- data ---------------------------------------------------------------------------------
    async def process(self, chunk: Chunk, emit: Emit) -> None:
        await emit(chunk)

    async def on_eof(self) -> None:
        """The data before this stage has ended; the link closes after every stage's on_eof."""

    # -- interruptible sleep --------------------------------------------------------------------
    async def sleep(self, seconds: float) -> bool:
        """Sleep; True if interrupted (the toxic was updated or removed, or the link closes)."""
        if seconds <= 0:
            return False
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._sleeper = fut
        handle = loop.call_later(seconds, _resolve, fut, False)
        try:
            return await fut
        finally:
            handle.cancel()
            self._sleeper = None

    def interrupt(self) -> None:
        if self._sleeper is not None:
            _resolve(self._sleeper, True)


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


class Latency(Stage):
    """Each chunk leaves `latency` ± `jitter` ms after it arrived."""

    def delay(self) -> float:
        delay = self.attr("latency")
        jitter = self.attr("jitter")
        if jitter > 0:
            delay += random.randrange(jitter * 2) - jitter
        return delay / 1000.0

    async def process(self, chunk: Chunk, emit: Emit) -> None:
        loop = asyncio.get_running_loop()
        wait = self.delay() - (loop.time() - chunk.ts)
        if wait > 0:
            await self.sleep(wait)  # interrupted: pass it on at once (Go does the same)
            chunk.ts = loop.time()
        await emit(chunk)


class Bandwidth(Stage):
    """At most `rate` KB/s (1 KB = 1000 bytes); chunks above 100 ms worth are split."""

    def __init__(self, spec: ToxicSpec, link: Link) -> None:
        super().__init__(spec, link)
        self._clock = 0.0

    async def process(self, chunk: Chunk, emit: Emit) -> None:
        rate = self.attr("rate")
        if rate <= 0:
            await emit(chunk)
            return
        loop = asyncio.get_running_loop()
        data = chunk.data
        piece_size = rate * 100
        while data:
            piece, data = data[:piece_size], data[piece_size:]
            now = loop.time()
            self._clock = max(now, self._clock) + len(piece) / (rate * 1000.0)
            if await self.sleep(self._clock - now):
                self._clock = loop.time()
                await emit(Chunk(piece + data, chunk.ts))  # interrupted: drop nothing
                return
            await emit(Chunk(piece, chunk.ts))


class SlowClose(Stage):
    """The close waits `delay` ms."""

    async def on_eof(self) -> None:
        await self.sleep(self.attr("delay") / 1000.0)


class Timeout(Stage):
    """Drops all data; closes the link after `timeout` ms (never if 0). Like Toxiproxy,
    removing a timeout toxic that applied closes the link."""

    def __init__(self, spec: ToxicSpec, link: Link) -> None:
        super().__init__(spec, link)
        self._timer: asyncio.TimerHandle | None = None

    def attach(self) -> None:
        timeout = self.attr("timeout")
        if self.applies and timeout > 0:
            self._timer = asyncio.get_running_loop().call_later(
                timeout / 1000.0, self.link.request_close, self)

    def detach(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def process(self, chunk: Chunk, emit: Emit) -> None:
        return  # dropped on the floor


class ResetPeer(Stage):
    """On the first data (or the end of it), waits `timeout` ms, then resets the connection:
    SO_LINGER 0 and close, so both peers get a TCP RST. The data is dropped."""

    async def process(self, chunk: Chunk, emit: Emit) -> None:
        await asyncio.sleep(self.attr("timeout") / 1000.0)  # not interruptible, as in Go
        self.link.request_close(self, reset=True)

    async def on_eof(self) -> None:
        await asyncio.sleep(self.attr("timeout") / 1000.0)
        self.link.reset_on_close = True


class Slicer(Stage):
    """Slices each chunk into pieces of about `average_size` ± `size_variation` bytes, with
    `delay` µs after each."""

    def offsets(self, size: int) -> list[tuple[int, int]]:
        average = self.attr("average_size")
        variation = self.attr("size_variation")
        out: list[tuple[int, int]] = []
        stack = [(0, size)]
        while stack:
            start, end = stack.pop()
            if (end - start) - average <= variation or end - start <= 1:
                out.append((start, end))
                continue
            mid = start + (end - start) // 2
            if variation > 0:
                mid += random.randrange(variation * 2) - variation
            mid = min(max(mid, start + 1), end - 1)
            stack.append((mid, end))
            stack.append((start, mid))
        return out

    async def process(self, chunk: Chunk, emit: Emit) -> None:
        data = chunk.data
        delay = self.attr("delay") / 1_000_000.0
        for start, end in self.offsets(len(data)):
            await emit(Chunk(data[start:end], chunk.ts))
            if delay > 0:
                if await self.sleep(delay):
                    if end < len(data):
                        await emit(Chunk(data[end:], chunk.ts))
                    return
            else:
                await asyncio.sleep(0)


class LimitData(Stage):
    """Passes `bytes` bytes in all, then closes the link. The count is per link and lasts
    while the toxic does (updates keep it)."""

    def __init__(self, spec: ToxicSpec, link: Link) -> None:
        super().__init__(spec, link)
        self.transmitted = 0

    async def process(self, chunk: Chunk, emit: Emit) -> None:
        remaining = max(self.attr("bytes") - self.transmitted, 0)
        data = chunk.data[:remaining]
        if data:
            await emit(Chunk(data, chunk.ts))
            self.transmitted += len(data)
        if self.attr("bytes") - self.transmitted <= 0:
            self.link.request_close(self)


STAGES: dict[str, type[Stage]] = {
    "noop": Stage,
    "latency": Latency,
    "bandwidth": Bandwidth,
    "slow_close": SlowClose,
    "timeout": Timeout,
    "reset_peer": ResetPeer,
    "slicer": Slicer,
    "limit_data": LimitData,
}


def make_stage(spec: ToxicSpec, link: Link) -> Stage:
    return STAGES[spec.type](spec, link)
