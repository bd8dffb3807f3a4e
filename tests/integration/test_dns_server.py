"""The embedded DNS server on real sockets, asked by the real `dig` and by dnspython's resolver.

The server runs in this process on 127.0.5.53:5353 (UDP and TCP), answering a config with
40 reals, so the `_xmpp-client._tcp` answer is larger than 512 and 1232 bytes and must go over
TCP. dig runs as a subprocess while the event loop keeps serving. No XMPP server is needed.
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import socket
import struct
from collections.abc import AsyncIterator

import dns.asyncresolver
import dns.message
import dns.rcode
import dns.resolver
import pytest

from xmppgw import config
from xmppgw.config import Address
from xmppgw.dns.records import Health, build
from xmppgw.dns.server import DnsServer

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("dig") is None, reason="dig (dnsutils) missing")]

ADDRESS, PORT = "127.0.5.53", 5353
REALS = 40
SERVICE = "_xmpp-client._tcp.example.test"


def gateway_config() -> config.Config:
    reals = "".join(f'[[serverfarm.real]]\naddress = "10.0.0.{i + 1}"\n' for i in range(REALS))
    return config.loads(f"""[gateway]
domains = ["example.test"]

[[vserver]]
name = "P5222"
virtual = "192.0.2.1:5222"
serverfarm = "XMPP"

[[serverfarm]]
name = "XMPP"
{reals}
[srv]
listen = "{ADDRESS}:{PORT}"
""")


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, event: str, **_fields: object) -> None:
        self.lines.append(event)

    warning = error = exception = info


@pytest.fixture
async def server() -> AsyncIterator[DnsServer]:
    cfg = gateway_config()
    published = build(cfg, Health.from_config(cfg), 2024)
    assert cfg.srv is not None
    dns_server = DnsServer(Address(ADDRESS, PORT), lambda: published, Log(), tcp_idle=2.0,
                           tcp_max_clients=16)
    await dns_server.start()
    yield dns_server
    await dns_server.stop()


async def dig(*args: str) -> str:
    """`dig @127.0.5.53 -p 5353 ARGS`, run while this loop keeps serving."""
    proc = await asyncio.create_subprocess_exec(
        "dig", f"@{ADDRESS}", "-p", str(PORT), "+tries=2", "+timeout=2", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return out.decode()


def header(out: str) -> tuple[str, set[str], dict[str, int]]:
    """(status, flags, section counts) from dig's header lines."""
    status = re.search(r"status: (\w+)", out)
    flags = re.search(r";; flags: ([a-z ]*);", out)
    counts = dict(re.findall(r"(QUERY|ANSWER|AUTHORITY|ADDITIONAL): (\d+)", out))
    assert status and flags, out
    return status.group(1), set(flags.group(1).split()), {k: int(v) for k, v in counts.items()}


def resolver() -> dns.asyncresolver.Resolver:
    r = dns.asyncresolver.Resolver(configure=False)
    r.nameservers = [ADDRESS]
    r.port = PORT
    r.lifetime = 5
    return r


# --- dig: each record type and each negative answer ---------------------------------------------


@pytest.mark.parametrize(("name", "rdtype", "expected"), [
    ("xmpp.example.test", "A", "192.0.2.1"),
    ("real-10-0-0-7.example.test", "A", "10.0.0.7"),
    ("example.test", "NS", "ns.example.test."),
    ("ns.example.test", "A", ADDRESS),
    ("example.test", "SOA", "ns.example.test. hostmaster.example.test. 2024 3600 600 604800 30"),
    (SERVICE, "SRV", "10 1 5222 xmpp.example.test."),  # +short retries over TCP as well
])
async def test_dig_each_record_type(server: DnsServer, name: str, rdtype: str,
                                    expected: str) -> None:
    out = await dig(name, rdtype)
    status, flags, _ = header(out)
    assert status == "NOERROR" and "aa" in flags and "ra" not in flags, out
    assert expected in (await dig("+short", name, rdtype)).splitlines()


async def test_dig_nxdomain_nodata_refused(server: DnsServer) -> None:
    status, flags, counts = header(await dig("www.example.test", "A"))
    assert (status, counts["ANSWER"], counts["AUTHORITY"]) == ("NXDOMAIN", 0, 1)
    assert "aa" in flags
    status, flags, counts = header(await dig("xmpp.example.test", "AAAA"))
    assert (status, counts["ANSWER"], counts["AUTHORITY"]) == ("NOERROR", 0, 1)
    status, flags, counts = header(await dig("_xmpps-server._tcp.example.test", "SRV"))
    assert (status, counts["ANSWER"], counts["AUTHORITY"]) == ("NOERROR", 0, 1)
    out = await dig("www.example.org", "A")
    status, flags, counts = header(out)
    assert status == "REFUSED" and "aa" not in flags and "ra" not in flags, out
    assert "recursion requested but not available" in out


