"""RFC 2136 updates to a real BIND 9 (Debian's named, tests/harness/bind.py), read back with
`dig`, as an operator who keeps their own DNS would check them.

- The `UpdateSender` alone: a set published, then changed, shows at BIND; BIND stopped, then
  frozen, is retried with backoff and caught up once it is back; a wrong key or no key is
  refused by BIND and never changes the zone.
- The whole gateway: tcp probes in front of the 3-node ejabberd cluster; a killed node's SRV
  is gone at BIND within probe interval x fall + coalesce + slack, and back once the node is;
  on SIGTERM the gateway's own target leaves BIND's answer, the reals stay.

The tests needing only BIND do not touch the ejabberd cluster (`servers`); the gateway test
does; `Servers.start` takes the machine-wide harness lock (tests/harness/lock.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.rrset
import pytest

from tests.harness.bind import Bind, bind_primary  # noqa: F401  (the fixture itself)
from tests.harness.servers import Servers
from tests.support.gateway import GatewayProcess
from xmppgw.config import Address, SrvUpdate
from xmppgw.dns.rfc2136 import UpdateSender

pytestmark = pytest.mark.integration

ZONE = "example.test"
CLIENT = f"_xmpp-client._tcp.{ZONE}"
GW, R1, R2 = f"xmpp.{ZONE}", f"real-1.{ZONE}", f"real-2.{ZONE}"
GATEWAY_VIP = "127.0.1.30"
PROBE_INTERVAL, PROBE_FALL, COALESCE = 1.0, 2, 1.0
SLACK = 6.0  # a busy 2-core machine: log flushing, the probe's own timeout, scheduling


class RecordingLog:
    """A structlog-shaped logger that keeps its lines for the assertions."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw))

    def of(self, event: str) -> list[dict[str, Any]]:
        return [kw for e, kw in self.lines if e == event]


def srv(*targets: str) -> dns.rrset.RRset:
    rdatas = [f"{10 if i == 0 else 20} 0 5222 {t}." for i, t in enumerate(targets)]
    return dns.rrset.from_text(f"{CLIENT}.", 5, "IN", "SRV", *rdatas)


def a(name: str, address: str) -> dns.rrset.RRset:
    return dns.rrset.from_text(f"{name}.", 5, "IN", "A", address)


def answer(*targets: str) -> list[str]:
    """What `dig +short ... SRV` prints for `srv(*targets)`."""
    return sorted(f"{10 if i == 0 else 20} 0 5222 {t}." for i, t in enumerate(targets))


def sender(bind: Bind, log: RecordingLog, key_file: str | None = "default",
           **kw: Any) -> UpdateSender:
    key = str(bind.key_path) if key_file == "default" else key_file
    timeout = kw.pop("timeout", 2.0)
    config = SrvUpdate(Address(bind.address, bind.port), key,
                       **{"coalesce": 0.2, "retry_min": 0.2, "retry_max": 1.0, **kw})
    return UpdateSender(config, (ZONE,), log, timeout=timeout)


async def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `check` (run in a thread: dig blocks) until truthy; the last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value or time.monotonic() > deadline:
            assert value, f"not within {timeout} s: {what}"
            return value
        await asyncio.sleep(0.1)


async def dig(bind: Bind, name: str, rdtype: str = "SRV") -> list[str]:
    return await asyncio.to_thread(bind.dig, name, rdtype)


# --- the sender alone ------------------------------------------------------------------------


async def test_published_set_then_a_change_show_at_bind(bind_primary: Bind) -> None:  # noqa: F811
    log = RecordingLog()
    s = sender(bind_primary, log)
    await s.start()
    try:
        s.publish([srv(GW, R1, R2), a(GW, "127.0.1.30"), a(R1, "127.0.2.1"), a(R2, "127.0.2.2")])
        await eventually(lambda: bind_primary.dig(CLIENT) == answer(GW, R1, R2), 10, "the set")
        assert await dig(bind_primary, R2, "A") == ["127.0.2.2"]
        s.publish([srv(GW, R1), a(GW, "127.0.1.30"), a(R1, "127.0.2.1")])  # real 2 went down
        await eventually(lambda: bind_primary.dig(CLIENT) == answer(GW, R1), 10, "the change")
        assert await dig(bind_primary, R2, "A") == []
        assert await dig(bind_primary, R1, "A") == ["127.0.2.1"]
    finally:
        await s.stop()
    updated = log.of("srv_updated")
    assert [(u["first"], u["rrsets"], u["deleted"]) for u in updated] == [
        (True, 4, 0), (False, 1, 1)]
    assert log.of("srv_update_failed") == []


