"""Issue 16: an upgrade that drops no stream (`xmppgw run --takeover`), against the real
cluster.

100 clients (scripts/demo_clients.py: storm clients that ping their server every second and
log in again when cut) are logged in through a gateway; one more connection is a raw stream
left in cleartext after the server's features. The operator has taken one node out of
service, and a fourth real (nothing listens there) is PROBE_FAILED. Then a second
`xmppgw run --takeover --drain 6` with the same control socket takes over:

- no client is cut and every ping is answered from the takeover until the old process's
  drain deadline;
- the new process owns the listening socket (one descriptor, no copy left anywhere) and the
  control socket path; new logins go through it, none through the old one;
- it shows the operator's no-inservice and the PROBE_FAILED real from its first `show`
  (carried over, not learned again), and logs no real going OPERATIONAL;
- at the deadline the old process tells the cleartext stream `<system-shutdown/>`, closes
  the TLS ones (those clients log in again, through the new process) and exits 0;
- no descriptor is left behind in the new process once its clients are gone; no Traceback.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness.servers import Servers
from tests.support.gateway import ROOT, GatewayProcess
from tests.support.storm import Storm, source_addresses

pytestmark = pytest.mark.integration

VIP = "127.0.1.62"  # not the session gateway's, the demo's (61) or the chaos suite's (70, 71)
DEAD_REAL = "127.0.2.40"  # nothing listens there: its probe fails
CLIENTS = 100
NEW_LOGINS = 10
NEW_SOURCE = "127.0.10.250"  # the new logins come from here, the population from elsewhere
DRAIN = 6.0


def config_text(servers: Servers, control: Path) -> str:
    reals = "".join(f"""
[[serverfarm.real]]
address = "{address}:5222"
""" for address in [*servers.ejabberd_addresses, DEAD_REAL])
    return f"""
[gateway]
control_socket = "{control}"
domains = ["{servers.ejabberd_domain}"]
log_connect = true

[[vserver]]
name = "P5222"
virtual = "{VIP}:5222"
mode = "starttls"
serverfarm = "XMPP"

[[serverfarm]]
name = "XMPP"
predictor = "leastconns"

[[serverfarm.probe]]
type = "tcp"
interval = 1
fall = 1
rise = 3
{reals}"""


def pinging(servers: Servers, workdir: Path, clients: int, resource: str, first: int,
            sources: list[str], mode: str = "stay") -> Storm:
    storm = Storm(workdir, host=VIP, port=5222, domain=servers.ejabberd_domain,
                  password=servers.password, user_prefix="user", clients=clients,
                  processes=2 if clients > 20 else 1, resource=resource, sources=sources,
                  mode=mode, attempt_timeout=30.0)
    storm.first = first
    storm.client_command = [sys.executable, str(ROOT / "scripts" / "demo_clients.py")]
    return storm


def cleartext_stream(domain: str) -> socket.socket:
    """A client stream left in cleartext once the server's features have come."""
    sock = socket.create_connection((VIP, 5222), timeout=10)
    sock.sendall(f"<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
                 "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>".encode())
    data = b""
    while b"</stream:features>" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return sock


