"""Issue 7 against the real cluster: PROXY protocol to ejabberd (`use_proxy_protocol: true`)
in v1 and v2, probes that speak it too, PROXY accepted only from listed networks, and the
per-source limits answered with `<policy-violation/>`.

ejabberd's own record of a session (`ejabberdctl connected_users_info`) is the proof that
the real sees the client's address and port, not the gateway's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.client import xmpp_session
from tests.harness.servers import PROXY_C2S_PORT, Servers
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.integration

VIP_V1, VIP_V2, VIP_ACCEPT, VIP_CONNS, VIP_RATE = (f"127.0.1.{n}" for n in range(14, 19))
BALANCER = "127.0.9.1"  # the "upstream balancer" PROXY headers are believed from
STRANGER = "127.0.9.2"
NEIGHBOUR = "127.0.9.3"


def config(servers: Servers, control_socket: Path) -> str:
    def farm(name: str, version: str, probes: str) -> str:
        reals = "".join(f'\n[[serverfarm.real]]\naddress = "{a}:{PROXY_C2S_PORT}"\n'
                        for a in servers.ejabberd_addresses)
        return (f'\n[[serverfarm]]\nname = "{name}"\nproxy_protocol = "{version}"\n'
                f'{probes}{reals}')

    stream_probe = (f'\n[[serverfarm.probe]]\ntype = "xmpp-stream"\n'
                    f'domain = "{servers.ejabberd_domain}"\ninterval = 0.5\nrise = 1\n')
    ping_probe = (f'\n[[serverfarm.probe]]\ntype = "xmpp-ping"\njid = "{servers.jid("user199")}"\n'
                  f'password = "{servers.password}"\ntls_verify = false\ninterval = 1\n'
                  'rise = 1\n')
    plain = "".join(f'\n[[serverfarm.real]]\naddress = "{a}"\n'
                    for a in servers.ejabberd_addresses)
    return f"""
[gateway]
domains = ["{servers.ejabberd_domain}"]
control_socket = "{control_socket}"

[[vserver]]
name = "V1"
virtual = "{VIP_V1}:5222"
serverfarm = "PROXY1"

[[vserver]]
name = "V2"
virtual = "{VIP_V2}:5222"
serverfarm = "PROXY2"

[[vserver]]
name = "BEHIND"
virtual = "{VIP_ACCEPT}:5222"
serverfarm = "PROXY2"
accept_proxy = ["{BALANCER}/32"]

[[vserver]]
name = "CONNS"
virtual = "{VIP_CONNS}:5222"
serverfarm = "PLAIN"
limits = {{ maxconns_per_ip = 2 }}

[[vserver]]
name = "RATE"
virtual = "{VIP_RATE}:5222"
serverfarm = "PLAIN"
limits = {{ rate_per_ip = 0.2, burst_per_ip = 2 }}
{farm("PROXY1", "v1", stream_probe)}
{farm("PROXY2", "v2", ping_probe)}

