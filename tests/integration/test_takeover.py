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
  (carried over, not learned again), logs both states once as carried over
  (`real_state_carried`, not `real_state`) with their time in the state going on from the
  old process's, and logs no real going OPERATIONAL;
- at the deadline the old process tells the cleartext stream `<system-shutdown/>`, closes
  the TLS ones (those clients log in again, through the new process) and exits 0;
- no descriptor is left behind in the new process once its clients are gone; no Traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.servers import Servers
from tests.support.configs import gateway_config, toml_table
from tests.support.gateway import ROOT, GatewayProcess
from tests.support.storm import Storm, source_addresses
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

VIP = "127.0.1.62"  # not the session gateway's, the demo's (61) or the chaos suite's (70, 71)
DEAD_REAL = "127.0.2.40"  # nothing listens there: its probe fails
CLIENTS = 100
NEW_LOGINS = 10
NEW_SOURCE = "127.0.10.250"  # the new logins come from here, the population from elsewhere
DRAIN = 6.0


def config_text(servers: Servers, control: Path) -> str:
    return gateway_config(
        domain=servers.ejabberd_domain, vip=f"{VIP}:5222", control=control,
        gateway={"log_connect": True},
        probes=[{"type": "tcp", "interval": 1, "fall": 1, "rise": 3}],
        reals=[{"address": f"{a}:5222"} for a in [*servers.ejabberd_addresses, DEAD_REAL]])


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


