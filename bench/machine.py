"""What the pure connection machine costs, in-process: deterministic figures that a busy
machine does not skew (no sockets, no event loop, no other process).

    python3 bench/machine.py memory [--streams 3000]   bytes per parked stream (tracemalloc)
    python3 bench/machine.py cpu [--opens 20000]        CPU µs per stream open (process time)
    python3 bench/machine.py profile [--opens 5000]     cProfile of the opens (call counts)

`memory`: N connections taken through header -> real's header and features, then held
("parked before STARTTLS"), and again after `<proceed/>`; tracemalloc's growth divided by N.
It counts what Python allocates for the machine (expat included: pyexpat allocates through
PyObject_Malloc), not the transports or sockets the asyncio layer adds.

`cpu`: the machine's share of one stream open as the bench's load makes it (accept, header,
dial, connected, the real's header and features, the client goes), CPU time per open.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

# BENCH_XMPPGW_SRC: another checkout's xmppgw (a before/after comparison), as for bench.py
sys.path.insert(0, os.environ.get("BENCH_XMPPGW_SRC", str(Path(__file__).resolve().parent.parent)))

from xmppgw.config import (
    Address,
    Config,
    Faildetect,
    GatewayConfig,
    RealConfig,
    ServerfarmConfig,
    VserverConfig,
)
from xmppgw.connection import ClientConnection
from xmppgw.slb.farm import Serverfarm

HEADER = (b"<?xml version='1.0'?><stream:stream to='example.test' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
REPLY = (b"<?xml version='1.0'?><stream:stream from='example.test' id='bench-0001' "
         b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
         b"version='1.0'><stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>"
         b"<required/></starttls></stream:features>")
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
PROCEED = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"


class _Vserver:
    def __init__(self, config: VserverConfig) -> None:
        self.config = config
        self.name = config.name
        self.admission = None


class _Engine:
    def __init__(self, config: Config, farm: Serverfarm) -> None:
        self.config = config
        self.farms = {farm.name: farm}

    def sync_peers(self, farm: Serverfarm) -> None:
        pass


def world() -> tuple[_Engine, _Vserver]:
    """One starttls vserver in front of one farm of two reals, as bench.py configures it."""
    reals = tuple(RealConfig(Address(f"10.0.0.{i + 1}", None),
                             faildetect=Faildetect(numconns=100, numclients=100))
                  for i in range(2))
    farm_cfg = ServerfarmConfig("F", reals=reals)
    vs = VserverConfig("vs", Address("192.0.2.1", 5222), "starttls", serverfarm="F")
    gw = GatewayConfig(name="gw.example.test", domains=("example.test",))
    config = Config("bench.toml", gw, (vs,), (farm_cfg,))
    return _Engine(config, Serverfarm(farm_cfg, 0.0)), _Vserver(vs)


def parked(engine: _Engine, vserver: _Vserver, i: int, now: float) -> ClientConnection:
    """A connection that sent its header and got the real's header and features."""
    conn = ClientConnection(engine, vserver)
    conn.start((f"198.51.{i >> 8 & 255}.{i & 255}", 40000 + i % 20000), ("192.0.2.1", 5222),
               now)
    conn.client_data(HEADER, now)
    conn.attempt_connected(1, now)
    conn.attempt_data(1, REPLY, now)
    return conn


def one_open(engine: _Engine, vserver: _Vserver, i: int, now: float) -> None:
    """The bench's stream open: header, features, the client closes, the real follows."""
    conn = parked(engine, vserver, i, now)
    conn.client_eof(now)
    conn.client_lost(now)
    conn.real_eof(now)
    conn.real_lost(now)


def measure_memory(streams: int) -> dict[str, float]:
    engine, vserver = world()
    for i in range(200):  # warm: lazy imports, interned names, caches
        parked(engine, vserver, i, 0.0)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    held = [parked(engine, vserver, i, 1.0) for i in range(streams)]
    gc.collect()
    before = (tracemalloc.get_traced_memory()[0] - base) / streams
    snap = tracemalloc.take_snapshot()
    for conn in held:
        conn.client_data(STARTTLS, 2.0)
        conn.real_data(PROCEED, 2.0)
    gc.collect()
    after = (tracemalloc.get_traced_memory()[0] - base) / streams
    tracemalloc.stop()
    top = snap.statistics("lineno")[:12]
    return {"streams": streams, "bytes_parked_before_starttls": round(before),
            "bytes_after_proceed": round(after),
            "top": [f"{s.size / streams:8.0f} B/stream  {s.traceback}" for s in top]}


def measure_cpu(opens: int) -> dict[str, float]:
    engine, vserver = world()
    for i in range(500):
        one_open(engine, vserver, i, 0.0)
    best = float("inf")
    for _ in range(5):  # the best of 5: another process's interference only adds time
        t0 = time.process_time()
        for i in range(opens):
            one_open(engine, vserver, i, 1.0)
        best = min(best, time.process_time() - t0)
    return {"opens": opens, "cpu_us_per_open": round(1e6 * best / opens, 2)}


def profile(opens: int) -> str:
    engine, vserver = world()
    for i in range(500):
        one_open(engine, vserver, i, 0.0)
    prof = cProfile.Profile()
    prof.enable()
    for i in range(opens):
        one_open(engine, vserver, i, 1.0)
    prof.disable()
    buf = io.StringIO()
    buf.write(f"# cProfile of {opens} stream opens through the machine alone "
              "(bench/machine.py profile)\n")
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
    return buf.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["memory", "cpu", "profile"])
    p.add_argument("--streams", type=int, default=3000)
    p.add_argument("--opens", type=int, default=20000)
    a = p.parse_args()
    out: Any
    if a.what == "memory":
        out = measure_memory(a.streams)
        for line in out.pop("top"):
            print(line, file=sys.stderr)
    elif a.what == "cpu":
        out = measure_cpu(a.opens)
    else:
        print(profile(min(a.opens, 5000)))
        return
    print(out)


if __name__ == "__main__":
    main()
