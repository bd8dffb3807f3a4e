"""A published real is watched even when no probe is configured (issue 13, item 9).

Two gateway processes publish the same farm through their embedded DNS servers: the three
ejabberd nodes of the cluster and a fourth real, a plain TCP listener this test starts and
then closes (the cluster's own nodes are shared by the whole session and never stopped
here). Neither config has a `[[serverfarm.probe]]`; the second says `probe = []`.

- With no probe key, `[srv]` gives the farm an implicit `tcp` probe, and the start log and
  `show reals detail` say so. Once the listener closes, the real leaves the answers within
  `fall × interval + timeout` (3 × 5 + 2 s) plus a little, while no client ever tries it.
- With `probe = []`, nothing watches it: it is still published after that time.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.servers import Servers
from tests.support.gateway import GatewayProcess
from xmppgw.config import IMPLICIT_PROBE

pytestmark = pytest.mark.integration

WATCHED_VIP, WATCHED_DNS = "127.0.1.22", "127.0.5.55"  # no probe key: the implicit probe
BLIND_VIP, BLIND_DNS = "127.0.1.23", "127.0.5.56"      # probe = []: nothing watches
DOOMED = "127.0.1.28"                                  # the real this test stops
DOOMED_TARGET = "real-127-0-1-28.example.test."
CLIENT_SRV = "_xmpp-client._tcp.example.test"
# What docs/probes.md promises ("The implicit probe"): out after `fall` failed runs,
# `interval` apart, each at most `timeout` long; then the publisher's 1 s tick and dig's
# own round trips.
BOUND = IMPLICIT_PROBE.fall * IMPLICIT_PROBE.interval + IMPLICIT_PROBE.timeout
SLACK = 3.0


def config(servers: Servers, vip: str, dns_address: str, control: Path, probes: str) -> str:
    reals = "".join(f'[[serverfarm.real]]\naddress = "{a}"\n'
                    for a in (*servers.ejabberd_addresses, DOOMED))
    return f"""
[gateway]
domains = ["{servers.ejabberd_domain}"]
control_socket = "{control}"

[[vserver]]
name = "P5222"
virtual = "{vip}:5222"
serverfarm = "XMPP"

[[serverfarm]]
name = "XMPP"
slowstart = 0
{probes}
{reals}
[srv]
listen = "{dns_address}:53"
ttl = 5
"""


class Listener:
    """A real that accepts TCP on DOOMED:5222 (and closes each connection) until closed."""

    def __init__(self) -> None:
        self.sock = socket.create_server((DOOMED, 5222), backlog=64)
        self.sock.settimeout(0.2)
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self.closed.set()
        self.thread.join(5)
        self.sock.close()


def srv_targets(server: str) -> list[str]:
    out = subprocess.run(["dig", f"@{server}", "+tries=2", "+timeout=2", "+short", CLIENT_SRV,
                          "SRV"], capture_output=True, text=True, timeout=30, check=False).stdout
    return sorted(line.split()[3] for line in out.splitlines() if line.strip())


def wait_for(server: str, ok: object, what: str, timeout: float) -> float:
    """Seconds until the SRV targets `server` answers satisfy `ok`."""
    start = time.monotonic()
    targets: list[str] = []
    while time.monotonic() - start < timeout:
        targets = srv_targets(server)
        if targets and ok(targets):  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"waited {timeout} s for {what}; the answer names {targets}")


@pytest.fixture(scope="module")
def gateways(servers: Servers) -> Iterator[tuple[GatewayProcess, GatewayProcess, Listener]]:
    listener = Listener()
    with tempfile.TemporaryDirectory(prefix="xmppgw-implicit-") as path:
        work = Path(path)
        watched = GatewayProcess(config(servers, WATCHED_VIP, WATCHED_DNS, work / "w.sock", ""),
                                 work, "watched")
        blind = GatewayProcess(config(servers, BLIND_VIP, BLIND_DNS, work / "b.sock",
                                      "probe = []"), work, "blind")
        try:
            watched.start()
            blind.start()
            yield watched, blind, listener
        finally:
            listener.close()
            for gw in (watched, blind):
                assert gw.stop() == 0, gw.log_text()[-3000:]
                assert "Traceback" not in gw.log_text()


def test_a_stopped_real_leaves_the_answers_only_where_it_is_watched(
        servers: Servers, gateways: tuple[GatewayProcess, GatewayProcess, Listener]) -> None:
    watched, blind, listener = gateways
    everyone = sorted(f"real-{a.replace('.', '-')}.example.test."
                      for a in (*servers.ejabberd_addresses, DOOMED))
    for dns_server in (WATCHED_DNS, BLIND_DNS):
        wait_for(dns_server, lambda t: set(everyone) <= set(t), "every real", 10.0)

    # The implicit probe is announced at start and shown, and the blind gateway has none.
    implicit = watched.wait_record(lambda r: r["farm"] == "XMPP", event="implicit_probe")
    assert (implicit["type"], implicit["interval"], implicit["fall"]) == ("tcp", 5.0, 3)
    started = watched.wait_record(lambda r: True, event="probes_started")
    assert started["implicit"] == ["XMPP"] and started["reals"] == 4
    blind.settle()
    assert not blind.records("implicit_probe") and not blind.records("probes_started")
    detail = watched.show("reals", "detail")
    doomed_row = next(line for line in detail.splitlines() if line.startswith(DOOMED))
    assert "tcp (implicit) up" in doomed_row, detail
    assert "probe" not in blind.show("reals", "detail").splitlines()[0]

    listener.close()  # the real stops listening: connections to it are refused from now
    took = wait_for(WATCHED_DNS, lambda t: DOOMED_TARGET not in t,
                    "the stopped real to leave the watched gateway's answers", BOUND + SLACK)
    print(f"\nthe stopped real left the answers {took:.1f} s after it stopped listening "
          f"(bound {BOUND:.0f} s)")
    assert srv_targets(WATCHED_DNS) == sorted(
        ["xmpp.example.test.", *(t for t in everyone if t != DOOMED_TARGET)])
    state = watched.wait_record(lambda r: r["real"] == DOOMED, event="real_state")
    assert state["new"] == "PROBE_FAILED"

    # probe = []: nobody watches, so the stopped real is still published past the bound.
    time.sleep(max(0.0, BOUND + SLACK - took))
    assert DOOMED_TARGET in srv_targets(BLIND_DNS)
    assert not blind.records("real_state")
