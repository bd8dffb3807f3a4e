"""Real federation through the 5269 vserver: Prosody (pr.test) <-> the ejabberd cluster
(example.test), both directions crossing the gateway, routed by the stream's `to` domain.

Name resolution on loopback: Prosody's private hosts file maps example.test to the s2s
vserver; ejabberd's resolver (the harness's DNS stub) is given an SRV for pr.test pointing at
the same vserver. The gateway then sends `to='example.test'` streams to the cluster and
`to='pr.test'` streams to Prosody. Dialback verification connections cross it too.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.harness.client import xmpp_session
from tests.harness.servers import Servers
from tests.support.gateway import GatewayProcess
from tests.support.topology import S2S_VIP, VIP

pytestmark = pytest.mark.integration


async def test_messages_cross_both_ways(servers: Servers, xmpp_gateway: GatewayProcess) -> None:
    # before ejabberd's first attempt: it refuses a domain for minutes after a failed lookup
    servers.dns.remove(f"_xmpp-server._tcp.{servers.prosody_domain}", "SRV")
    servers.dns.add_srv(f"_xmpp-server._tcp.{servers.prosody_domain}", 0, 0, 5269, S2S_VIP)

    alice_jid, pat_jid = servers.jid("alice"), servers.jid("pat")
    to_alice: asyncio.Queue[str] = asyncio.Queue()
    to_pat: asyncio.Queue[str] = asyncio.Queue()
    # pat reaches Prosody through the gateway's 5222 too: a route by domain
    async with xmpp_session(alice_jid + "/fed", servers.password, VIP, 5222) as alice, \
            xmpp_session(pat_jid + "/fed", servers.password, VIP, 5222) as pat:
        alice.add_event_handler("message", lambda m: to_alice.put_nowait(str(m["body"])))
        pat.add_event_handler("message", lambda m: to_pat.put_nowait(str(m["body"])))

        pat.send_message(mto=alice_jid, mbody="hello from pr.test", mtype="chat")
        assert await asyncio.wait_for(to_alice.get(), 60) == "hello from pr.test"
        alice.send_message(mto=pat_jid, mbody="hello from example.test", mtype="chat")
        assert await asyncio.wait_for(to_pat.get(), 60) == "hello from example.test"

    xmpp_gateway.settle()
    s2s = [r for r in xmpp_gateway.records("connection") if r["vserver"] == "P5269"]
    s2s += _live_s2s(xmpp_gateway)
    to_cluster = [r for r in s2s if r["to"] == servers.ejabberd_domain]
    to_prosody = [r for r in s2s if r["to"] == servers.prosody_domain]
    assert to_cluster and all(r["real"] in servers.ejabberd_addresses for r in to_cluster)
    assert to_prosody and all(r["real"] == servers.prosody_address for r in to_prosody)
    assert all(r["kind"] == "s2s" for r in s2s)
    c2s_pat = xmpp_gateway.wait_record(lambda r: r["vserver"] == "P5222" and r["to"] == "pr.test")
    assert c2s_pat["real"] == servers.prosody_address


def _live_s2s(gateway: GatewayProcess) -> list[dict]:
    """s2s streams stay open after the messages: their routing decision is logged at once."""
    return [r for r in gateway.records("connected") if r["vserver"] == "P5269"]