async def test_dig_is_truncated_over_udp_and_retries_over_tcp(server: DnsServer) -> None:
    truncated = await dig("+noedns", "+ignore", SERVICE, "SRV")
    status, flags, counts = header(truncated)
    assert "tc" in flags and counts["ANSWER"] == 0, truncated
    assert int(re.search(r"MSG SIZE\s+rcvd: (\d+)", truncated).group(1)) <= 512  # type: ignore[union-attr]
    out = await dig("+noedns", SERVICE, "SRV")
    assert ";; Truncated, retrying in TCP mode." in out
    status, flags, counts = header(out)
    assert status == "NOERROR" and "tc" not in flags and counts["ANSWER"] == REALS + 1
    assert "(TCP)" in out
    with_edns = await dig("+bufsize=1232", SERVICE, "SRV")  # 41 SRV do not fit in 1232 either
    assert ";; Truncated, retrying in TCP mode." in with_edns
    assert header(with_edns)[2]["ANSWER"] == REALS + 1


async def test_dig_any_is_minimal_and_transfers_are_refused(server: DnsServer) -> None:
    """RFC 8482 §4.1: one RRset, whichever the name holds (here all of the SRV)."""
    status, _flags, counts = header(await dig("example.test", "ANY"))
    assert status == "NOERROR" and counts["ANSWER"] == 1 and counts["ADDITIONAL"] == 1  # OPT
    out = await dig("+noall", "+answer", "+tcp", SERVICE, "ANY")
    assert {line.split()[3] for line in out.splitlines() if line.strip()} == {"SRV"}
    assert "Transfer failed." in await dig("example.test", "AXFR")


# --- dnspython's resolver -------------------------------------------------------------------


async def test_dnspython_resolver(server: DnsServer) -> None:
    r = resolver()
    srv = await r.resolve(SERVICE, "SRV")  # truncated over UDP: the resolver retries over TCP
    assert len(srv) == REALS + 1
    assert min(srv, key=lambda rd: rd.priority).target.to_text() == "xmpp.example.test."
    assert [rd.address for rd in await r.resolve("xmpp.example.test", "A")] == ["192.0.2.1"]
    with pytest.raises(dns.resolver.NXDOMAIN):
        await r.resolve("nothing.example.test", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        await r.resolve("xmpp.example.test", "AAAA")
    with pytest.raises(dns.resolver.NoNameservers):  # REFUSED is all it gets
        await r.resolve("example.org", "A")


# --- abuse ----------------------------------------------------------------------------------


def junk(rng: random.Random, good: bytes) -> bytes:
    """One malformed or unwanted datagram of several kinds."""
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 600))
    if kind == 1:
        return good[:rng.randrange(0, len(good))]  # cut short
    if kind == 2:
        return good[:2] + bytes([good[2] | 0x80]) + good[3:]  # a "response"
    if kind == 3:
        return good + rng.randbytes(rng.randrange(1, 40))  # trailing junk
    if kind == 4:
        mangled = bytearray(good)
        for _ in range(3):
            mangled[rng.randrange(len(mangled))] = rng.randrange(256)
        return bytes(mangled)
    return good[:12] + b"\xc0\x0c" * 20  # a compression pointer loop


def flood(count: int) -> None:
    rng = random.Random(6)
    good = dns.message.make_query(SERVICE, "SRV").to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(count):
            sock.sendto(junk(rng, good), (ADDRESS, PORT))


async def test_a_flood_of_malformed_packets_does_not_stop_it_answering(
        server: DnsServer) -> None:
    await asyncio.to_thread(flood, 30000)
    status, _flags, counts = header(await dig("xmpp.example.test", "A"))
    assert status == "NOERROR" and counts["ANSWER"] == 1
    # and over TCP: junk, a zero length, a length with too few bytes after it
    for payload in (b"\x00\x05hello", b"\x00\x00", b"\x01\x00abc", b"\xff"):
        _reader, writer = await asyncio.open_connection(ADDRESS, PORT)
        writer.write(payload)
        await writer.drain()
        writer.close()
    assert header(await dig("+tcp", "xmpp.example.test", "A"))[0] == "NOERROR"


async def test_tcp_pipelining_and_idle_connections(server: DnsServer) -> None:
    reader, writer = await asyncio.open_connection(ADDRESS, PORT)
    queries = [dns.message.make_query(name, "A") for name in
               ("xmpp.example.test", "real-10-0-0-1.example.test", "nope.example.test")]
    writer.write(b"".join(q.to_wire(prepend_length=True) for q in queries))
    await writer.drain()
    rcodes = []
    for q in queries:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        response = dns.message.from_wire(await reader.readexactly(size))
        assert response.id == q.id
        rcodes.append(response.rcode())
    assert rcodes == [dns.rcode.NOERROR, dns.rcode.NOERROR, dns.rcode.NXDOMAIN]
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed once idle (tcp_idle 2 s)
    writer.close()
    # more idle connections than slots: the oldest make room, a new client is answered
    idle = [await asyncio.open_connection(ADDRESS, PORT) for _ in range(40)]
    await asyncio.sleep(0.2)
    assert header(await dig("+tcp", "xmpp.example.test", "A"))[0] == "NOERROR"
    for _reader, idle_writer in idle:
        idle_writer.close()
