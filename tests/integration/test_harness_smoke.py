"""Proves the harness: real servers are up, clustered, reachable and resolvable.

If these fail, every other integration test would fail for reasons unrelated to the gateway.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess

import pytest

from tests.harness import fixtures as harness_fixtures
from tests.harness.client import xmpp_session
from tests.harness.ejabberd import EjabberdCluster, beam_pids
from tests.harness.servers import Servers

# The session fixture, conftest-free. An attribute, not `from ... import servers`, so linters
# do not read every test's `servers` parameter as a redefinition of an unused import.
servers = harness_fixtures.servers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

STEP_TIMEOUT = 15.0


def test_three_nodes_form_one_cluster(servers: Servers) -> None:
    expected = set(servers.ejabberd.node_names)
    assert len(expected) == 3
    for i in range(3):
        assert set(servers.ejabberd.list_cluster(i)) == expected, f"seen from node {i + 1}"


def test_accounts_are_registered(servers: Servers) -> None:
    registered = set(servers.ejabberd.registered_users())
    assert {"alice", "bob", "carol", "user0", "user199"} <= registered
    assert len(servers.users) == 203 and set(servers.users) <= registered


async def test_user_of_node1_logs_in_on_node2_and_pings(servers: Servers) -> None:
    """alice was registered through node 1; she logs in on node 2 (STARTTLS), pings the
    server, and the cluster reports her session on node 2."""
    node2 = servers.ejabberd.addresses[1]
    async with xmpp_session(servers.jid("alice") + "/smoke", "secret", node2, 5222) as client:
        reply = await client.plugin["xep_0199"].send_ping(
            servers.ejabberd_domain, timeout=STEP_TIMEOUT
        )
        assert reply["type"] == "result"
        sessions = await asyncio.to_thread(servers.ejabberd.connected_users_info, 2)
        mine = [s for s in sessions if s.jid == f"{servers.jid('alice')}/smoke"]
        assert [s.node for s in mine] == [servers.ejabberd.node_names[1]], sessions


async def test_direct_tls_listener_on_node3(servers: Servers) -> None:
    node3 = servers.ejabberd.addresses[2]
    async with xmpp_session(
        servers.jid("user7") + "/dtls", "secret", node3, 5223, direct_tls=True
    ) as client:
        reply = await client.plugin["xep_0199"].send_ping(
            servers.ejabberd_domain, timeout=STEP_TIMEOUT
        )
        assert reply["type"] == "result"


async def test_pat_logs_in_to_prosody(servers: Servers) -> None:
    async with xmpp_session(
        servers.jid("pat") + "/smoke", "secret", servers.prosody_address, 5222
    ) as client:
        reply = await client.plugin["xep_0199"].send_ping(
            servers.prosody_domain, timeout=STEP_TIMEOUT
        )
        assert reply["type"] == "result"


def test_dns_stub_answers_srv(servers: Servers) -> None:
    servers.dns.add_srv("_xmpp-client._tcp.smoke.test", 5, 10, 5222, "127.0.1.1")
    out = subprocess.run(
        ["dig", f"@{servers.dns_address}", "+short", "+time=2", "+tries=1", "-t", "SRV",
         "_xmpp-client._tcp.smoke.test"],
        capture_output=True, text=True, timeout=STEP_TIMEOUT, check=True,
    ).stdout
    assert out.split() == ["5", "10", "5222", "127.0.1.1."]
    status = subprocess.run(
        ["dig", f"@{servers.dns_address}", "+time=2", "+tries=1", "-t", "A", "nowhere.test"],
        capture_output=True, text=True, timeout=STEP_TIMEOUT, check=True,
    ).stdout
    assert "status: NXDOMAIN" in status


async def _wait_for_query(servers: Servers, name: str) -> None:
    """Poll the stub's query log (the servers resolve asynchronously) with a deadline."""
    async def seen() -> None:
        while not any(q[0].lower().startswith(name) for q in servers.dns.queries):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(seen(), STEP_TIMEOUT)


async def test_both_servers_resolve_through_the_stub(servers: Servers) -> None:
    """A message to an unknown remote domain makes each server look up its SRV record, and
    the stub sees the query. Throw-away domains: ejabberd refuses a domain for minutes after a
    failed federation attempt, and later tests need the real ones."""
    ej_probe, pr_probe = "ej-probe.test", "pr-probe.test"
    async with xmpp_session(
        servers.jid("bob") + "/dns", "secret", servers.ejabberd.addresses[0], 5222
    ) as client:
        client.send_message(mto=f"nobody@{ej_probe}", mbody="resolve me")
        await _wait_for_query(servers, f"_xmpp-server._tcp.{ej_probe}")
    async with xmpp_session(
        servers.jid("pat") + "/dns", "secret", servers.prosody_address, 5222
    ) as client:
        client.send_message(mto=f"nobody@{pr_probe}", mbody="resolve me")
        await _wait_for_query(servers, f"_xmpp-server._tcp.{pr_probe}")



def test_node_lifecycle_on_a_private_cluster() -> None:
    """kill_node/start_node/stop_node/pid_of, on a 2-node cluster of its own (restarting a
    node of the shared cluster would disturb the gateway tests of the same session):
    a node started again rejoins by itself and sees what was registered while it was down,
    and stop() copes with a SIGSTOPped node."""
    base = harness_fixtures.make_base_dir()
    cluster = EjabberdCluster(
        base, "lifecycle.test", [("lc1", "127.0.2.11"), ("lc2", "127.0.2.12")], resolver=None
    )
    try:
        cluster.start()
        cluster.kill_node(1)
        cluster.register("while-down", "secret")
        cluster.start_node(1)
        assert set(cluster.list_cluster(1)) == set(cluster.node_names)
        assert "while-down" in cluster.registered_users(node_index=1)
        cluster.stop_node(1)
        cluster.start_node(1)
        assert set(cluster.list_cluster(1)) == set(cluster.node_names)
        os.kill(cluster.pid_of(1), signal.SIGSTOP)
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    assert not any(beam_pids(name) for name in cluster.node_names)
