"""Issue 17: two gateways share one virtual address with keepalived (VRRP), so the gateway is
no single point of failure.

Real pieces only: network namespaces this module creates (and always removes), Debian's
keepalived running the shipped conf/keepalived/keepalived.conf (the words an operator edits
put in), xmppgw in each gateway namespace with `freebind` and `sourcehash`, a 3-node ejabberd
cluster in a namespace of its own, slixmpp clients in a client namespace (tests/support/pair.py
draws the topology). The servers run under the machine-wide harness lock.

Each test starts from a settled pair (one MASTER holding the address, one BACKUP whose check
passes) and acts on whichever gateway holds the address.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from tests.harness.client import LoginFailed, close, make_client, xmpp_session
from tests.support.netns import NetnsLoop
from tests.support.pair import (
    C2S_PORT,
    CLIENTS,
    DOMAIN,
    PASSWORD,
    SHIPPED_KEEPALIVED,
    VIP,
    Pair,
    Side,
    keepalived_conf,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("keepalived") is None or os.geteuid() != 0,
                       reason="needs keepalived (scripts/setup.sh) and root for namespaces"),
]


def _conf_number(key: str) -> float:
    match = re.search(rf"^\s*{key}\s+(\d+)", SHIPPED_KEEPALIVED.read_text(), re.MULTILINE)
    assert match, f"{SHIPPED_KEEPALIVED} has no {key}"
    return float(match.group(1))


# The timing the shipped keepalived.conf promises, from its own numbers.
ADVERT = _conf_number("advert_int")
INTERVAL, FALL, SCRIPT_TIMEOUT = (_conf_number(k) for k in ("interval", "fall", "timeout"))
CHECK_LIMIT = 2.0  # xmppgw-check's own limit (XMPPGW_CHECK_TIMEOUT)
SKEW = (256 - 100) / 256 * ADVERT  # RFC 5798 Skew_Time of the lower priority (the worst)
MASTER_DOWN = 3 * ADVERT + SKEW  # a holder that stops advertising is replaced after this
CHECK_RUN = 1.0  # one run of the check (python startup) on a busy 2-core machine
# A killed gateway: its checks fail at once; `fall` of them, each up to an interval apart,
# then FAULT (the holder says priority 0); if that word were lost, MASTER_DOWN more.
KILL_BOUND = FALL * INTERVAL + INTERVAL + CHECK_RUN + MASTER_DOWN
# A hung one: every check runs into its limit first.
HANG_BOUND = FALL * (CHECK_LIMIT + INTERVAL) + CHECK_RUN + MASTER_DOWN
LOGIN_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    workdir = Path(tempfile.mkdtemp(prefix="xmppgw-pair-", dir="/tmp"))
    failures = request.session.testsfailed
    try:
        instance = Pair(workdir).start()
    except BaseException:
        print(f"pair: did not start; logs and configs kept in {workdir}")
        raise
    failed = True
    try:
        yield instance
        failed = request.session.testsfailed > failures
    finally:
        instance.stop()
        if failed:
            print(f"pair: logs and configs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def clients(pair: Pair) -> Iterator[NetnsLoop]:
    """An asyncio loop whose sockets live in the clients' namespace."""
    loop = NetnsLoop(pair.cli.name).start()
    yield loop
    loop.stop()


@pytest.fixture
def settled(pair: Pair) -> Side:
    """The pair settled; the side holding the address."""
    return pair.wait_settled(60.0)


def jid(i: int) -> str:
    return f"user{i}@{DOMAIN}"


async def login_once(user: int) -> None:
    async with xmpp_session(jid(user), PASSWORD, VIP, C2S_PORT, timeout=LOGIN_TIMEOUT):
        pass


async def first_login(user: int, since: float, deadline: float) -> float:
    """Log in again and again until one session starts; seconds from `since` to it."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            async with xmpp_session(jid(user), PASSWORD, VIP, C2S_PORT, timeout=LOGIN_TIMEOUT):
                return time.monotonic() - since
        except LoginFailed as exc:
            last = exc
            await asyncio.sleep(0.05)
    raise AssertionError(f"{jid(user)}: no login before the deadline; last: {last}")


class Held:
    """A logged-in client that stays connected, and notices when its stream is cut."""

    def __init__(self, user: int, plugins: tuple[str, ...] = ("xep_0199",)) -> None:
        self.client = make_client(jid(user), PASSWORD, plugins=plugins)
        self.gone = asyncio.Event()
        self.events: dict[str, asyncio.Event] = {}
        self.client.add_event_handler("disconnected", lambda _: self.gone.set())

    def watch(self, *names: str) -> None:
        for name in names:
            event = self.events[name] = asyncio.Event()
            self.client.add_event_handler(name, lambda _, e=event: e.set())

    async def start(self) -> Held:
        self.watch("session_start")
        self.client.connect(VIP, C2S_PORT)
        await asyncio.wait_for(self.events["session_start"].wait(), LOGIN_TIMEOUT)
        return self


async def hold(users: list[int]) -> list[Held]:
    return list(await asyncio.gather(*(Held(u).start() for u in users)))


async def close_all(held: list[Held]) -> None:
    for h in held:
        await close(h.client)


def clients_of(side: Side, since: int = 0) -> dict[str, str]:
    """client address -> real, from `side`'s `connected` log lines after the first `since`."""
    assert side.gateway is not None
    side.gateway.settle()
    return {r["client"].rpartition(":")[0]: r["real"]
            for r in side.gateway.connected()[since:]}


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n[pair] {line}")


