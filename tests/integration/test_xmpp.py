"""Real clients through the gateway to the real ejabberd cluster."""

from __future__ import annotations

import asyncio
import socket
import ssl
import xml.etree.ElementTree as ET

import pytest

from tests.harness.client import xmpp_session
from tests.harness.servers import Servers
from tests.support.gateway import GatewayProcess
from tests.support.topology import BOTH_PORT, STRICT_PORT, VIP

pytestmark = pytest.mark.integration

STREAM_HEADER = (b"<?xml version='1.0'?><stream:stream to='example.test' xmlns='jabber:client' "
                 b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


async def test_starttls_login_and_ping(servers: Servers, xmpp_gateway: GatewayProcess) -> None:
    async with xmpp_session(servers.jid("alice") + "/starttls", servers.password, VIP, 5222) as c:
        rtt = await c.plugin["xep_0199"].ping(jid=servers.ejabberd_domain, timeout=10)
        assert rtt >= 0
        port = c.transport.get_extra_info("sockname")[1]  # names its connection record
    record = xmpp_gateway.wait_record(lambda r: r["client"] == f"127.0.0.1:{port}")
    assert record["vserver"] == "P5222" and record["kind"] == "c2s"
    assert record["to"] == "example.test" and record["starttls"] is True
    assert record["real"] in servers.ejabberd_addresses and record["error"] is None
    assert record["bytes_from_client"] > 0 and record["bytes_to_client"] > 0


async def test_direct_tls_login_and_ping(servers: Servers, xmpp_gateway: GatewayProcess) -> None:
    async with xmpp_session(servers.jid("bob") + "/directtls", servers.password, VIP, 5223,
                            direct_tls=True) as c:
        assert await c.plugin["xep_0199"].ping(jid=servers.ejabberd_domain, timeout=10) >= 0
        port = c.transport.get_extra_info("sockname")[1]
    record = xmpp_gateway.wait_record(lambda r: r["client"] == f"127.0.0.1:{port}")
    assert record["vserver"] == "P5223" and record["sni"] == "example.test"
    assert record["real"] in servers.ejabberd_addresses


async def test_direct_tls_first_login_on_a_both_vserver_lands_on_the_direct_tls_listener(
        servers: Servers, xmpp_gateway: GatewayProcess) -> None:
    """slixmpp given a host and port tries direct TLS first, then STARTTLS: on a `both`
    vserver the first try gets in, relayed to the node's direct-TLS listener (5223)."""
    xmpp_gateway.settle()
    seen = {r.get("client") for r in xmpp_gateway.records("connection")}
    async with xmpp_session(servers.jid("user180") + "/both", servers.password, VIP, BOTH_PORT,
                            direct_tls=True, fallback=True) as c:
        assert await c.plugin["xep_0199"].ping(jid=servers.ejabberd_domain, timeout=10) >= 0
        port = c.transport.get_extra_info("sockname")[1]
    record = xmpp_gateway.wait_record(lambda r: r["client"] == f"127.0.0.1:{port}")
    assert (record["vserver"], record["mode"], record["real_port"]) == ("BOTH", "directtls", 5223)
    assert record["sni"] == "example.test" and record["starttls"] is False
    assert record["real"] in {f"{a}:5222" for a in servers.ejabberd_addresses}
    assert record["error"] is None
    tries = [r for r in xmpp_gateway.records("connection") if r.get("vserver") == "BOTH"
             and r.get("client") not in seen]
    assert len(tries) == 1  # no failed first try, no second connection


async def test_starttls_login_on_a_both_vserver(servers: Servers,
                                                xmpp_gateway: GatewayProcess) -> None:
    async with xmpp_session(servers.jid("user181") + "/both", servers.password, VIP,
                            BOTH_PORT) as c:
        assert await c.plugin["xep_0199"].ping(jid=servers.ejabberd_domain, timeout=10) >= 0
        port = c.transport.get_extra_info("sockname")[1]
    record = xmpp_gateway.wait_record(lambda r: r["client"] == f"127.0.0.1:{port}")
    assert (record["mode"], record["real_port"], record["starttls"]) == ("starttls", 5222, True)


@pytest.mark.parametrize("alpn, kind", [("xmpp-client", "c2s"), (None, None)])
def test_direct_tls_handshake_with_alpn_reaches_ejabberd(
        servers: Servers, xmpp_gateway: GatewayProcess, alpn: str | None, kind: str | None) -> None:
    """A TLS handshake completes end to end with the real's certificate: nothing terminated."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(servers.ejabberd_cert)  # the node's own cert, not a gateway's
    if alpn:
        ctx.set_alpn_protocols([alpn])
    with socket.create_connection((VIP, 5223), timeout=10) as raw:
        port = raw.getsockname()[1]
        with ctx.wrap_socket(raw, server_hostname="example.test") as tls:
            assert tls.selected_alpn_protocol() in (alpn, None)
            tls.sendall(STREAM_HEADER)
            reply = b""
            while b"</stream:features>" not in reply:
                reply += tls.recv(65536)
    assert b"urn:ietf:params:xml:ns:xmpp-sasl" in reply
    record = xmpp_gateway.wait_record(lambda r: r["client"] == f"127.0.0.1:{port}")
    assert record["kind"] == kind and record["alpn"] == ([alpn] if alpn else None)


async def test_logins_land_on_every_node(servers: Servers, xmpp_gateway: GatewayProcess) -> None:
    users = [f"user{i}" for i in range(6)]
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(_login_and_report_node(servers, u)) for u in users]
    nodes = {t.result() for t in tasks}
    assert nodes == set(servers.ejabberd.node_names)  # round-robin: two logins per node


async def _login_and_report_node(servers: Servers, user: str) -> str:
    jid = servers.jid(user)
    async with xmpp_session(jid + "/spread", servers.password, VIP, 5222):
        for _ in range(50):
            sessions = {s.jid.split("/")[0]: s.node for s in servers.ejabberd.connected_users_info()}
            if jid in sessions:
                return sessions[jid]
            await asyncio.sleep(0.2)
    raise AssertionError(f"{jid} is not among ejabberd's sessions")


def test_require_starttls_refuses_auth_in_the_clear(servers: Servers,
                                                     xmpp_gateway: GatewayProcess) -> None:
    with socket.create_connection((VIP, STRICT_PORT), timeout=10) as sock:
        sock.sendall(STREAM_HEADER)
        reply = b""
        while b"</stream:features>" not in reply:
            reply += sock.recv(65536)
        assert b"<starttls" in reply  # ejabberd's own features came through
        sock.sendall(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                     b"AGFsaWNlAHNlY3JldA==</auth>")
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    # ejabberd already sent the stream header, so the gateway sends only the error (§4.9.1.1)
    assert not rest.startswith(b"<?xml") and b"<stream:stream" not in rest
    error = ET.fromstring(rest.removesuffix(b"</stream:stream>").replace(
        b"<stream:error>", b"<error xmlns='http://etherx.jabber.org/streams'>").replace(
        b"</stream:error>", b"</error>"))
    assert error[0].tag == "{urn:ietf:params:xml:ns:xmpp-streams}policy-violation"
    assert xmpp_gateway.wait_record(
        lambda r: r["vserver"] == "STRICT" and r["error"] == "policy-violation")["real"]


async def test_require_starttls_lets_a_starttls_login_through(
        servers: Servers, xmpp_gateway: GatewayProcess) -> None:
    async with xmpp_session(servers.jid("carol") + "/strict", servers.password, VIP,
                            STRICT_PORT) as c:
        assert await c.plugin["xep_0199"].ping(jid=servers.ejabberd_domain, timeout=10) >= 0


async def test_aioxmpp_logs_in_through_the_gateway(servers: Servers,
                                                   xmpp_gateway: GatewayProcess) -> None:
    aioxmpp = pytest.importorskip("aioxmpp")
    client = aioxmpp.Client(
        aioxmpp.JID.fromstr(servers.jid("user10") + "/aioxmpp"),
        aioxmpp.make_security_layer(servers.password, no_verify=True),
        override_peer=[(VIP, 5222, aioxmpp.connector.STARTTLSConnector())],
    )
    xmpp_gateway.settle()
    seen = {r["client"] for r in xmpp_gateway.records("connected")}
    async with asyncio.timeout(30), client.connected():
        ping = aioxmpp.IQ(type_=aioxmpp.IQType.GET, to=aioxmpp.JID.fromstr("example.test"))
        ping.payload = aioxmpp.ping.xso.Ping()
        await client.send(ping)  # raises on an error reply
    record = xmpp_gateway.wait_record(
        lambda r: r["client"] not in seen and r["vserver"] == "P5222" and r["starttls"])
    assert record["real"] in servers.ejabberd_addresses and record["error"] is None
