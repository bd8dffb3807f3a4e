"""Issue 14: the chaos suite's quick run (chaos/run.py, `python -m chaos run --quick`) against
the session's real servers: a latency toxic on one real, reset_peer during STARTTLS on
another, a planned drain, SIGSTOP of a node, a SYN blackhole (nftables) with SRV-only clients
beside the gateway's, message pairs (slixmpp and aioxmpp, XEP-0198) through a slicer on the
client links, kill -9 of a node and its reconnect storm; every scenario's asserted outcome
must hold. A killed or stopped node is started again (by the scenario, and here again if it is
still down) for the tests after this."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.harness.ejabberd import beam_pids
from tests.harness.fixtures import make_base_dir
from tests.harness.servers import Servers

pytestmark = pytest.mark.integration

VIP = "127.0.1.71"  # not the session gateway's 127.0.1.1, nor `python -m chaos`'s


@pytest.mark.timeout(420)
def test_chaos_quick(servers: Servers, tmp_path: Path) -> None:
    from chaos.faults import remove_stale
    from chaos.run import run_suite
    from chaos.scenarios import QUICK

    workdir = make_base_dir()
    try:
        results, path = run_suite(servers, workdir, quick=True, results_dir=tmp_path, vip=VIP,
                                  live=False)
    finally:
        remove_stale()
        for i, node in enumerate(servers.ejabberd.nodes):
            if not beam_pids(node.name):
                servers.ejabberd.start_node(i)
        shutil.rmtree(workdir, ignore_errors=True)
    assert set(servers.ejabberd.list_cluster(0)) == set(servers.ejabberd.node_names)
    assert [r.scenario for r in results] == [
        "latency", "reset_peer", "drain", "sigstop", "blackhole",
        "blackhole: SRV only, no gateway", "slicer", "kill", "kill: reconnect storm",
        "kill: SRV only, no gateway"]
    assert {r.scenario for r in results} >= set(QUICK)
    slicer = next(r for r in results if r.scenario == "slicer")
    assert slicer.messages_sent and slicer.messages_lost == 0
    table = path.read_text()
    data = json.loads(path.with_suffix(".json").read_text())
    assert data["machine"]["cpu_count"] and data["results"][0]["scenario"] == "latency"
    failed = {r.scenario: r.failures for r in results if not r.ok}
    assert not failed, table