def test_the_shipped_keepalived_conf_passes_keepalived_s_own_check(tmp_path: Path) -> None:
    conf = tmp_path / "keepalived.conf"
    conf.write_text(keepalived_conf("gw1", 150, tmp_path / "xmppgw.toml"))
    result = subprocess.run(["keepalived", "--config-test", "-f", str(conf)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_clients_log_in_through_the_virtual_address(pair: Pair, settled: Side,
                                                     clients: NetnsLoop) -> None:
    standby = pair.other(settled)
    assert standby.gateway is not None and settled.gateway is not None
    before = len(standby.gateway.connected())
    held = clients.run(hold([1, 2, 3]), 60)
    try:
        sessions = pair.sessions()
        assert {jid(i) for i in (1, 2, 3)} <= {s["jid"].partition("/")[0] for s in sessions}
        # The standby listens on the address it does not hold (freebind) and got nothing.
        listening = standby.ns.run("ss", "-Hltn", "src", f"{VIP}:{C2S_PORT}").stdout
        assert f"{VIP}:{C2S_PORT}" in listening
        assert len(standby.gateway.connected()) == before
        assert CLIENTS[0] in clients_of(settled)
    finally:
        clients.run(close_all(held), 30)


def test_kill_9_of_the_active_gateway_moves_the_address_and_clients_log_in_again(
        pair: Pair, settled: Side, clients: NetnsLoop,
        capsys: pytest.CaptureFixture[str]) -> None:
    active, standby = settled, pair.other(settled)
    assert active.gateway is not None and standby.gateway is not None
    held = clients.run(hold([4, 5, 6]), 60)
    seen = len(standby.gateway.connected())
    try:
        killed_at = time.monotonic()
        os.kill(active.gateway.pid, signal.SIGKILL)
        probe = clients.submit(first_login(7, killed_at, killed_at + 60))
        moved = pair.wait_holder(standby, KILL_BOUND + 10)
        first = probe.result(70)
        # Every held client saw its stream cut and logs in again, through the standby.
        async def relogin() -> list[float]:
            await asyncio.gather(*(asyncio.wait_for(h.gone.wait(), 10) for h in held))
            return list(await asyncio.gather(*(first_login(u, killed_at, killed_at + 60)
                                               for u in (4, 5, 6))))
        again = clients.run(relogin(), 90)
    finally:
        clients.run(close_all(held), 30)
    report(capsys, f"kill -9 of {active.name}'s gateway: address on {standby.name} after "
           f"{moved:.2f} s (bound {KILL_BOUND:.1f} s), first login through it after "
           f"{first:.2f} s; 3 held clients logged in again after "
           f"{', '.join(f'{t:.2f}' for t in again)} s")
    assert moved <= KILL_BOUND
    assert active.vrrp_state() == "FAULT"
    assert CLIENTS[0] in clients_of(standby, seen)  # they came in through the standby
    assert first < KILL_BOUND + LOGIN_TIMEOUT


def test_a_hung_gateway_gives_up_the_address_through_the_health_check(
        pair: Pair, settled: Side, clients: NetnsLoop,
        capsys: pytest.CaptureFixture[str]) -> None:
    active, standby = settled, pair.other(settled)
    assert active.gateway is not None and active.keepalived is not None
    os.kill(active.gateway.pid, signal.SIGSTOP)
    try:
        moved = pair.wait_holder(standby, HANG_BOUND + 10)
        report(capsys, f"SIGSTOP of {active.name}'s gateway: address on {standby.name} "
               f"after {moved:.2f} s (bound {HANG_BOUND:.1f} s)")
        assert moved <= HANG_BOUND
        # keepalived itself still runs and advertises: only the check moved the address.
        assert active.keepalived.poll() is None
        assert active.vrrp_state() == "FAULT"
        clients.run(login_once(8), 30)
    finally:
        os.kill(active.gateway.pid, signal.SIGCONT)
    # Back in service, it waits as BACKUP: nopreempt keeps the address where it is.
    pair.wait_settled(30.0)
    assert pair.holder() is standby


def test_a_holder_cut_off_the_network_is_replaced_after_the_advertisement_timeout(
        pair: Pair, settled: Side, clients: NetnsLoop,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The host holding the address drops off the network (its link goes down): no word
    reaches the other, which takes over when the advertisements stop (3 x advert_int + skew)."""
    active, standby = settled, pair.other(settled)
    active.ns.ip("link", "set", "eth0", "down")
    try:
        moved = pair.wait_holder(standby, MASTER_DOWN + 10)
        report(capsys, f"{active.name} cut off the network: address on {standby.name} after "
               f"{moved:.2f} s (advertisement timeout {MASTER_DOWN:.2f} s)")
        assert moved <= MASTER_DOWN + CHECK_RUN
        clients.run(login_once(10), 30)
    finally:
        active.ns.ip("link", "set", "eth0", "up")
    pair.wait_settled(30.0)
    assert pair.holder() is standby  # nopreempt: back on the network, it waits as BACKUP


async def _stream_from(source: str) -> None:
    """A c2s stream opened from `source` through the address, up to its features."""
    reader, writer = await asyncio.open_connection(
        VIP, C2S_PORT, local_addr=(source, 0), family=socket.AF_INET)
    try:
        writer.write(f"<?xml version='1.0'?><stream:stream to='{DOMAIN}' version='1.0' "
                     "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
                     .encode())
        data = b""
        while b"features" not in data:
            chunk = await asyncio.wait_for(reader.read(4096), 10)
            assert chunk, f"{source}: the stream ended before its features"
            data += chunk
    finally:
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()


async def _streams(sources: list[str]) -> None:
    await asyncio.gather(*(_stream_from(s) for s in sources))


def test_sourcehash_sends_a_client_to_the_same_real_through_either_gateway(
        pair: Pair, settled: Side, clients: NetnsLoop) -> None:
    """Also: a gateway whose vservers all stop listening (`vserver no-inservice`, an
    operator's drain) gives the address up through the check."""
    first, second = settled, pair.other(settled)
    assert first.gateway is not None and second.gateway is not None
    seen = (len(first.gateway.connected()), len(second.gateway.connected()))
    clients.run(_streams(CLIENTS), 60)
    through_first = clients_of(first, seen[0])
    pair.vserver(first, "no-inservice")
    pair.wait_holder(second, KILL_BOUND + 10)
    clients.run(_streams(CLIENTS), 60)
    through_second = clients_of(second, seen[1])
    assert set(through_first) == set(through_second) == set(CLIENTS)
    assert through_first == through_second
    assert len(set(through_first.values())) >= 2, "the sources should spread over the reals"


def test_a_xep_0198_session_resumes_through_the_other_gateway(
        pair: Pair, settled: Side, clients: NetnsLoop) -> None:
    active, standby = settled, pair.other(settled)
    assert active.gateway is not None and standby.gateway is not None
    seen = (len(active.gateway.connected()), len(standby.gateway.connected()))

    async def enabled() -> Held:
        held = Held(9, plugins=("xep_0199", "xep_0198"))
        held.watch("sm_enabled", "session_resumed", "sm_failed")
        await held.start()
        await asyncio.wait_for(held.events["sm_enabled"].wait(), LOGIN_TIMEOUT)
        return held

    held = clients.run(enabled(), 60)
    try:
        before = clients_of(active, seen[0])  # read now: a killed gateway's last lines are lost
        os.kill(active.gateway.pid, signal.SIGKILL)
        clients.run(asyncio.wait_for(held.gone.wait(), 10), 15)
        pair.wait_holder(standby, KILL_BOUND + 10)

        async def reconnect() -> str:
            """Which came first: resumed, refused (sm_failed), or a new session."""
            outcomes = ("session_resumed", "sm_failed", "session_start")
            for name in outcomes:
                held.events[name].clear()
            held.client.connect(VIP, C2S_PORT)
            waits = {asyncio.ensure_future(held.events[n].wait()): n for n in outcomes}
            done, pending = await asyncio.wait(waits, timeout=2 * LOGIN_TIMEOUT,
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            return ", ".join(waits[task] for task in done) or "nothing (timeout)"

        outcome = clients.run(reconnect(), 3 * LOGIN_TIMEOUT)
    finally:
        clients.run(close(held.client), 30)
    assert outcome == "session_resumed"
    after = clients_of(standby, seen[1])
    assert before[CLIENTS[0]] == after[CLIENTS[0]]  # sourcehash: the node holding the session