async def test_a_flap_within_the_window_never_reaches_bind(bind_primary: Bind) -> None:  # noqa: F811
    log = RecordingLog()
    s = sender(bind_primary, log, coalesce=2.0)
    await s.start()
    try:
        up = [srv(GW, R1), a(GW, "127.0.1.30"), a(R1, "127.0.2.1")]
        s.publish(up)
        await eventually(lambda: log.of("srv_updated"), 10, "the first update")
        s.publish([srv(GW), a(GW, "127.0.1.30")])  # real 1 down ...
        await asyncio.sleep(0.3)
        s.publish(up)                               # ... and back within the window
        await asyncio.sleep(3.0)                    # past the window: nothing was sent
    finally:
        await s.stop()
    assert len(log.of("srv_updated")) == 1
    assert await dig(bind_primary, CLIENT) == answer(GW, R1)


async def test_bind_stopped_is_retried_with_backoff_until_it_is_back(
        bind_primary: Bind) -> None:  # noqa: F811
    log = RecordingLog()
    s = sender(bind_primary, log)
    await s.start()
    try:
        s.publish([srv(GW, R1), a(GW, "127.0.1.30"), a(R1, "127.0.2.1")])
        # Acknowledged, not just visible: BIND may hold this set already (an earlier test).
        await eventually(lambda: log.of("srv_updated"), 10, "the first update")
        assert await dig(bind_primary, CLIENT) == answer(GW, R1)
        await asyncio.to_thread(bind_primary.stop)
        s.publish([srv(GW, R2), a(GW, "127.0.1.30"), a(R2, "127.0.2.2")])
        await eventually(lambda: len(log.of("srv_update_failed")) >= 4, 15, "4 failures")
        await asyncio.to_thread(bind_primary.start)
        await eventually(lambda: bind_primary.dig(CLIENT) == answer(GW, R2), 10, "caught up")
        # The records acknowledged before the restart are still there (BIND's journal),
        # and the change made while it was down deleted real 1's address.
        assert await dig(bind_primary, GW, "A") == ["127.0.1.30"]
        assert await dig(bind_primary, R1, "A") == []
    finally:
        await s.stop()
    failed = log.of("srv_update_failed")
    assert {f["reason"].split(":")[0] for f in failed} == {"ConnectionRefusedError"}
    assert [f["retry_in"] for f in failed[:4]] == [0.2, 0.4, 0.8, 1.0]  # doubling, capped
    assert log.of("srv_updated")[-1]["first"] is False


async def test_bind_frozen_times_out_and_is_retried(bind_primary: Bind) -> None:  # noqa: F811
    log = RecordingLog()
    s = sender(bind_primary, log, timeout=0.5)
    await s.start()
    os.kill(bind_primary.pid, signal.SIGSTOP)
    try:
        s.publish([srv(GW), a(GW, "127.0.1.30")])
        await eventually(lambda: len(log.of("srv_update_failed")) >= 2, 15, "2 timeouts")
    finally:
        os.kill(bind_primary.pid, signal.SIGCONT)
    try:
        await eventually(lambda: bind_primary.dig(CLIENT) == answer(GW), 10, "caught up")
    finally:
        await s.stop()
    assert {f["reason"] for f in log.of("srv_update_failed")} == {"timeout"}


