"""`ejabberdctl stop` of a node: the gateway takes its real out at the mass close, not later.

The chaos suite's ctl_stop finding: ejabberd closes every client session of the stopping
node while its listener still accepts for a few seconds; the clients reconnect at once and
leastconns sent them back to the emptied node, where their logins failed. Here 60 clients
(tests/support/storm.py, mode "stay": they log in again when cut) are logged in through a
leastconns farm of the three nodes; the node holding about a third of them is stopped with
`ejabberdctl stop`. The gateway must log `real_mass_close` and mark that real FAILED before
any probe does, and every cut client must log in again with no failed attempt. Then the
node is started again (it rejoins the cluster by itself) and its real comes back into
service: new logins reach it. The harness is left as it was (node running, in the cluster).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.harness.ejabberd import beam_pids
from tests.harness.servers import Servers
from tests.support import wait
from tests.support.configs import gateway_config
from tests.support.gateway import GatewayProcess
from tests.support.storm import Storm, ensure_accounts, source_addresses
from xmppgw.connection import SETTLED_TIME

pytestmark = pytest.mark.integration

VIP = "127.0.1.80"
PORT = 5222  # the listeners with a raised backlog: this test is about the stop, not SYN drops
CLIENTS = 60
USER_PREFIX = "mclose"
SOURCES = source_addresses(20)
RETRY = 10  # FAILED this long after the mass close (the probes take over meanwhile)


def config(servers: Servers, control: Path) -> str:
    return gateway_config(
        domain=servers.ejabberd_domain, vip=f"{VIP}:5222", control=control,
        gateway={"log_connect": True}, vserver={"name": "C2S"},
        farm={"mass_close_streams": 10, "slowstart": 0},
        probes=[{"type": "xmpp-stream", "domain": servers.ejabberd_domain,
                 "expect_starttls": True, "interval": 2, "fall": 2, "rise": 1}],
        reals=[{"address": f"{a}:{PORT}", "retry": RETRY} for a in servers.ejabberd_addresses])


@pytest.fixture(scope="module")
def accounts(servers: Servers) -> list[str]:
    return ensure_accounts(servers, USER_PREFIX, CLIENTS)


@contextmanager
def clients(servers: Servers, workdir: Path, count: int, resource: str,
            mode: str) -> Iterator[Storm]:
    with Storm(workdir, host=VIP, port=5222, domain=servers.ejabberd_domain,
               password=servers.password, user_prefix=USER_PREFIX, clients=count,
               resource=resource, sources=SOURCES, processes=2, mode=mode) as storm:
        yield storm


def sessions(servers: Servers, resource: str) -> list[Any]:
    return [s for s in servers.ejabberd.connected_users_info(0) if s.resource == resource]


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    return wait.wait_until(condition, timeout, what, poll=0.2)  # what it polls is costly


def show_reals(gw: GatewayProcess) -> dict[str, str]:
    return {r["address"]: r["state"] for r in json.loads(gw.show("reals", "--json"))}


def test_ejabberdctl_stop_takes_the_real_out_at_the_mass_close(
        servers: Servers, accounts: list[str], tmp_path: Path) -> None:
    ejabberd = servers.ejabberd
    resource = "mass-close"
    gw = GatewayProcess(config(servers, tmp_path / "ctl.sock"), tmp_path / "gateway").start()
    index = None
    try:
        with clients(servers, tmp_path / "clients", CLIENTS, resource, "stay") as storm:
            storm.go()
            storm.wait(storm.all_up, 60, "every client logged in")
            found = wait_until(lambda: (s := sessions(servers, resource))
                               and len(s) == CLIENTS and s, 30, "ejabberd lists every session")
            on_node = Counter(s.node for s in found)
            # not node 0 (the one the others joined): the busier of the other two
            index = max((1, 2), key=lambda i: on_node[ejabberd.node_names[i]])
            victim = f"{servers.ejabberd_addresses[index]}:{PORT}"
            held = on_node[ejabberd.node_names[index]]
            assert held >= 10, on_node  # enough streams for mass_close_streams = 10
            gw.settle()
            # Streams younger than SETTLED_TIME do not count (a login refused or cut short
            # is no sign of a real going away): let the last login settle first.
            time.sleep(SETTLED_TIME + 0.5)
            stopped_at = time.time()
            ejabberd.stop_node(index)  # ejabberdctl stop: its sessions closed, then the VM
            storm.wait(lambda: len([r for r in storm.records("down")
                                    if r["t"] >= stopped_at]) >= held, 30,
                       f"the {held} clients of {victim} cut")
            storm.wait(storm.all_up, 60, "every cut client logged in again")
            failed_logins = [r for r in storm.failures() if r["t"] >= stopped_at]
            gw.settle()
            bursts = [r for r in gw.records("real_mass_close") if r["real"] == victim]
            changes = [r for r in gw.records("real_state") if r["real"] == victim]
            log = gw.records()
            burst_at = next((i for i, r in enumerate(log) if r.get("event") == "real_mass_close"
                             and r.get("real") == victim), len(log))
            # streams committed to the stopping node after it was taken out
            sent_back = [r for r in log[burst_at:]
                         if r.get("event") == "connected" and r.get("real") == victim]
        assert not failed_logins, failed_logins
        assert bursts and bursts[0]["action"] == "failed", bursts
        assert bursts[0]["closes"] >= 10, bursts
        # out by the mass close first, before any probe said anything
        assert changes and changes[0]["new"] == "FAILED", changes
        assert "mass close" in changes[0]["reason"], changes
        assert not sent_back, sent_back
        # the node comes back and rejoins: the real returns to service and takes logins
        ejabberd.start_node(index)
        assert set(ejabberd.list_cluster(index)) == set(ejabberd.node_names)
        wait_until(lambda: show_reals(gw)[victim] in ("OPERATIONAL", "TESTING"), 30,
                   f"{victim} out of PROBE_FAILED/FAILED")
        with clients(servers, tmp_path / "again", 6, "mass-close-again", "once") as again:
            again.go()
            again.wait(again.settled, 60, "the new logins done")
            assert again.failures() == [], again.failures()
            wait_until(lambda: show_reals(gw)[victim] == "OPERATIONAL", 10,
                       f"{victim} OPERATIONAL again")
            assert any(r.get("real") == victim for r in gw.records("connected")), (
                "no new login reached the restarted node")
    finally:
        gw.stop()
        if index is not None and not beam_pids(ejabberd.nodes[index].name):
            ejabberd.start_node(index)  # leave the harness as it was
    assert "Traceback" not in gw.log_text(), gw.log_text()[-4000:]
