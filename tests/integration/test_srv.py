"""SRV records from live health, end to end: the real gateway process publishes them from its
embedded DNS server, and a real slixmpp client whose resolver is that server finds the
gateway through SRV and logs in to the real ejabberd cluster.

- The farm holds the three ejabberd nodes and a fourth real nothing listens on, with a tcp
  probe: it goes PROBE_FAILED, and leaves the answers, a second or so after start.
- "The gateway's vserver down" is tested both ways it happens:
  - the gateway knows (the 5222 vserver out of service): the SRV answer holds only the
    reals, and the client logs in through one of them;
  - the gateway does not know (its 5222 port refuses connections, while its DNS, or a
    resolver's cache, still names it first): the client walks the SRV list, RFC 2782 order,
    and logs in through a real.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import dns.zone
import pytest
from slixmpp import ClientXMPP

from tests.harness.client import LoginFailed, close, make_client
from tests.harness.servers import Servers
from tests.support.gateway import ROOT, GatewayProcess

pytestmark = pytest.mark.integration

VIP, DNS = "127.0.1.20", "127.0.5.53"            # the gateway, its DNS server
DOWN_VIP, DOWN_DNS = "127.0.1.21", "127.0.5.54"  # a gateway whose 5222 vserver is out of service
DEAD_REAL = "127.0.1.29"                         # nothing listens here: its probe fails
CLIENT_SRV = "_xmpp-client._tcp.example.test"
LOGIN_TIMEOUT = 30.0
NFT_TABLE = "xmppgw_srv_down"


def config(servers: Servers, vip: str, dns_address: str, control: Path,
           c2s_inservice: bool = True) -> str:
    reals = "".join(f'[[serverfarm.real]]\naddress = "{a}"\n' for a in servers.ejabberd_addresses)
    return f"""
[gateway]
domains = ["{servers.ejabberd_domain}"]
control_socket = "{control}"
log_connect = true

[[vserver]]
name = "P5222"
virtual = "{vip}:5222"
serverfarm = "XMPP"
inservice = {str(c2s_inservice).lower()}

[[vserver]]
name = "P5223"
virtual = "{vip}:5223"
mode = "directtls"
serverfarm = "XMPP"

[[serverfarm]]
name = "XMPP"
slowstart = 0
{reals}
[[serverfarm.real]]
address = "{DEAD_REAL}"
[[serverfarm.real.probe]]
type = "tcp"
interval = 0.5
timeout = 0.5
rise = 1
fall = 1

[srv]
listen = "{dns_address}:53"
ttl = 5
"""


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="xmppgw-srv-") as path:
        yield Path(path)


@pytest.fixture(scope="module")
def gateway(servers: Servers, workdir: Path) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(config(servers, VIP, DNS, workdir / "gw.sock"), workdir, "srv")
    gw.start()
    try:
        wait_until_published(DNS, lambda targets: not any(
            "127-0-1-29" in t for t in targets), "the dead real to leave the answers")
        yield gw
    finally:
        assert gw.stop() == 0, gw.log_text()[-3000:]
        assert "Traceback" not in gw.log_text()


@pytest.fixture(scope="module")
def down_gateway(servers: Servers, workdir: Path) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(config(servers, DOWN_VIP, DOWN_DNS, workdir / "down.sock",
                               c2s_inservice=False), workdir, "down")
    gw.start()
    try:
        yield gw
    finally:
        assert gw.stop() == 0, gw.log_text()[-3000:]
        assert "Traceback" not in gw.log_text()


# --- helpers ---------------------------------------------------------------------------------


def dig(server: str, *args: str) -> str:
    result = subprocess.run(["dig", f"@{server}", "+tries=2", "+timeout=2", *args],
                            capture_output=True, text=True, timeout=30, check=False)
    return result.stdout


def srv_records(server: str, name: str = CLIENT_SRV) -> list[tuple[int, int, int, str]]:
    """(priority, weight, port, target) of every SRV record, lowest priority first."""
    out = dig(server, "+short", name, "SRV")
    records = [(int(p), int(w), int(port), target) for p, w, port, target in
               (line.split() for line in out.splitlines() if line.strip())]
    return sorted(records)


def wait_until_published(server: str, ok: Any, what: str, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    targets: list[str] = []
    while time.monotonic() < end:
        targets = [r[3] for r in srv_records(server)]
        if targets and ok(targets):
            return
        time.sleep(0.2)
    raise AssertionError(f"waited {timeout} s for {what}; the answer names {targets}")


@asynccontextmanager
async def srv_login(jid: str, password: str, dns_address: str,
                    direct_tls: bool = False) -> AsyncIterator[tuple[ClientXMPP, list[str]]]:
    """Log in with no host given: slixmpp looks the domain up through SRV, asking only
    `dns_address`, and tries the records in RFC 2782 order. Yields the client and the
    connection failures it went through on the way (a target that refused)."""
    client = make_client(jid, password, direct_tls)
    client.use_ipv6 = False

    def configure_dns(resolver: Any, domain: str | None = None, port: int | None = None) -> None:
        resolver.nameservers = [dns_address]  # aiodns: the embedded server, nothing else

    client.configure_dns = configure_dns  # type: ignore[method-assign]
    failures: list[str] = []
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    client.add_event_handler("connection_failed", lambda err: failures.append(str(err)))
    client.add_event_handler("session_start",
                             lambda _: started.done() or started.set_result(None))
    client.add_event_handler("failed_all_auth", lambda _: started.done() or started.set_exception(
        LoginFailed(f"{jid}: authentication failed")))
    client.connect()  # no address: SRV
    try:
        try:
            await asyncio.wait_for(started, LOGIN_TIMEOUT)
        except TimeoutError:
            raise LoginFailed(f"{jid}: no session within {LOGIN_TIMEOUT} s; connection "
                              f"failures: {failures}") from None
        yield client, failures
    finally:
        await close(client)


def peer(client: ClientXMPP) -> tuple[str, int]:
    return client.transport.get_extra_info("peername")[:2]


@contextmanager
def port_refused(address: str, port: int) -> Iterator[None]:
    """The kernel answers SYNs to address:port with a reset, as for a port nobody listens
    on: the vserver is down while the gateway's DNS server (port 53) still answers."""
    subprocess.run(["nft", "delete", "table", "inet", NFT_TABLE], capture_output=True,
                   check=False, timeout=10)
    subprocess.run(["nft", "-f", "-"], text=True, check=True, timeout=10, input=f"""
table inet {NFT_TABLE} {{
  chain out {{
    type filter hook output priority 0; policy accept;
    ip daddr {address} tcp dport {port} reject with tcp reset
  }}
}}""")
    try:
        yield
    finally:
        subprocess.run(["nft", "delete", "table", "inet", NFT_TABLE], capture_output=True,
                       check=False, timeout=10)


