"""Issue 7 against the real cluster: `real/vserver ... no-inservice [--drain]`, reload under
load, and the graceful stop, driven with the `xmppgw` command as an operator types it.

A gateway process of its own per module (its farm state must not leak into other tests), in
front of the harness's 3-node ejabberd cluster, with one and with two workers.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from slixmpp import ClientXMPP

from tests.harness.client import close, make_client, xmpp_session
from tests.harness.servers import Servers
from tests.support.gateway import ROOT, GatewayProcess

pytestmark = pytest.mark.integration

VIP = "127.0.1.10"
VIP_WORKERS = "127.0.1.11"
VIP_ADDED = "127.0.1.13"  # a vserver the reload adds
FARM = "CLUSTER"
METRICS_PORT = 9105


def config(servers: Servers, vip: str, control_socket: Path, workers: int = 1,
           weights: tuple[int, ...] = (1, 1, 1), extra: str = "") -> str:
    reals = "".join(f'\n[[serverfarm.real]]\naddress = "{a}"\nweight = {w}\n'
                    for a, w in zip(servers.ejabberd_addresses, weights))
    return f"""
[gateway]
domains = ["{servers.ejabberd_domain}"]
log_connect = true
control_socket = "{control_socket}"
workers = {workers}
shutdown_timeout = 2
metrics = "{vip}:{METRICS_PORT}"