def sessions_of(gw: GatewayProcess) -> int:
    return sum(v["conns"] for v in show(gw, "vservers"))


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """AF_UNIX paths hold 107 bytes (the new process's control socket is bound first at
    `<path>.takeover-<pid>`): pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="xmppgw-takeover-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(180)
def test_takeover_under_pinging_clients_drops_no_stream(servers: Servers, tmp_path: Path,
                                                        short_dir: Path) -> None:
    control = short_dir / "xmppgw.sock"
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
        ages = {r["address"]: r["state_age"] for r in show(old, "reals")}

        began = time.time()
        new.start(timeout=30)
        released = old.wait_record(lambda r: True, event="takeover_released")
        assert released["sessions"] == CLIENTS + 1, released
        fds_at_start = new.fd_count()
        # the new process holds the one listening socket, and the control socket's path
        assert [pid for pid, _ in holders(5222)] == [new.pid], holders(5222)
        reals = {r["address"]: r for r in show(new, "reals")}  # asks the new one
        assert reals[spare]["state"] == "OUTOFSERVICE", reals
        assert reals[dead]["state"] == "PROBE_FAILED", reals
        # both states are carried with their age: said once, not as new changes
        carried = {r["real"]: r for r in new.records("real_state_carried")}
        assert {real: (r["state"], r["old_pid"]) for real, r in carried.items()} == {
            dead: ("PROBE_FAILED", old.pid), spare: ("OUTOFSERVICE", old.pid)}, carried
        for real in (dead, spare):
            assert reals[real]["state_age"] >= carried[real]["age"] >= ages[real], (
                reals[real], carried[real], ages[real])
        assert not [r for r in new.records("real_state") if r["real"] in (spare, dead)]
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



# --- without the servers: systemd, and takeovers that must not happen ------------------------

DUMMY_VIP = "127.0.1.63"
DUMMY_REAL = "127.0.1.64"  # nothing listens there; no client connects in these tests


def dummy_config(control: Path, workers: int = 1, extra: str = "",
                 metrics: str | None = None, srv_listen: str | None = None) -> str:
    srv = "" if srv_listen is None else toml_table("[srv]", {"listen": srv_listen})
    return gateway_config(
        domain="example.test", vip=f"{DUMMY_VIP}:5222", control=control,
        gateway={"workers": workers, "metrics": metrics},
        vserver={"name": "C2S", "mode": None}, farm={"name": "DUMMY", "predictor": None},
        reals=[{"address": DUMMY_REAL}], extra=extra + srv)


class NotifySocket:
    """What systemd listens on for sd_notify, with each sender's pid (SCM_CREDENTIALS)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))

    def next(self, timeout: float = 15.0) -> tuple[dict[str, str], int]:
        self.sock.settimeout(timeout)
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = next(struct.unpack("3i", value[:12])[0] for level, kind, value in ancillary
                   if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        return dict(line.split("=", 1) for line in data.decode().splitlines() if line), pid

    def quiet(self, wait: float = 0.5) -> None:
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected notification: {data!r}")


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def vserver(name: str, port: int) -> str:
    return toml_table("[[vserver]]", {"name": name, "virtual": f"{DUMMY_VIP}:{port}",
                                      "serverfarm": "DUMMY"})


def dummy_holders(port: int = 5222, udp: bool = False) -> list[int]:
    out = subprocess.run(["ss", "-Hlunp" if udp else "-Hltnp",
                          f"src {DUMMY_VIP} and sport = :{port}"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    return [int(pid) for pid in re.findall(r"pid=(\d+),fd=", out)]


# the metrics listener and the SRV publisher's DNS server: handed over too (bound anew)
SIDE = {"metrics": f"{DUMMY_VIP}:9105", "srv_listen": f"{DUMMY_VIP}:5353"}


def test_sigusr2_starts_the_successor_and_systemd_hears_its_main_pid(short_dir: Path) -> None:
    """As under the unit: SIGUSR2 to the main PID; the successor (its child, so in the
    service's cgroup) sends MAINPID= and READY=1; the old one sends no STOPPING=1."""
    notes = NotifySocket(short_dir / "notify")
    control = short_dir / "ctl.sock"
    old = GatewayProcess(dummy_config(control, extra=vserver("GONE", 5223), **SIDE),
                         short_dir, env={"NOTIFY_SOCKET": str(short_dir / "notify")})
    old.run_args = ["--drain", "3"]
    old.start()
    successor = None
    try:
        fields, pid = notes.next()
        assert fields.get("READY") == "1" and pid == old.pid, fields
        assert dummy_holders(5223) == [old.pid]
        # the upgrade comes with a config change: GONE goes, ADDED comes
        old.config_path.write_text(dummy_config(control, extra=vserver("ADDED", 5224),
                                                **SIDE))
        os.kill(old.pid, signal.SIGUSR2)
        fields, successor = notes.next()
        assert fields == {"MAINPID": str(successor), "READY": "1"}, fields
        assert successor != old.pid
        parent = Path(f"/proc/{successor}/status").read_text().split("PPid:")[1].split()[0]
        assert int(parent) == old.pid
        argv = Path(f"/proc/{successor}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"--drain") + 1] == b"3", argv  # our --drain, passed on
        assert old.proc is not None and old.proc.wait(15) == 0, old.log_text()
        # no stream to wait for: gone at once, not at its drain time
        assert old.records("takeover_drained") and not old.records("takeover_drain_deadline")
        notes.quiet()  # no STOPPING=1 from the old process
        assert dummy_holders() == [successor]
        assert dummy_holders(5223) == []  # closed with the old process's last copy
        assert dummy_holders(5224) == [successor]
        wait_until(lambda: dummy_holders(9105) == [successor], 10, "the metrics listener")
        wait_until(lambda: dummy_holders(5353) == dummy_holders(5353, udp=True) == [successor],
                   10, "the DNS server")
        with urllib.request.urlopen(f"http://{DUMMY_VIP}:9105/metrics", timeout=10) as page:
            assert b"xmppgw" in page.read()
        assert json.loads(old.show("vservers", "--json"))[0]["inservice"]  # the new one answers
        os.kill(successor, signal.SIGTERM)
        fields, pid = notes.next()
        assert fields == {"STOPPING": "1"} and pid == successor, fields
        wait_until(lambda: gone(successor), 15, "the successor to exit")
        assert not (short_dir / "ctl.sock").exists()
        assert "Traceback" not in old.log_text(), old.log_text()  # the successor's too
    finally:
        if successor is not None and not gone(successor):
            os.kill(successor, signal.SIGKILL)
        old.stop()
        notes.sock.close()


def takeover(config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xmppgw", "run", "--takeover", "-c",
                           str(config_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)


def test_a_takeover_that_cannot_start_leaves_the_old_gateway_as_it_was(short_dir: Path) -> None:
    control = short_dir / "ctl.sock"
    nobody = short_dir / "nobody.toml"
    nobody.write_text(dummy_config(short_dir / "none.sock"))
    result = takeover(nobody)
    assert result.returncode == 1 and "no running gateway answers" in result.stderr, result

    old = GatewayProcess(dummy_config(control), short_dir).start()
    try:
        inode = control.stat().st_ino
        unbindable = short_dir / "unbindable.toml"  # 192.0.2.1 is no address of this host
        unbindable.write_text(dummy_config(control, extra=(
            '\n[[vserver]]\nname = "X"\nvirtual = "192.0.2.1:5222"\nserverfarm = "DUMMY"\n')))
        result = takeover(unbindable)
        assert result.returncode == 1 and "cannot listen on 192.0.2.1:5222" in result.stderr, \
            result
        aborted = old.wait_record(lambda r: True, event="takeover_aborted")
        assert aborted["reason"].startswith("the new process gave up: ") and (
            "cannot listen on 192.0.2.1:5222" in aborted["reason"]), aborted
        workers = short_dir / "workers.toml"
        workers.write_text(dummy_config(control, workers=2))
        result = takeover(workers)
        assert result.returncode == 1 and "needs gateway.workers = 1" in result.stderr, result
        # the old gateway goes on as before: its listener, its control socket
        assert dummy_holders() == [old.pid]
        assert control.stat().st_ino == inode
        assert json.loads(old.show("vservers", "--json"))[0]["inservice"]
        assert not list(short_dir.glob("ctl.sock.takeover-*"))
    finally:
        old.stop()
    assert "Traceback" not in old.log_text(), old.log_text()


def claim_takeover(control: Path, claimed_pid: int) -> socket.socket:
    """Step 1 by hand: the connection then holds the old gateway's takeover claim."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10)
    conn.connect(str(control))
    conn.sendall(json.dumps({"command": "takeover", "pid": claimed_pid}).encode() + b"\n")
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 16)
    for fd in fds:
        os.close(fd)
    assert b'"listeners"' in data and len(fds) == 1, data
    return conn


def test_a_held_takeover_answers_another_at_once_and_frees_itself_when_its_peer_goes(
        short_dir: Path) -> None:
    """A successor that claimed the listeners and neither releases nor goes: a second
    takeover is refused at once, naming the holder's pid (the kernel's, SO_PEERCRED, not the
    one its message claimed) and since when; once the holder's connection closes, the claim
    is free at once (well before the 30 s release wait), and the next takeover is offered."""
    control = short_dir / "ctl.sock"
    old = GatewayProcess(dummy_config(control), short_dir).start()
    try:
        holder = claim_takeover(control, claimed_pid=1)
        offered = old.wait_record(lambda r: True, event="takeover_offered")
        assert (offered["new_pid"], offered["claimed_pid"]) == (os.getpid(), 1), offered
        second = short_dir / "second.toml"
        second.write_text(dummy_config(control))
        result = takeover(second)
        assert result.returncode == 1, result
        assert f"a takeover by pid {os.getpid()} is under way since" in result.stderr, result
        assert not old.records("takeover_aborted")  # answered while the claim was held
        # an operator command meanwhile is refused, naming the takeover; show is answered
        command = subprocess.run([sys.executable, "-m", "xmppgw", "real", "DUMMY", DUMMY_REAL,
                                  "no-inservice", "-c", str(second)], cwd=ROOT,
                                 capture_output=True, text=True, timeout=30, check=False)
        assert command.returncode == 1, command
        assert f"refused while a takeover by pid {os.getpid()} is under way" in command.stderr
        assert not old.records("operator_real")
        assert json.loads(old.show("vservers", "--json"))[0]["inservice"]
        [refused] = old.records("takeover_refused")
        assert refused["new_pid"] not in (os.getpid(), None) and "claimed_pid" not in refused
        holder.close()
        aborted = old.wait_record(lambda r: True, event="takeover_aborted")
        assert "went away" in aborted["reason"], aborted
        claim_takeover(control, claimed_pid=os.getpid()).close()  # free again
        again = old.wait_record(lambda r: "claimed_pid" not in r, event="takeover_offered")
        assert again["new_pid"] == os.getpid(), again  # (logged just after the offer went)
        assert dummy_holders() == [old.pid]  # and the old gateway serves on
    finally:
        old.stop()
    assert "Traceback" not in old.log_text(), old.log_text()


def test_a_gateway_with_workers_refuses_to_be_taken_over(short_dir: Path) -> None:
    control = short_dir / "ctl.sock"
    old = GatewayProcess(dummy_config(control, workers=2), short_dir).start()
    try:
        new = short_dir / "new.toml"
        new.write_text(dummy_config(control))
        result = takeover(new)
        assert result.returncode == 1, result
        assert "refused" in result.stderr and "workers = 2" in result.stderr, result.stderr
        assert sorted(set(dummy_holders())) != []  # still listening (the workers)
        assert old.proc is not None and old.proc.poll() is None
    finally:
        old.stop()
    assert "Traceback" not in old.log_text(), old.log_text()


def test_a_side_port_taken_does_not_stop_the_successor(short_dir: Path) -> None:
    """After the release the successor is the only process serving: a metrics port it cannot
    take (held by someone else) costs it the metrics listener, not the vservers; it says so
    (`takeover_side_failed`) and goes on serving and answering its control socket."""
    control = short_dir / "ctl.sock"
    old = GatewayProcess(dummy_config(control), short_dir)
    old.run_args = ["--drain", "3"]
    old.start()
    squatter = socket.socket()
    successor = None
    try:
        squatter.bind((DUMMY_VIP, 9106))
        squatter.listen()
        old.config_path.write_text(dummy_config(control, metrics=f"{DUMMY_VIP}:9106"))
        os.kill(old.pid, signal.SIGUSR2)
        record = old.wait_record(lambda r: True, event="takeover_side_failed")
        assert "9106" in record["error"] or "in use" in record["error"].lower(), record
        assert old.proc is not None and old.proc.wait(15) == 0, old.log_text()
        successor = dummy_holders()[0]
        assert successor != old.pid and not gone(successor)
        with socket.create_connection((DUMMY_VIP, 5222), timeout=5):
            pass  # still accepting
        assert json.loads(old.show("vservers", "--json"))[0]["inservice"]  # its control socket
        os.kill(successor, signal.SIGTERM)
        wait_until(lambda: gone(successor), 15, "the successor to exit")
        assert "Traceback" not in old.log_text(), old.log_text()
    finally:
        squatter.close()
        if successor is not None and not gone(successor):
            os.kill(successor, signal.SIGKILL)
        old.stop()


def test_reload_names_the_file_the_gateway_re_read(short_dir: Path) -> None:
    """`reload -c OTHER` asks the gateway on OTHER's control socket; the gateway re-reads its
    own file (after a takeover, the new process's), and the command says which."""
    control = short_dir / "ctl.sock"
    gw = GatewayProcess(dummy_config(control, extra=vserver("KEPT", 5224)), short_dir).start()
    try:
        other = short_dir / "other.toml"
        other.write_text(dummy_config(control))
        result = subprocess.run([sys.executable, "-m", "xmppgw", "reload", "-c", str(other)],
                                cwd=ROOT, capture_output=True, text=True, timeout=60,
                                check=False)
        assert result.returncode == 0, result
        assert result.stdout.startswith(f"{gw.config_path}: reloaded"), result.stdout
        assert f"re-read its own file {gw.config_path}, not {other}" in result.stderr
        assert dummy_holders(5224) == [gw.pid]  # its own file still has KEPT
    finally:
        gw.stop()


# --- in one process: the old gateway and a successor, with the release wait made short ------

class Records:
    """A log that keeps every record (the gateway's log calls: info, warning, error)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def __getattr__(self, level: str) -> Any:
        def log(event: str, **fields: Any) -> None:
            self.records.append({"event": event, "level": level, **fields})
        return log

    def of(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["event"] == event]


async def old_gateway(text: str, log: Records) -> tuple[Any, Any]:
    """A gateway as `xmppgw run` starts it (net/workers.py), with its Releaser."""
    from xmppgw import config as configmod
    from xmppgw.net.gateway import Gateway
    from xmppgw.net.takeover import Releaser

    gateway = Gateway(configmod.loads(text, "old.toml"), log)
    releaser = Releaser(gateway, lambda: None)
    gateway.conversations["takeover"] = releaser.converse
    await gateway.start()
    return gateway, releaser


async def test_a_successor_stalled_past_the_release_wait_gives_up_and_the_old_one_is_reachable(
        short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item: the successor stops (SIGSTOP, load) after renaming its control socket over the
    path, before the release. The old process gives the takeover up at the release wait and
    takes its control path back; the successor, resuming, is refused, finds the old process
    alive and gives up (closes its copies, exits non-zero): never two gateways serving."""
    from xmppgw import config as configmod
    from xmppgw.control.server import request
    from xmppgw.net import takeover as tk

    monkeypatch.setattr(tk, "RELEASE_WAIT", 0.5)
    release = tk._release
    seen: dict[str, Any] = {}

    def stalled_release(conn: socket.socket, drain: float) -> Any:
        seen["ours_before"] = control.stat().st_ino  # renamed over the path by now
        time.sleep(1.5)  # stopped past the release wait
        seen["after_stall"] = control.stat().st_ino
        return release(conn, drain)

    monkeypatch.setattr(tk, "_release", stalled_release)
    control = short_dir / "ctl.sock"
    text = dummy_config(control)
    old_log, new_log = Records(), Records()
    old, _ = await old_gateway(text, old_log)
    try:
        with pytest.raises(tk.TakeoverError, match="is still running"):
            await tk.take_over(configmod.loads(text, "new.toml"), new_log, 1.0)
        [aborted] = old_log.of("takeover_aborted")
        assert aborted["reason"] == "no release within 0.5 s", aborted
        assert old_log.of("takeover_control_reclaimed")
        assert seen["after_stall"] != seen["ours_before"]  # taken back during the stall
        assert old.control.owns_path() and not old.stopping
        [given_up] = new_log.of("takeover_given_up")
        assert "the takeover was given up" in given_up["reason"], given_up
        assert not new_log.of("takeover_no_answer")
        assert dummy_holders() == [os.getpid()]  # one descriptor: the successor's copy closed
        reply = await asyncio.get_running_loop().run_in_executor(
            None, request, str(control), {"command": "real", "farm": "DUMMY",
                                          "real": DUMMY_REAL, "inservice": False})
        assert reply["ok"], reply  # the old gateway answers commands again (claim freed)
        assert sorted(p.name for p in short_dir.iterdir()) == ["ctl.sock"]
    finally:
        await old.stop()
    assert not control.exists()


async def test_a_takeover_in_one_process_says_what_it_bound_and_carries_a_panic_over(
        short_dir: Path) -> None:
    """`takeover_adopted` names only what listens (a vserver the operator took out of
    service is neither adopted nor bound), and a farm in panic mode in the old process is
    carried over as it is: `farm_panic_carried` with the restored farm's numbers, no new
    `farm_panic`."""
    from xmppgw import config as configmod
    from xmppgw.net import takeover as tk
    from xmppgw.slb.farm import PanicChange

    control = short_dir / "ctl.sock"
    reals = ["127.0.1.64", "127.0.1.65", "127.0.1.66"]
    text = gateway_config(domain="example.test", vip=f"{DUMMY_VIP}:5222", control=control,
                          vserver={"name": "C2S", "mode": None},
                          farm={"name": "DUMMY", "predictor": None},
                          reals=[{"address": a} for a in reals], extra=vserver("P", 5227))
    old_log, new_log = Records(), Records()
    old, releaser = await old_gateway(text, old_log)
    new = None
    try:
        reply = await old.operator.command({"command": "vserver", "vserver": "P",
                                            "inservice": False})
        assert reply["ok"] and dummy_holders(5227) == [], reply
        farm = old.farms["DUMMY"]
        now = asyncio.get_running_loop().time()
        for name in reals[:2]:
            farm.probe_result(farm.find(name), False, now)
        old.engine_changed(farm)
        assert [(r["available"], r["inservice"]) for r in old_log.of("farm_panic")] == [(1, 3)]
        new = await tk.take_over(configmod.loads(text, "new.toml"), new_log, 1.0)
        assert releaser.released
        [adopted] = new_log.of("takeover_adopted")
        assert (adopted["adopted"], adopted["bound"], adopted["out_of_service"]) == (
            ["C2S"], [], ["P"]), adopted
        [carried] = new_log.of("farm_panic_carried")
        assert (carried["farm"], carried["available"], carried["inservice"]) == (
            "DUMMY", 1, 3), carried
        assert new.farms["DUMMY"].panic
        assert not [e for e in new.farms["DUMMY"].drain_events() if isinstance(e, PanicChange)]
        assert not new_log.of("farm_panic")
    finally:
        if new is not None:
            await new.stop()
        await old.stop()