def read_to_end(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def holders(port: int) -> list[tuple[int, int]]:
    """(pid, descriptor) of every process descriptor holding a listener on VIP:port."""
    out = subprocess.run(["ss", "-Hltnp", f"src {VIP} and sport = :{port}"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    return [(int(pid), int(fd)) for pid, fd in re.findall(r"pid=(\d+),fd=(\d+)", out)]


def show(gw: GatewayProcess, what: str) -> Any:
    return json.loads(gw.show(what, "--json"))


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.1)
    return result


def sessions_of(gw: GatewayProcess) -> int:
    return sum(v["conns"] for v in show(gw, "vservers"))


@pytest.mark.timeout(180)
def test_takeover_under_pinging_clients_drops_no_stream(servers: Servers,
                                                        tmp_path: Path) -> None:
    control = tmp_path / "ctl" / "xmppgw.sock"
    text = config_text(servers, control)
    spare = f"{servers.ejabberd_addresses[2]}:5222"
    dead = f"{DEAD_REAL}:5222"
    old = GatewayProcess(text, tmp_path / "old").start()
    new = GatewayProcess(text, tmp_path / "new")
    new.run_args = ["--takeover", "--drain", str(DRAIN)]
    population = pinging(servers, tmp_path / "clients", CLIENTS, "takeover", 0,
                         source_addresses(20))
    try:
        old.wait_record(lambda r: r["real"] == dead and r["new"] == "PROBE_FAILED",
                        event="real_state")
        admin = subprocess.run([sys.executable, "-m", "xmppgw", "real", "XMPP", spare,
                                "no-inservice", "-c", str(old.config_path)], cwd=ROOT,
                               capture_output=True, text=True, timeout=30, check=False)
        assert admin.returncode == 0, admin.stderr
        population.start()
        population.go()
        population.wait(population.all_up, 90, "every client logged in")
        raw = cleartext_stream(servers.ejabberd_domain)

        began = time.time()
        new.start(timeout=30)
        released = old.wait_record(lambda r: True, event="takeover_released")
        assert released["sessions"] == CLIENTS + 1, released
        fds_at_start = new.fd_count()
        # the new process holds the one listening socket, and the control socket's path
        assert [pid for pid, _ in holders(5222)] == [new.pid], holders(5222)
        reals = {r["address"]: r["state"] for r in show(new, "reals")}  # asks the new one
        assert reals[spare] == "OUTOFSERVICE" and reals[dead] == "PROBE_FAILED", reals
        assert sessions_of(new) == 0  # the old streams stayed with the old process

        newcomers = pinging(servers, tmp_path / "newcomers", NEW_LOGINS, "takeover-new",
                            CLIENTS, [NEW_SOURCE], mode="once")
        with newcomers:
            newcomers.go()
            newcomers.wait(newcomers.settled, 60, "the new logins")
            assert newcomers.summary()["logins"] == NEW_LOGINS, newcomers.describe()
            via_new = [r for r in new.records("connected")
                       if r["client"].startswith(NEW_SOURCE + ":")]
            assert len(via_new) == NEW_LOGINS, via_new
            assert not [r for r in old.records("connected")
                        if r["client"].startswith(NEW_SOURCE + ":")]
        # the deadline: the cleartext stream is told, the TLS ones are closed, the old exits
        told = read_to_end(raw, DRAIN + 10)
        raw.close()
        deadline_at = time.time()
        assert b"system-shutdown" in told, told
        assert old.proc is not None and old.proc.wait(30) == 0, old.log_text()[-3000:]
        drained = old.records("takeover_drain_deadline")
        assert drained and drained[0]["told_system_shutdown"] == 1, drained
        cut = [r for r in population.records("down") if began <= r["t"] < deadline_at - 0.5]
        assert not cut, cut  # nobody was cut before the deadline
        failed_pings = [r for r in population.records("ping")
                        if not r["ok"] and began <= r["t"] < deadline_at - 0.5]
        assert not failed_pings, failed_pings
        pings = [r for r in population.records("ping") if began <= r["t"] < deadline_at]
        assert len({r["client"] for r in pings}) == CLIENTS  # every client kept pinging
        # the cut clients log in again, through the new process
        population.wait(population.all_up, 90, "every client back after the deadline")
        wait_until(lambda: sessions_of(new) == CLIENTS, 30, "the new process holds them all")
    finally:
        population.quit()
        old.stop()
    wait_until(lambda: sessions_of(new) == 0, 30, "the clients gone from the new process")
    new.settle()
    assert not [r for r in new.records("real_state")
                if r["real"] in (spare, dead) and r["new"] == "OPERATIONAL"]
    # (probe connections come and go: one per real at most)
    assert new.fd_count() <= fds_at_start + 4, (fds_at_start, new.fd_count())
    assert new.stop() == 0
    assert not control.exists()  # the last one removed it
    for gw in (old, new):
        assert "Traceback" not in gw.log_text(), gw.log_text()[-4000:]

