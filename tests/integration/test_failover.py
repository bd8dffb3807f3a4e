"""Issue 3 against the real cluster: nodes that black-hole SYNs, crash (kill -9) or hang
(SIGSTOP) cost clients nothing but a little time; the gateway marks them FAILED by IOS's
faildetect rules and takes them back after `retry`.

A gateway process of its own (farm state must not leak into other tests), in front of the
harness's 3-node ejabberd cluster. Every test puts the cluster back as it found it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.client import xmpp_session
from tests.harness.servers import Servers
from tests.support.blackhole import blackhole, remove_stale
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.integration

VIP = "127.0.1.5"
RETRY = 3.0
NUMCONNS = 4
HEDGE_DELAY = 0.2


def config(servers: Servers, control_socket: Path) -> str:
    reals = "".join(f"""
[[serverfarm.real]]
address = "{a}"
reassign = 3
faildetect = {{ numconns = {NUMCONNS}, numclients = 2 }}
retry = {RETRY}
""" for a in servers.ejabberd_addresses)
    return f"""
[gateway]
domains = ["{servers.ejabberd_domain}"]
log_connect = true
control_socket = "{control_socket}"

[[vserver]]
name = "FAILOVER"
virtual = "{VIP}:5222"
serverfarm = "CLUSTER"

