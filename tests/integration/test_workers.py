"""`workers = 2`: two processes share the vservers (SO_REUSEPORT) and the SLB state.

Proof that the state is shared, not merely per worker: leastconns balances the reals over
the connections of both workers exactly, and faildetect marks a dead real FAILED after
exactly `numconns` failed attempts in total, wherever they happened.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.backends import EchoBackend
from tests.support.gateway import GatewayProcess

VIP = "127.0.6.31"
BACKENDS = ["127.0.6.41", "127.0.6.42", "127.0.6.43"]
DEAD = "127.0.6.44"
NUMCONNS = 3
HEADER = (b"<?xml version='1.0'?><stream:stream to='example.test' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


def config(control: Path) -> str:
    reals = "".join(f'[[serverfarm.real]]\naddress = "{a}"\n' for a in BACKENDS)
    return f"""
[gateway]
domains = ["example.test"]
workers = 2
log_connect = true
control_socket = "{control}"

[[vserver]]
name = "BALANCED"
virtual = "{VIP}:5222"
serverfarm = "BALANCE"

[[vserver]]
name = "DEADLY"
virtual = "{VIP}:5223"
serverfarm = "HALFDEAD"

[[serverfarm]]
name = "BALANCE"
predictor = "leastconns"
slowstart = 0
{reals}
[[serverfarm]]
name = "HALFDEAD"
hedge_delay = 0
[[serverfarm.real]]
address = "{DEAD}"
faildetect = {{ numconns = {NUMCONNS}, numclients = 100 }}
[[serverfarm.real]]
address = "{BACKENDS[0]}:5222"
"""


@pytest.fixture(scope="module")
def backends() -> Iterator[list[EchoBackend]]:
    started = [EchoBackend(a, 5222) for a in BACKENDS]
    yield started
    for b in started:
        b.close()


@pytest.fixture(scope="module")
def gateway(backends, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("workers")
    gw = GatewayProcess(config(tmp / "ctl.sock"), tmp).start()
    deadline = time.monotonic() + 10
    while len(gw.records("worker_started")) < 2:
        assert time.monotonic() < deadline, gw.log_text()
        time.sleep(0.05)
    yield gw
    gw.stop()


def open_stream(port: int) -> socket.socket:
    sock = socket.create_connection((VIP, port), timeout=10)
    sock.sendall(HEADER)
    got = b""
    while len(got) < len(HEADER):
        got += sock.recv(65536)
    return sock


def test_leastconns_balances_over_both_workers(gateway: GatewayProcess,
                                              backends: list[EchoBackend]) -> None:
    before = [b.accepted for b in backends]
    gateway.settle()
    mark = len(gateway.records("connected"))
    streams = [open_stream(5222) for _ in range(30)]
    try:
        gateway.settle()
        opened = [b.accepted - n for b, n in zip(backends, before, strict=True)]
        workers = Counter(r["worker"] for r in gateway.records("connected")[mark:])
        assert set(workers) == {0, 1}, workers  # the kernel spread them over both
        assert opened == [10, 10, 10], (opened, workers)
        lines = gateway.show("serverfarms", "detail").splitlines()
        block = lines[lines.index("BALANCE predictor = LEASTCONNS, nat = SERVER, "
                                  "interface(s) = <none>"):]
        assert block[3:6] == [f"{a}, weight = 8, OPERATIONAL, conns = 10" for a in BACKENDS]
        assert block[6] == "Total connections = 30"
    finally:
        for s in streams:
            s.close()


def test_faildetect_counts_are_gateway_wide(gateway: GatewayProcess) -> None:
    for _ in range(40):  # one at a time, so the count is exact
        with open_stream(5223):
            pass
        if any(r["real"] == DEAD and r["new"] == "FAILED" for r in gateway.records("real_state")):
            break
    for _ in range(20):
        with open_stream(5223):
            pass
    gateway.settle()
    failed = [r for r in gateway.records("real_attempt_failed") if r["real"] == DEAD]
    assert len(failed) == NUMCONNS, failed
    assert {r["worker"] for r in gateway.records("connected")} == {0, 1}
    states = {r["worker"]: r["new"] for r in gateway.records("real_state") if r["real"] == DEAD}
    assert states == {0: "FAILED", 1: "FAILED"}  # one declared it, the other followed


def test_a_killed_worker_is_replaced(gateway: GatewayProcess) -> None:
    victim = gateway.records("worker_started")[-1]["pid"]
    os.kill(victim, signal.SIGKILL)
    gateway.wait_record(lambda r: r["pid"] == victim, event="worker_exited")
    deadline = time.monotonic() + 10
    while len(gateway.records("worker_started")) < 3:
        assert time.monotonic() < deadline, gateway.log_text()[-3000:]
        time.sleep(0.05)
    streams = [open_stream(5222) for _ in range(10)]
    for s in streams:
        s.close()


def test_sigterm_to_the_master_stops_every_worker(gateway: GatewayProcess) -> None:
    pids = [r["pid"] for r in gateway.records("worker_started")]
    assert gateway.stop() == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in Path(
            f"/proc/{pid}/status").read_text().lower()
    assert gateway.records()[-1]["event"] == "stopped"
    assert "Traceback" not in gateway.log_text()