[[vserver]]
name = "C2S"
virtual = "{vip}:5222"
serverfarm = "{FARM}"
{extra}
[[serverfarm]]
name = "{FARM}"
predictor = "roundrobin"
slowstart = 0
{reals}"""


def xmppgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xmppgw", *args], capture_output=True,
                          text=True, timeout=60, check=False, cwd=ROOT)


@pytest.fixture(scope="module")
def control_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="xmppgw-ops-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_gateway(servers: Servers, control_dir: Path, workdir: Path, vip: str,
                  workers: int) -> GatewayProcess:
    sock = control_dir / f"{vip}.sock"
    return GatewayProcess(config(servers, vip, sock, workers), workdir,
                          name=f"ops-{workers}").start()


@pytest.fixture(scope="module")
def gateway(servers: Servers, control_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = start_gateway(servers, control_dir, tmp_path_factory.mktemp("ops"), VIP, 1)
    yield gw
    gw.stop()


def real_of(gw: GatewayProcess, client: ClientXMPP) -> str:
    """Which real the gateway gave this client: its `connected` log line, by client port."""
    port = client.transport.get_extra_info("sockname")[1]
    record = gw.wait_record(lambda r: r["client"].endswith(f":{port}"), event="connected")
    return record["real"]


async def open_sessions(servers: Servers, vip: str, users: list[str]) -> list[ClientXMPP]:
    """Logged-in clients that stay connected; each records its disconnection."""
    clients = []
    for user in users:
        client = make_client(servers.jid(user) + "/ops", servers.password)
        started = asyncio.get_running_loop().create_future()
        client.add_event_handler("session_start",
                                 lambda _, f=started: f.done() or f.set_result(None))
        client.lost = asyncio.get_running_loop().create_future()  # type: ignore[attr-defined]
        client.add_event_handler("disconnected", lambda _, c=client: c.lost.done()
                                 or c.lost.set_result(time.monotonic()))
        client.connect(vip, 5222)
        await asyncio.wait_for(started, 20)
        clients.append(client)
    return clients


async def alive(client: ClientXMPP) -> bool:
    """A round trip through the gateway to the real: an XEP-0199 ping of the server."""
    if client.lost.done():  # type: ignore[attr-defined]
        return False
    try:
        await client.plugin["xep_0199"].ping(timeout=5)
    except Exception:  # noqa: BLE001  (slixmpp raises IqTimeout, IqError, or a lost stream)
        return False
    return True


async def test_no_inservice_moves_new_logins_and_drain_closes_the_rest(
        gateway: GatewayProcess, servers: Servers) -> None:
    cfg = str(gateway.config_path)
    clients = await open_sessions(servers, VIP, [f"user{i}" for i in range(6)])
    try:
        node = servers.ejabberd_addresses[0]
        on_node = [c for c in clients if real_of(gateway, c) == node]
        assert len(on_node) == 2  # roundrobin over three equal reals

        result = xmppgw("real", FARM, node, "no-inservice", "-c", cfg)
        assert result.returncode == 0, result.stderr
        assert f"real {node}: OUTOFSERVICE, 2 conns" in result.stdout
        assert f"{node}, weight = 1, OUTOFSERVICE, conns = 2" in gateway.show(
            "serverfarms", "detail")
        newcomers = await open_sessions(servers, VIP, [f"user{i}" for i in range(6, 12)])
        clients += newcomers
        assert all(real_of(gateway, c) != node for c in newcomers)
        assert all([await alive(c) for c in on_node])  # existing sessions keep working

        # A long drain is shown with its end; a shorter one given later replaces it.
        result = xmppgw("real", FARM, node, "no-inservice", "--drain", "600", "-c", cfg)
        assert result.returncode == 0, result.stderr
        [row] = [r for r in json.loads(gateway.show("reals", "--json"))
                 if r["address"] == node]
        assert row["drain_end"].endswith("Z") and 590 < row["drain_left"] <= 600
        assert f"{node}, weight = 1, OUTOFSERVICE, conns = 2, drain ends {row['drain_end']}" \
            in gateway.show("serverfarms", "detail")
        assert all([await alive(c) for c in on_node])  # a drain under way cuts nobody yet
        result = xmppgw("real", FARM, node, "no-inservice", "--drain", "1", "-c", cfg)
        assert result.returncode == 0, result.stderr
        for client in on_node:
            await asyncio.wait_for(client.lost, 10)  # type: ignore[attr-defined]
        assert all([await alive(c) for c in clients if c not in on_node])
        gateway.settle()
        assert gateway.records("drained")[-1]["reals"] == [node]

        result = xmppgw("real", FARM, node, "inservice", "-c", cfg)
        assert result.returncode == 0 and "OPERATIONAL" in result.stdout, result.stderr
        back = await open_sessions(servers, VIP, [f"user{i}" for i in range(12, 15)])
        clients += back
        assert node in {real_of(gateway, c) for c in back}
    finally:
        await asyncio.gather(*(close(c) for c in clients))


async def test_a_drain_tells_a_cleartext_stream_system_shutdown(
        gateway: GatewayProcess, servers: Servers) -> None:
    """A stream still in cleartext (ejabberd's header and features read, no STARTTLS yet)
    on a drained real gets <system-shutdown/> before the close, as at shutdown."""
    cfg = str(gateway.config_path)
    reader, writer = await asyncio.open_connection(VIP, 5222)
    port = writer.get_extra_info("sockname")[1]
    node = None
    try:
        writer.write(f"<?xml version='1.0'?><stream:stream to='{servers.ejabberd_domain}' "
                     "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
                     "version='1.0'>".encode())
        greeting = b""
        while b"</stream:features>" not in greeting:
            greeting += await asyncio.wait_for(reader.read(4096), 10)
        node = gateway.wait_record(lambda r: r["client"].endswith(f":{port}"),
                                   event="connected")["real"]
        result = xmppgw("real", FARM, node, "no-inservice", "--drain", "0", "-c", cfg)
        assert result.returncode == 0, result.stderr
        tail = await asyncio.wait_for(reader.read(), 10)
        assert b"<system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in tail
        assert b"this node is being taken out of service" in tail
        assert tail.endswith(b"</stream:stream>")
        record = gateway.wait_record(lambda r: r["client"].endswith(f":{port}"))
        assert record["error"] == "drained" and record["real"] == node
    finally:
        writer.close()
        if node is not None:  # back in service for the module's other tests
            result = xmppgw("real", FARM, node, "inservice", "-c", cfg)
            assert result.returncode == 0, result.stderr


def test_unknown_real_is_refused_with_the_known_ones(gateway: GatewayProcess) -> None:
    result = xmppgw("real", FARM, "192.0.2.1", "no-inservice", "-c", str(gateway.config_path))
    assert result.returncode == 1
    assert "no real '192.0.2.1' in serverfarm CLUSTER (known: 127.0.2.1" in result.stderr


async def test_vserver_no_inservice_refuses_new_clients_and_keeps_the_old(
        gateway: GatewayProcess, servers: Servers) -> None:
    cfg = str(gateway.config_path)
    async with xmpp_session(servers.jid("alice") + "/vs", servers.password, VIP, 5222,
                            send_presence=False) as client:
        result = xmppgw("vserver", "C2S", "no-inservice", "-c", cfg)
        assert result.returncode == 0 and "OUTOFSERVICE" in result.stdout, result.stderr
        try:
            with pytest.raises(ConnectionRefusedError):  # refused at once: no SYN timeout
                socket.create_connection((VIP, 5222), timeout=5).close()
            await client.plugin["xep_0199"].ping(timeout=5)  # the open stream goes on
            assert "OUTOFSERVICE" in gateway.show("vservers")
        finally:
            result = xmppgw("vserver", "C2S", "inservice", "-c", cfg)
        assert result.returncode == 0, result.stderr
    async with xmpp_session(servers.jid("bob") + "/vs", servers.password, VIP, 5222,
                            send_presence=False):
        pass


async def test_reload_under_load_drops_nobody(gateway: GatewayProcess, servers: Servers,
                                              control_dir: Path) -> None:
    """100 logged-in clients; the reload changes weights, drops a real and adds a vserver.
    None of the 100 is dropped; then a broken file is refused and the gateway runs on."""
    cfg = gateway.config_path
    original = cfg.read_text()
    clients = await open_sessions_fast(servers, VIP, [f"user{i}" for i in range(100, 200)])
    try:
        dropped = servers.ejabberd_addresses[2]
        cfg.write_text(config(servers, VIP, control_dir / f"{VIP}.sock", weights=(3, 1),
                              extra=f'\n[[vserver]]\nname = "C2S-B"\nvirtual = "{VIP_ADDED}:5222"\n'
                                    f'serverfarm = "{FARM}"\n'))
        result = xmppgw("reload", "-c", str(cfg))
        assert result.returncode == 0, result.stderr
        assert f"reals removed: {FARM}/{dropped}" in result.stdout
        assert "vservers added: C2S-B" in result.stdout
        assert all([await alive(c) for c in clients])  # nobody dropped, the removed real too
        newcomers = await open_sessions(servers, VIP, ["alice", "bob", "carol", "user0"])
        clients += newcomers
        assert [real_of(gateway, c) for c in newcomers].count(dropped) == 0
        async with xmpp_session(servers.jid("user1") + "/b", servers.password, VIP_ADDED, 5222,
                                send_presence=False):
            pass  # the added vserver listens

        cfg.write_text(original.replace('predictor = "roundrobin"', 'predictor = "fastest"'))
        result = xmppgw("reload", "-c", str(cfg))
        assert result.returncode == 1
        assert f"{cfg}:" in result.stderr and "predictor: must be one of" in result.stderr
        gateway.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        gateway.wait_record(lambda r: True, event="reload_refused")
        assert all([await alive(c) for c in clients])
        async with xmpp_session(servers.jid("user2") + "/b", servers.password, VIP_ADDED, 5222,
                                send_presence=False):
            pass  # the last good config runs on
    finally:
        cfg.write_text(original)
        await asyncio.gather(*(close(c) for c in clients))
    assert xmppgw("reload", "-c", str(cfg)).returncode == 0


async def open_sessions_fast(servers: Servers, vip: str, users: list[str],
                             batch: int = 20) -> list[ClientXMPP]:
    clients: list[ClientXMPP] = []
    for i in range(0, len(users), batch):
        groups = await asyncio.gather(*(open_sessions(servers, vip, [u])
                                        for u in users[i:i + batch]))
        clients += [c for group in groups for c in group]
    return clients


async def test_sigterm_tells_cleartext_streams_system_shutdown(
        servers: Servers, control_dir: Path, tmp_path: Path) -> None:
    """A stream still in cleartext gets <system-shutdown/>; a TLS one keeps going until
    shutdown_timeout (2 s here), then is closed."""
    gw = start_gateway(servers, control_dir, tmp_path, "127.0.1.12", 1)
    try:
        reader, writer = await asyncio.open_connection("127.0.1.12", 5222)
        writer.write(f"<?xml version='1.0'?><stream:stream to='{servers.ejabberd_domain}' "
                     "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
                     "version='1.0'>".encode())
        greeting = b""
        while b"</stream:features>" not in greeting:
            greeting += await asyncio.wait_for(reader.read(4096), 10)
        async with xmpp_session(servers.jid("carol") + "/tls", servers.password, "127.0.1.12",
                                5222, send_presence=False) as client:
            lost = asyncio.get_running_loop().create_future()
            client.add_event_handler("disconnected", lambda _: lost.done()
                                     or lost.set_result(None))
            gw.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            tail = await asyncio.wait_for(reader.read(), 10)
            assert b"<system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in tail
            assert tail.endswith(b"</stream:stream>")
            assert not lost.done()
            await client.plugin["xep_0199"].ping(timeout=5)  # TLS stream: still relayed
            await asyncio.wait_for(lost, 15)  # closed at shutdown_timeout
        assert gw.proc.wait(15) == 0  # type: ignore[union-attr]
        gw.settle()
        assert gw.records("shutting_down")[0]["told_system_shutdown"] == 1
        assert gw.records("shutdown_timeout")[0]["closing"] == 1
    finally:
        gw.stop()


def scrape(vip: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}, read with prometheus_client's own
    parser (what a Prometheus server would take in)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{vip}:{METRICS_PORT}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def test_metrics_count_connections_and_show_real_state(
        gateway: GatewayProcess, servers: Servers) -> None:
    before = scrape(VIP)
    ended = ("xmppgw_connections_total", (("error", "none"), ("vserver", "C2S")))
    for user in ("alice", "bob", "carol"):
        async with xmpp_session(servers.jid(user) + "/metrics", servers.password, VIP, 5222,
                                send_presence=False):
            pass
    gateway.settle()
    after = scrape(VIP)
    assert after[ended] - before.get(ended, 0) == 3
    ttfb = ("xmppgw_time_to_first_server_byte_seconds_count",
            (("serverfarm", FARM), ("vserver", "C2S")))
    assert after[ttfb] - before.get(ttfb, 0) == 3
    for address in servers.ejabberd_addresses:
        labels = (("real", address), ("serverfarm", FARM), ("state", "OPERATIONAL"))
        assert after[("xmppgw_real_state", labels)] == 1.0
    def sent(scrape: dict[Any, float]) -> tuple[float, float]:
        to_client = scrape.get(("xmppgw_bytes_total",
                                (("direction", "to_client"), ("vserver", "C2S"))), 0.0)
        from_reals = sum(value for (name, labels), value in scrape.items()
                         if name == "xmppgw_real_bytes_total"
                         and ("direction", "from_real") in labels)
        return to_client, from_reals

    (to_before, reals_before), (to_after, reals_after) = sent(before), sent(after)
    assert to_after - to_before > 0
    assert reals_after - reals_before == to_after - to_before  # each byte came from a real


def test_the_docs_list_exactly_the_metrics_served(gateway: GatewayProcess) -> None:
    """Count what you claim: every metric of the Operations page's table (docs/operations.md)
    is served, and every metric served is in the table."""
    from prometheus_client.parser import text_string_to_metric_families

    operations = (ROOT / "docs" / "operations.md").read_text()
    table = operations.split("## Metrics", 1)[1].split("```", 1)[0]
    documented = set(re.findall(r"`(xmppgw_[a-z_]+)`", table))
    with urllib.request.urlopen(f"http://{VIP}:{METRICS_PORT}/metrics", timeout=10) as reply:
        families = {f.name for f in text_string_to_metric_families(reply.read().decode())
                    if f.name.startswith("xmppgw_")
                    and not f.name.endswith("_created")}  # prometheus_client's timestamps
    served = {name for name in documented
              if name in families or name.removesuffix("_total") in families}
    assert served == documented, documented - served
    assert all(f in documented or f + "_total" in documented for f in families), families


@pytest.fixture(scope="module")
def workers_gateway(servers: Servers, control_dir: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = start_gateway(servers, control_dir, tmp_path_factory.mktemp("ops2"), VIP_WORKERS, 2)
    yield gw
    gw.stop()


async def test_with_workers_commands_and_reload_reach_every_worker(
        workers_gateway: GatewayProcess, servers: Servers, control_dir: Path) -> None:
    gw, cfg = workers_gateway, workers_gateway.config_path
    node = servers.ejabberd_addresses[1]
    result = xmppgw("real", FARM, node, "no-inservice", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    clients = await open_sessions_fast(servers, VIP_WORKERS, [f"user{i}" for i in range(20, 50)])
    try:
        gw.settle()
        workers = {r.get("worker") for r in gw.records("connected")}
        assert workers == {0, 1}  # both workers took logins ...
        assert all(real_of(gw, c) != node for c in clients)  # ... and both kept off the node
        xmppgw("real", FARM, node, "inservice", "-c", str(cfg))
        handed = sum(value for (name, _), value in scrape(VIP_WORKERS).items()
                     if name == "xmppgw_real_connections_total")
        assert handed == len(clients)  # counted by two workers, summed by the scrape

        dropped = servers.ejabberd_addresses[0]
        original = cfg.read_text()
        cfg.write_text(config(servers, VIP_WORKERS, control_dir / f"{VIP_WORKERS}.sock",
                              workers=2, weights=(1, 1, 1))
                       .replace(f'address = "{dropped}"', 'address = "127.0.2.250"'))
        try:
            result = xmppgw("reload", "-c", str(cfg))
            assert result.returncode == 0, result.stderr
            gw.settle()
            assert {r.get("worker") for r in gw.records("reloaded")} == {0, 1}
            assert all([await alive(c) for c in clients])
        finally:
            cfg.write_text(original)
            assert xmppgw("reload", "-c", str(cfg)).returncode == 0
    finally:
        await asyncio.gather(*(close(c) for c in clients))