[[serverfarm]]
name = "CLUSTER"
predictor = "roundrobin"
connect_timeout = 1
hedge_delay = {HEDGE_DELAY}
response_timeout = 2
slowstart = 1
{reals}"""


@pytest.fixture(scope="module")
def control_dir() -> Iterator[Path]:
    """World-traversable, so the test can show the socket itself keeps other users out."""
    path = Path(tempfile.mkdtemp(prefix="xmppgw-ctl-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def gateway(servers: Servers, control_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    remove_stale()
    gw = GatewayProcess(config(servers, control_dir / "xmppgw.sock"),
                        tmp_path_factory.mktemp("failover")).start()
    yield gw
    gw.stop()


async def login(servers: Servers, user: str) -> float:
    began = time.monotonic()
    async with xmpp_session(servers.jid(user) + "/failover", servers.password, VIP, 5222,
                            send_presence=False):
        pass
    return time.monotonic() - began


async def login_many(servers: Servers, users: list[str], concurrency: int = 10) -> list[float]:
    """Every login must succeed (xmpp_session raises otherwise); returns their durations."""
    gate = asyncio.Semaphore(concurrency)

    async def one(user: str) -> float:
        async with gate:
            return await login(servers, user)

    return list(await asyncio.gather(*(one(u) for u in users)))


def states(gw: GatewayProcess, real: str) -> list[str]:
    return [r["new"] for r in gw.records("real_state") if r["real"] == real]


async def wait_state(gw: GatewayProcess, servers: Servers, real: str, state: str,
                     timeout: float = 30.0) -> None:
    """Keep logging clients in until `real` reaches `state` (a TESTING real needs traffic)."""
    deadline = time.monotonic() + timeout
    i = 0
    while states(gw, real)[-1:] != [state]:
        assert time.monotonic() < deadline, f"{real} never became {state}: {states(gw, real)}"
        await login(servers, f"user{150 + i % 50}")
        i += 1
        await asyncio.sleep(0.2)


def landed_on(gw: GatewayProcess, since: int) -> list[str]:
    gw.settle()
    return [r["real"] for r in gw.records("connected")[since:]]


def mark(gw: GatewayProcess) -> int:
    """How many `connected` lines there are once the earlier ones have all been written."""
    gw.settle()
    return len(gw.records("connected"))


async def test_blackholed_node_costs_about_hedge_delay(servers: Servers,
                                                       gateway: GatewayProcess) -> None:
    users = [f"user{i}" for i in range(200)]
    baseline = await login_many(servers, users)
    nodes = set(landed_on(gateway, 0))
    assert nodes == set(servers.ejabberd_addresses)  # 200 logins spread over the cluster

    dark = servers.ejabberd_addresses[1]
    with blackhole(dark, 5222):
        since = mark(gateway)
        during = await login_many(servers, users)  # every one succeeds
        assert "FAILED" in states(gateway, dark)
        assert dark not in landed_on(gateway, since)
    rise = statistics.median(during) - statistics.median(baseline)
    assert rise < HEDGE_DELAY + 0.3, (statistics.median(baseline), statistics.median(during))
    hedged = [r for r in gateway.records("real_attempt_failed") if r["real"] == dark]
    assert hedged and {r["reason"] for r in hedged} <= {"hedged: no answer", "timeout"}

    await asyncio.sleep(RETRY)
    await wait_state(gateway, servers, dark, "OPERATIONAL")
    since = mark(gateway)
    await login_many(servers, users[:30], concurrency=1)
    assert dark in landed_on(gateway, since)


async def test_killed_node_is_failed_after_exactly_numconns(servers: Servers,
                                                            gateway: GatewayProcess) -> None:
    index = 2
    dead = servers.ejabberd_addresses[index]
    failures_before = len([r for r in gateway.records("real_attempt_failed") if r["real"] == dead])
    servers.ejabberd.kill_node(index)
    try:
        for i in range(40):  # one at a time, so the count is exact
            await login(servers, f"user{i}")
            if states(gateway, dead)[-1:] == ["FAILED"]:
                break
        assert states(gateway, dead)[-1] == "FAILED"
        failed = [r for r in gateway.records("real_attempt_failed") if r["real"] == dead]
        # numclients cannot trip first: every test client is 127.0.0.1, one client
        assert len(failed) - failures_before == NUMCONNS
        assert {r["reason"] for r in failed[failures_before:]} == {"Connection refused"}
        detail = gateway.show("serverfarms", "detail").splitlines()
        assert detail[0] == "CLUSTER predictor = ROUNDROBIN, nat = SERVER, interface(s) = <none>"
        assert detail[1] == "virtuals inservice: 1, reals = 3, bind id = 0"
        assert detail[2] == "Real servers:"
        assert re.fullmatch(rf"{re.escape(dead)}, weight = 8, FAILED, conns = 0", detail[3 + index])
        assert re.fullmatch(r"Total connections = \d+", detail[6])
        reals = gateway.show("reals", "detail")
        # real, farm, weight, state, conns, connecting (in flight / max_connecting), total,
        # failed attempts
        assert re.search(rf"{re.escape(dead)}\s+CLUSTER\s+8\s+FAILED\s+0\s+0/8\s+\d+\s+"
                         rf"{NUMCONNS}\b", reals), reals
    finally:
        servers.ejabberd.start_node(index)
    await asyncio.sleep(RETRY)
    await wait_state(gateway, servers, dead, "OPERATIONAL", timeout=60)


async def test_hung_node_is_skipped_without_client_errors(servers: Servers,
                                                          gateway: GatewayProcess) -> None:
    """SIGSTOP: the kernel still completes handshakes, the node never answers."""
    index = 0
    hung = servers.ejabberd_addresses[index]
    pid = servers.ejabberd.pid_of(index)
    os.kill(pid, signal.SIGSTOP)
    try:
        await login_many(servers, [f"user{i}" for i in range(30)], concurrency=5)
        assert "FAILED" in states(gateway, hung)
        silent = [r for r in gateway.records("real_attempt_failed") if r["real"] == hung]
        assert "no response" in {r["reason"] for r in silent}
    finally:
        os.kill(pid, signal.SIGCONT)
    await asyncio.sleep(RETRY)
    await wait_state(gateway, servers, hung, "OPERATIONAL", timeout=60)


NOBODY_CONNECT = """\
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES")
    sys.exit()
s.sendall(b'{"command": "show"}' + bytes([10]))
print(s.recv(4096).decode().strip())
"""


def as_nobody(path: Path) -> str:
    """Connect to the control socket as the unprivileged user `nobody`, with Debian's python."""
    script = path.parent / "connect.py"
    script.write_text(NOBODY_CONNECT)
    script.chmod(0o644)
    python = shutil.which("python3", path="/usr/bin:/bin") or "python3"
    result = subprocess.run(["su", "nobody", "-s", "/bin/sh", "-c", f"{python} {script} {path}"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_control_socket_refuses_other_users(gateway: GatewayProcess, control_dir: Path) -> None:
    sock = control_dir / "xmppgw.sock"
    assert sock.stat().st_mode & 0o777 == 0o600
    assert as_nobody(sock) == "EACCES"
    sock.chmod(0o666)  # an operator loosened it: the peer credential check still holds
    try:
        assert as_nobody(sock) == '{"ok": false, "error": "permission denied"}'
    finally:
        sock.chmod(0o600)
    assert "CLUSTER" in gateway.show("serverfarms")