@pytest.mark.parametrize("key", ["wrong", "none"])
async def test_bind_refuses_a_wrong_or_missing_key(bind_primary: Bind, key: str,  # noqa: F811
                                                   tmp_path: Path) -> None:
    before = await dig(bind_primary, CLIENT)
    key_file = None
    if key == "wrong":  # the right name, another secret: BIND's TSIG check fails
        text = bind_primary.key_path.read_text()
        secret = text.split('secret "')[1].split('"')[0]
        (tmp_path / "wrong.key").write_text(text.replace(secret, "d3JvbmcgLSBzZWNyZXQgLSBrZXk="))
        key_file = str(tmp_path / "wrong.key")
    log = RecordingLog()
    s = sender(bind_primary, log, key_file=key_file)
    await s.start()
    try:
        s.publish([srv("never.example.test"), a("never.example.test", "10.9.9.9")])
        await eventually(lambda: len(log.of("srv_update_failed")) >= 2, 10, "2 refusals")
    finally:
        await s.stop()
    assert log.of("srv_updated") == []
    assert await dig(bind_primary, CLIENT) == before
    first = log.of("srv_update_failed")[0]
    assert first.get("rcode", first.get("reason")) == {
        "none": "REFUSED", "wrong": "PeerBadSignature: The peer didn't like the signature "
                                    "we sent"}[key]


# --- the whole gateway -----------------------------------------------------------------------


def gateway_config(servers: Servers, bind: Bind) -> str:
    reals = "".join(f'[[serverfarm.real]]\naddress = "{address}"\n'
                    for address in servers.ejabberd_addresses)
    return f"""
[gateway]
domains = ["{ZONE}"]

[[vserver]]
name = "C2S"
virtual = "{GATEWAY_VIP}:5222"
kinds = ["c2s"]
serverfarm = "XMPP"

[[serverfarm]]
name = "XMPP"
slowstart = 0
[[serverfarm.probe]]
type = "tcp"
interval = {PROBE_INTERVAL:g}
timeout = 1
rise = 1
fall = {PROBE_FALL}
{reals}
[srv]
zones = ["{ZONE}"]
ttl = 5

[srv.update]
server = "{bind.address}:{bind.port}"
key_file = "{bind.key_path}"
coalesce = {COALESCE:g}
retry_min = 0.5
retry_max = 4
"""



def real_host(address: str) -> str:
    return f"real-{address.replace('.', '-')}.{ZONE}."


@pytest.fixture
def gateway(servers: Servers, bind_primary: Bind,  # noqa: F811
            tmp_path: Path) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(gateway_config(servers, bind_primary), tmp_path)
    gw.start()
    yield gw
    assert gw.stop() == 0, gw.log_text()[-3000:]
    assert "Traceback" not in gw.log_text()


async def test_killed_node_leaves_the_srv_at_bind_and_comes_back(
        servers: Servers, bind_primary: Bind, gateway: GatewayProcess) -> None:  # noqa: F811
    hosts = [real_host(address) for address in servers.ejabberd_addresses]
    dead = hosts[2]

    def targets() -> set[str]:
        return {line.split()[3] for line in bind_primary.dig(CLIENT)}

    everyone = {f"xmpp.{ZONE}.", *hosts}
    await eventually(lambda: targets() == everyone, 15, f"all of {everyone} at BIND")
    assert await dig(bind_primary, dead.rstrip("."), "A") == [servers.ejabberd_addresses[2]]
    bound = PROBE_INTERVAL * PROBE_FALL + COALESCE + SLACK
    servers.ejabberd.kill_node(2)
    try:
        killed = time.monotonic()
        await eventually(lambda: dead not in targets(), bound, f"{dead} gone from the SRV")
        gone_after = time.monotonic() - killed
        assert await dig(bind_primary, dead.rstrip("."), "A") == []
        assert targets() == everyone - {dead}
    finally:
        await asyncio.to_thread(servers.ejabberd.start_node, 2)
    started = time.monotonic()
    await eventually(lambda: targets() == everyone, PROBE_INTERVAL + COALESCE + SLACK,
                     f"{dead} back in the SRV")
    back_after = time.monotonic() - started
    updated = gateway.records("srv_updated")
    assert updated[0]["first"] is True and all(not u["first"] for u in updated[1:])
    assert gateway.records("srv_update_failed") == []
    print(f"\nSRV gone from BIND {gone_after:.1f} s after the kill (bound {bound:g} s), "
          f"back {back_after:.1f} s after the node was up")
    # SIGTERM: the gateway withdraws its own target, and that last set reaches BIND before
    # the process exits (not lost in the coalescing window); the reals stay published.
    assert await asyncio.to_thread(gateway.stop) == 0
    assert targets() == set(hosts)
    assert gateway.records("srv_update_unsent") == []
