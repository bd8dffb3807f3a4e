"""Issue 14: the chaos suite's quick run (chaos/run.py, `python -m chaos run --quick`) against
the session's real servers: a latency toxic on one real, reset_peer during STARTTLS on
another, kill -9 of a third node; every scenario's asserted outcome must hold. The killed node
is restarted (by the scenario, and here again if it is still down) for the tests after this."""

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


@pytest.mark.timeout(300)
def test_chaos_quick(servers: Servers, tmp_path: Path) -> None:
    from chaos.run import run_suite
    from chaos.scenarios import KILLED_REAL, SCENARIOS

    workdir = make_base_dir()
    try:
        results, path = run_suite(servers, workdir, quick=True, results_dir=tmp_path, vip=VIP)
    finally:
        node = servers.ejabberd.nodes[KILLED_REAL].name
        if not beam_pids(node):
            servers.ejabberd.start_node(KILLED_REAL)
        shutil.rmtree(workdir, ignore_errors=True)
    assert set(servers.ejabberd.list_cluster(0)) == set(servers.ejabberd.node_names)
    assert [r.scenario for r in results] == list(SCENARIOS)
    table = path.read_text()
    data = json.loads(path.with_suffix(".json").read_text())
    assert data["machine"]["cpu_count"] and data["results"][0]["scenario"] == "latency"
    failed = {r.scenario: r.failures for r in results if not r.ok}
    assert not failed, table