[[serverfarm]]
name = "PLAIN"
{plain}"""


@pytest.fixture(scope="module")
def gateway(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("proxy")
    gw = GatewayProcess(config(servers, workdir / "ctl.sock"), workdir).start()
    yield gw
    gw.stop()


def header(servers: Servers) -> bytes:
    return (f"<?xml version='1.0'?><stream:stream to='{servers.ejabberd_domain}' "
            "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
            "version='1.0'>").encode()


async def open_from(source: str, vip: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(vip, 5222, local_addr=(source, 0))


async def read_until(reader: asyncio.StreamReader, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = await asyncio.wait_for(reader.read(4096), 10)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("vip", [VIP_V1, VIP_V2], ids=["v1", "v2"])
async def test_ejabberd_sees_the_clients_address(gateway: GatewayProcess, servers: Servers,
                                                 vip: str) -> None:
    async with xmpp_session(servers.jid("alice") + f"/proxy-{vip}", servers.password, vip,
                            5222, send_presence=False) as client:
        host, port = client.transport.get_extra_info("sockname")[:2]
        sessions = [s for s in servers.ejabberd.connected_users_info()
                    if s.resource == f"proxy-{vip}"]
        assert [(s.ip, s.port) for s in sessions] == [(host, port)]


def test_probes_speak_proxy_so_the_reals_stay_up(gateway: GatewayProcess) -> None:
    """ejabberd closes a connection without a PROXY header on these ports: had the probes
    not sent one, every real would be PROBE_FAILED by now."""
    deadline = time.monotonic() + 15
    while True:  # until every probe has answered once (an answer shows its round trip)
        detail = gateway.show("reals", "detail")
        rows = [line for line in detail.splitlines()
                if " PROXY" in line and line.startswith("127.")]
        if all(row.endswith("ms") for row in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(rows) == 6
    assert all("OPERATIONAL" in row and "DOWN" not in row for row in rows), detail
    assert "probe errors" not in detail, detail


async def test_proxy_from_a_listed_balancer_names_the_client(gateway: GatewayProcess,
                                                             servers: Servers) -> None:
    reader, writer = await open_from(BALANCER, VIP_ACCEPT)
    writer.write(b"PROXY TCP4 198.51.100.7 127.0.1.16 40000 5222\r\n" + header(servers))
    features = await read_until(reader, b"</stream:features>")
    assert b"starttls" in features  # ejabberd answered through the gateway
    conns = [line.split() for line in gateway.show("conns").splitlines()
             if line.startswith("BEHIND")]
    assert len(conns) == 1
    _vserver, client, real, kind, to, state, _age = conns[0]
    assert client == "198.51.100.7:40000" and real.endswith(f":{PROXY_C2S_PORT}")
    assert (kind, to, state) == ("c2s", servers.ejabberd_domain, "RELAYING")
    writer.close()


async def test_proxy_from_an_unlisted_source_is_not_believed(gateway: GatewayProcess,
                                                             servers: Servers) -> None:
    reader, writer = await open_from(STRANGER, VIP_ACCEPT)
    writer.write(b"PROXY TCP4 198.51.100.8 127.0.1.16 40001 5222\r\n" + header(servers))
    answer = await read_until(reader, b"</stream:stream>")
    assert b"<not-well-formed" in answer  # read as XML: a stream error, no real involved
    writer.close()
    record = gateway.wait_record(lambda r: r["vserver"] == "BEHIND"
                                 and r["client"].startswith(STRANGER))
    assert record["real"] is None and record["error"] == "not-well-formed"


async def test_over_maxconns_per_ip_gets_policy_violation_others_do_not(
        gateway: GatewayProcess, servers: Servers) -> None:
    held = [await open_from(STRANGER, VIP_CONNS) for _ in range(2)]  # silent: they count
    try:
        reader, writer = await open_from(STRANGER, VIP_CONNS)
        answer = await read_until(reader, b"</stream:stream>")
        assert b"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in answer
        writer.close()
        reader, writer = await open_from(NEIGHBOUR, VIP_CONNS)
        writer.write(header(servers))
        assert b"starttls" in await read_until(reader, b"</stream:features>")
        writer.close()
    finally:
        for _, w in held:
            w.close()
    await asyncio.sleep(0.3)  # the held ones are released when they close ...
    reader, writer = await open_from(STRANGER, VIP_CONNS)  # ... and the source may come back
    writer.write(header(servers))
    assert b"starttls" in await read_until(reader, b"</stream:features>")
    writer.close()
    gateway.settle()
    assert gateway.records("limit_refused")[0]["limit"] == "maxconns_per_ip"


async def test_over_rate_per_ip_gets_policy_violation(gateway: GatewayProcess,
                                                      servers: Servers) -> None:
    async with xmpp_session(servers.jid("bob") + "/rate", servers.password, VIP_RATE, 5222,
                            send_presence=False):
        pass  # burst 2: this one and the next are let in
    reader, writer = await open_from("127.0.0.1", VIP_RATE)
    writer.close()
    reader, writer = await open_from("127.0.0.1", VIP_RATE)
    answer = await read_until(reader, b"</stream:stream>")
    assert b"<policy-violation" in answer
    writer.close()
    reader, writer = await open_from(NEIGHBOUR, VIP_RATE)
    writer.write(header(servers))
    assert b"starttls" in await read_until(reader, b"</stream:features>")
    writer.close()


VIP_FLOOD = "127.0.1.19"


def flood_config(servers: Servers) -> str:
    reals = "".join(f'\n[[serverfarm.real]]\naddress = "{a}:{PROXY_C2S_PORT}"\n'
                    'faildetect = { numconns = 8, numclients = 2 }\n'
                    for a in servers.ejabberd_addresses)
    return f"""
[gateway]
domains = ["{servers.ejabberd_domain}"]

[[vserver]]
name = "FLOOD"
virtual = "{VIP_FLOOD}:5222"
serverfarm = "PROXYF"

[[serverfarm]]
name = "PROXYF"
proxy_protocol = "v1"
{reals}"""


async def test_header_then_reset_floods_never_fail_a_real(
        servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The fuzzing finding: clients that send a stream header and reset at once
    (SO_LINGER 0), 1,800 of them in a few seconds, against reals that expect a PROXY
    header. A client that left is no verdict on a real: no real goes FAILED, ejabberd never
    gets a stream without its PROXY header (it would close it: a "failed attempt"), and an
    honest client logs in right after."""
    import socket
    import struct
    import threading

    gw = GatewayProcess(flood_config(servers), tmp_path_factory.mktemp("flood")).start()
    try:
        head = (f"<?xml version='1.0'?><stream:stream to='{servers.ejabberd_domain}' "
                "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
                "version='1.0'>").encode()
        linger = struct.pack("ii", 1, 0)

        def attacker() -> None:
            for _ in range(450):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                try:
                    sock.connect((VIP_FLOOD, 5222))
                    sock.sendall(head)
                except OSError:
                    pass
                sock.close()

        threads = [threading.Thread(target=attacker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        await asyncio.sleep(1.0)
        async with xmpp_session(servers.jid("user150") + "/after-flood", servers.password,
                                VIP_FLOOD, 5222, send_presence=False):
            pass
        assert not [r for r in gw.records("real_state") if r.get("new") == "FAILED"], \
            gw.records("real_state")
        assert gw.records("real_attempt_failed") == []
        assert "Traceback" not in gw.log_text()
    finally:
        gw.stop()