# --- the records -----------------------------------------------------------------------------


def test_answers_name_the_gateway_first_then_the_healthy_reals(
        servers: Servers, gateway: GatewayProcess) -> None:
    records = srv_records(DNS)
    assert records[0] == (10, 1, 5222, "xmpp.example.test.")
    assert records[1:] == sorted((20, 8, 5222, f"real-{a.replace('.', '-')}.example.test.")
                                 for a in servers.ejabberd_addresses)
    assert dig(DNS, "+short", "xmpp.example.test", "A").split() == [VIP]
    for address in servers.ejabberd_addresses:
        name = f"real-{address.replace('.', '-')}.example.test"
        assert dig(DNS, "+short", name, "A").split() == [address]
    assert srv_records(DNS, "_xmpps-client._tcp.example.test")[0] == (
        10, 1, 5223, "xmpp.example.test.")
    # the dead real went PROBE_FAILED and left the answers: logged once, with what went
    changed = gateway.wait_record(lambda r: any("real-127-0-1-29" in line
                                                for line in r["removed"]), event="srv_changed")
    assert changed["added"] == []
    assert "NXDOMAIN" in dig(DNS, "real-127-0-1-29.example.test", "A")


def test_xmppgw_zone_asks_the_running_gateway(gateway: GatewayProcess) -> None:
    result = subprocess.run([sys.executable, "-m", "xmppgw", "zone", "-c",
                             str(gateway.config_path)], capture_output=True, text=True,
                            cwd=ROOT, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert "from the running gateway's live health" in result.stdout
    zone = dns.zone.from_text(result.stdout, relativize=False)
    rdataset = zone.find_rdataset(CLIENT_SRV + ".", "SRV")
    published = sorted((rd.priority, rd.weight, rd.port, rd.target.to_text()) for rd in rdataset)
    assert published == srv_records(DNS)  # the live set: without the PROBE_FAILED real
    serial = re.search(r"serial (\d+)", result.stdout)
    assert serial and dig(DNS, "+short", "example.test", "SOA").split()[2] == serial.group(1)


# --- real clients ----------------------------------------------------------------------------


async def test_client_finds_the_gateway_through_srv_and_logs_in(
        servers: Servers, gateway: GatewayProcess) -> None:
    async with srv_login(servers.jid("alice") + "/srv", servers.password, DNS) as (c, failed):
        assert peer(c) == (VIP, 5222) and failed == []
        assert await c.plugin["xep_0199"].ping(jid=servers.ejabberd_domain, timeout=10) >= 0
        port = c.transport.get_extra_info("sockname")[1]
    record = gateway.wait_record(lambda r: r["client"] == f"127.0.0.1:{port}", event="connected")
    assert record["vserver"] == "P5222" and record["real"] in servers.ejabberd_addresses


async def test_direct_tls_client_finds_the_5223_vserver(
        servers: Servers, gateway: GatewayProcess) -> None:
    async with srv_login(servers.jid("bob") + "/srv", servers.password, DNS,
                         direct_tls=True) as (c, failed):
        assert peer(c) == (VIP, 5223) and failed == []
        port = c.transport.get_extra_info("sockname")[1]
    record = gateway.wait_record(lambda r: r["client"] == f"127.0.0.1:{port}", event="connected")
    assert record["vserver"] == "P5223" and record["sni"] == "example.test"


async def test_vserver_out_of_service_the_answers_hold_only_reals_and_the_client_uses_one(
        servers: Servers, down_gateway: GatewayProcess) -> None:
    records = await asyncio.to_thread(srv_records, DOWN_DNS)
    assert records and all(priority == 20 for priority, *_ in records), records
    async with srv_login(servers.jid("carol") + "/srv", servers.password, DOWN_DNS) as (c, _):
        address, port = peer(c)
        assert address in servers.ejabberd_addresses and port == 5222
    assert not down_gateway.records("connected")


async def test_vserver_refusing_while_dns_still_names_it_the_client_falls_back_to_a_real(
        servers: Servers, gateway: GatewayProcess) -> None:
    assert (await asyncio.to_thread(srv_records, DNS))[0][3] == "xmpp.example.test."
    before = len(gateway.records("connected"))
    with port_refused(VIP, 5222):
        async with srv_login(servers.jid("user7") + "/srv", servers.password, DNS) as (c, failed):
            address, port = peer(c)
            assert address in servers.ejabberd_addresses and port == 5222
            assert len(failed) == 1, failed  # the gateway target, tried first, refused
    assert len(gateway.records("connected")) == before
