"""Issue 18: the demo's scenario (scripts/demo.py), shortened and without a terminal, against
the session's real servers: kill -9 of a node, its restart, a planned drain, the spare put in
service. The summary's figures are what a new user is shown; this checks they say what the
README promises."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.harness.ejabberd import beam_pids
from tests.harness.fixtures import make_base_dir
from tests.harness.servers import Servers

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VIP = "127.0.1.61"  # not the session gateway's 127.0.1.1: both may be up at once


def load_demo():  # scripts/ is not a package
    spec = importlib.util.spec_from_file_location("xmppgw_demo", ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["xmppgw_demo"] = module
    spec.loader.exec_module(module)
    return module


def leftovers(workdir: Path) -> list[str]:
    """Processes the demo started that still run: its gateway and spare node (their command
    lines name files in `workdir`) and its client processes (scripts/demo_clients.py)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
        if state != "Z" and (str(workdir) in cmdline or "demo_clients.py" in cmdline):
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


@pytest.mark.timeout(240)
def test_demo_scenario_quick_plain(servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
    demo = load_demo()
    workdir = make_base_dir()  # the spare ejabberd node runs as the ejabberd user
    try:
        summary = demo.run_scenario(servers, workdir, vip=VIP,
                                    control=str(workdir / "ctl" / "xmppgw.sock"),
                                    quick=True, plain=True, clients=24)
    finally:
        node = servers.ejabberd.nodes[demo.KILLED_INDEX].name
        if not beam_pids(node):  # the scenario restarts it; make sure, for the next tests
            servers.ejabberd.start_node(demo.KILLED_INDEX)
        shutil.rmtree(workdir, ignore_errors=True)
    assert leftovers(workdir) == [], "the demo left processes running"
    out = capsys.readouterr().out
    assert "demo summary: failed logins: 0" in out, out[-3000:]
    # retries are shown, not hidden: a short login cut mid-way (kill -9) tried once more
    assert re.search(r"^demo summary:   short logins cut once, then tried again: \d+$", out,
                     re.MULTILINE), out[-3000:]
    assert set(servers.ejabberd.list_cluster(demo.KILLED_INDEX)) \
        == set(servers.ejabberd.node_names)

    assert summary["failed_logins"] == 0, summary["failed_login_reasons"]
    kill = summary["kill"]
    assert kill["cut"] > 0 and kill["all_back"] and kill["failed_logins"] == 0, kill
    states = summary["killed_states"]
    assert "FAILED" in states and states[-1] == "OPERATIONAL", states
    assert states.index("FAILED") < len(states) - 1
    assert "real-127-0-2-2" not in summary["dig_after_kill"], summary["dig_after_kill"]
    drain = summary["drain"]
    assert drain["cut_before_deadline"] == 0, drain
    assert drain["closed_at_deadline"] and drain["moved"] > 0 and drain["all_back"], drain
    if summary["spare_up"]:
        assert summary["spare_states"][-1:] == ["OPERATIONAL"] and summary["spare_streams"]
    assert summary["pings_ok"] > 0 and summary["pings_failed"] == 0, summary
    assert summary["reconnect_median_s"] is not None
