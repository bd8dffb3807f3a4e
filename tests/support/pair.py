"""Two xmppgw gateways with keepalived, in network namespaces, for tests/integration/test_pair.py.

The topology, all on one Ethernet segment (a bridge in the servers' namespace):

    pair-srv  br0: 10.77.0.11-13, the ejabberd nodes (tests/support/pair_servers.py)
    pair-gw1  eth0: 10.77.0.21, xmppgw + keepalived (priority 150)
    pair-gw2  eth0: 10.77.0.22, xmppgw + keepalived (priority 100)
    pair-cli  eth0: 10.77.0.31-38, the clients
    virtual address 10.77.0.100, moved between gw1 and gw2 by VRRP

Namespace names carry this process's pid, so two runs never share one, and every address is
private to them. keepalived runs the repository's conf/keepalived/keepalived.conf with only the
words an operator edits replaced (router_id, priority, the address, the paths).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.lock import LOCK_PATH, HarnessLock
from tests.support.gateway import ROOT, GatewayProcess
from tests.support.netns import Netns, ip

KEEPALIVED_DIR = ROOT / "conf" / "keepalived"
SHIPPED_KEEPALIVED = KEEPALIVED_DIR / "keepalived.conf"
CHECK_SCRIPT = KEEPALIVED_DIR / "xmppgw-check"
XMPPGW = Path(sys.executable).with_name("xmppgw")
DOMAIN = "pair.test"
PASSWORD = "secret"
USERS = 24
SUBNET = "10.77.0"
VIP = f"{SUBNET}.100"
REALS = [f"{SUBNET}.{i}" for i in (11, 12, 13)]
CLIENTS = [f"{SUBNET}.{i}" for i in range(31, 39)]  # the first is the clients' main address
C2S_PORT = 5222
SERVERS_START = 180.0  # three nodes and two joins on a loaded 2-core machine
STATE_LINE = re.compile(r"\((\w+)\) Entering (\w+) STATE")


class MachineLock:
    """The machine-wide harness lock (tests/harness/lock.py) for as long as our servers run.

    In a full pytest run the session's harness may already hold it, in this very process
    (Servers.start, through another descriptor): flock would then wait for ourselves. That
    case is recognised by the holder's pid in the lock file and taken as held."""

    def __init__(self) -> None:
        self._lock = HarnessLock()

    def acquire(self) -> None:
        import fcntl

        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            if holder == str(os.getpid()):
                return  # our own session harness holds it; it is idle while this test runs
        finally:
            os.close(fd)  # closing our probe descriptor drops a lock taken through it
        self._lock.acquire()

    def release(self) -> None:
        self._lock.release()


def keepalived_conf(router_id: str, priority: int, gateway_config: Path) -> str:
    """The shipped keepalived.conf with this side's words put in; AssertionError if one of
    the words an operator edits is no longer in the file (the docs would be wrong too)."""
    text = SHIPPED_KEEPALIVED.read_text()
    words = {
        "router_id xmppgw-a": f"router_id {router_id}",
        "priority 150": f"priority {priority}",
        "192.0.2.10/24": f"{VIP}/24",
        "/usr/local/lib/xmppgw/xmppgw-check": str(CHECK_SCRIPT),
        "/etc/xmppgw/xmppgw.toml": str(gateway_config),
        "/opt/xmppgw/bin/xmppgw": str(XMPPGW),
    }
    for old, new in words.items():
        assert old in text, f"{SHIPPED_KEEPALIVED} no longer says {old!r}"
        text = text.replace(old, new)
    return text


def gateway_config(control_socket: Path, predictor: str = "sourcehash") -> str:
    reals = "".join(f'\n[[serverfarm.real]]\naddress = "{r}"\n' for r in REALS)
    return f"""\
[gateway]
control_socket = "{control_socket}"
domains = ["{DOMAIN}"]
freebind = true
log_format = "json"
log_connect = true

[[vserver]]
name = "C2S"
virtual = "{VIP}:{C2S_PORT}"
mode = "starttls"
serverfarm = "XMPP"

[[serverfarm]]
name = "XMPP"
predictor = "{predictor}"
{reals}"""


class NetnsGateway(GatewayProcess):
    """`xmppgw run` inside a namespace (`ip netns exec` execs: the pid is the gateway's)."""

    def __init__(self, ns: Netns, config_text: str, workdir: Path, name: str) -> None:
        super().__init__(config_text, workdir, name)
        self.ns = ns

    def start(self, timeout: float = 20.0) -> NetnsGateway:
        started = len(self.records("started"))
        log = self.log_path.open("ab")
        self.proc = self.ns.popen([sys.executable, "-m", "xmppgw", "run", "-c",
                                   str(self.config_path)], stdout=log,
                                  stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.records("started")) > started:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}:\n"
                                   f"{self.log_text()[-3000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"gateway did not start within {timeout} s:\n"
                           f"{self.log_text()[-3000:]}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stopped(self) -> bool:
        """SIGSTOPped (state T in /proc)."""
        if not self.running():
            return False
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] in ("T", "t")

    def connected(self) -> list[dict[str, Any]]:
        """Its `connected` log lines (gateway.log_connect): client, real."""
        return self.records("connected")


@dataclass
class Side:
    """One gateway host: its namespace, address, gateway and keepalived."""

    name: str
    ns: Netns
    address: str
    priority: int
    workdir: Path
    gateway: NetnsGateway | None = None
    keepalived: subprocess.Popen[bytes] | None = None
    keepalived_log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.keepalived_log = self.workdir / "keepalived.log"

    def holds_vip(self) -> bool:
        return VIP in self.ns.addresses("eth0")

    def vrrp_state(self) -> str | None:
        """The last state keepalived entered (MASTER, BACKUP, FAULT), from its log."""
        if not self.keepalived_log.exists():
            return None
        states = STATE_LINE.findall(self.keepalived_log.read_text(errors="replace"))
        return states[-1][1] if states else None

    def start_keepalived(self) -> None:
        assert self.gateway is not None
        conf = self.workdir / "keepalived.conf"
        conf.write_text(keepalived_conf(self.name, self.priority, self.gateway.config_path))
        log = self.keepalived_log.open("ab")
        # -n: stay in the foreground; -l -D: log to the console (our file), in detail;
        # -P: VRRP only; its own pid files, so no other keepalived on the machine is touched.
        self.keepalived = self.ns.popen(
            ["keepalived", "-n", "-l", "-D", "-G", "-P", "-f", str(conf),
             "-p", str(self.workdir / "keepalived.pid"), "-r", str(self.workdir / "vrrp.pid")],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()


class Pair:
    """The whole topology: `start()` builds it and starts everything, `stop()` removes it
    all (namespaces included), whatever state it is in."""

    def __init__(self, workdir: Path) -> None:
        tag = f"xp{os.getpid()}"
        self.workdir = workdir
        self.srv = Netns(f"{tag}-srv")
        self.cli = Netns(f"{tag}-cli")
        self.sides = [Side(f"gw{i}", Netns(f"{tag}-gw{i}"), f"{SUBNET}.2{i}", prio,
                           workdir / f"gw{i}") for i, prio in ((1, 150), (2, 100))]
        self.servers: subprocess.Popen[str] | None = None
        self.lock = MachineLock()
        self.timings: dict[str, float] = {}

    @property
    def namespaces(self) -> list[Netns]:
        return [self.srv, self.cli, *(s.ns for s in self.sides)]

    # --- building ------------------------------------------------------------------------

    def start(self) -> Pair:
        self.lock.acquire()
        began = time.monotonic()
        try:
            self._network()
            self._start_servers()
            self.timings["servers"] = round(time.monotonic() - began, 1)
            for side in self.sides:
                side.workdir.mkdir(parents=True, exist_ok=True)
                side.gateway = NetnsGateway(
                    side.ns, gateway_config(side.workdir / "run" / "xmppgw.sock"),
                    side.workdir, "xmppgw")
                side.gateway.start()
            for side in self.sides:
                side.start_keepalived()
            self.wait_settled(30.0)
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = round(time.monotonic() - began, 1)
        return self

    def _network(self) -> None:
        for ns in self.namespaces:
            ns.create()
        self.srv.ip("link", "add", "br0", "type", "bridge")
        self.srv.ip("link", "set", "br0", "up")
        for addr in REALS:
            self.srv.ip("addr", "add", f"{addr}/24", "dev", "br0")
        hosts = [(side.ns, [side.address]) for side in self.sides] + [(self.cli, CLIENTS)]
        for i, (ns, addresses) in enumerate(hosts):
            port = f"p{i}"
            ip("link", "add", "eth0", "netns", ns.name, "type", "veth",
               "peer", "name", port, "netns", self.srv.name)
            self.srv.ip("link", "set", port, "master", "br0", "up")
            for addr in addresses:
                ns.ip("addr", "add", f"{addr}/24", "dev", "eth0")
            ns.ip("link", "set", "eth0", "up")

    def _start_servers(self) -> None:
        base = self.workdir / "servers"
        base.mkdir(parents=True, exist_ok=True)
        for d in (self.workdir, base):
            d.chmod(0o755)  # the nodes run as the ejabberd user
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.servers = self.srv.popen(
            [sys.executable, "-m", "tests.support.pair_servers", str(base), DOMAIN,
             str(USERS), *REALS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=(self.workdir / "servers.err").open("ab"), text=True, cwd=ROOT, env=env)
        line = self._servers_line(SERVERS_START)
        if not line.get("ready"):
            raise RuntimeError(f"the ejabberd nodes did not start: {line.get('error')}\n"
                               f"{(self.workdir / 'servers.err').read_text()[-3000:]}")

    def _servers_line(self, timeout: float) -> Any:
        import selectors

        assert self.servers is not None and self.servers.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.servers.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise RuntimeError(f"no answer from the servers within {timeout} s")
        line = self.servers.stdout.readline()
        if not line:
            raise RuntimeError("the servers' process ended:\n"
                               f"{(self.workdir / 'servers.err').read_text()[-3000:]}")
        return json.loads(line)

    def sessions(self) -> list[dict[str, str]]:
        """The cluster's sessions (jid, resource, node, ip), from ejabberdctl."""
        assert self.servers is not None and self.servers.stdin is not None
        self.servers.stdin.write("sessions\n")
        self.servers.stdin.flush()
        return self._servers_line(60.0)

    # --- state ---------------------------------------------------------------------------

    def holder(self) -> Side | None:
        """The one side holding the virtual address; None if none or both do."""
        holding = [s for s in self.sides if s.holds_vip()]
        return holding[0] if len(holding) == 1 else None

    def other(self, side: Side) -> Side:
        return next(s for s in self.sides if s is not side)

    def wait_settled(self, timeout: float) -> Side:
        """Until one side holds the address as MASTER and the other is BACKUP (its check
        passing, ready to take over); that side. Restarts a dead gateway, resumes a stopped
        one and puts every vserver back in service first."""
        for side in self.sides:
            assert side.gateway is not None
            if side.gateway.stopped():
                os.kill(side.gateway.pid, signal.SIGCONT)
            if not side.gateway.running():
                side.gateway.start()
            else:
                self.vserver(side, "inservice")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            holder = self.holder()
            if holder is not None and holder.vrrp_state() == "MASTER" and \
                    self.other(holder).vrrp_state() == "BACKUP":
                return holder
            time.sleep(0.1)
        raise AssertionError("the pair did not settle: " + self.describe())

    def wait_holder(self, side: Side, timeout: float) -> float:
        """Seconds until `side` alone holds the address (AssertionError after `timeout`)."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if self.holder() is side:
                return time.monotonic() - began
            time.sleep(0.02)
        raise AssertionError(f"{side.name} did not take the address within {timeout} s: "
                             + self.describe())

    def vserver(self, side: Side, action: str) -> None:
        """`xmppgw vserver C2S inservice|no-inservice` on `side`'s gateway."""
        assert side.gateway is not None
        result = side.ns.run(str(XMPPGW), "vserver", "C2S", action, "-c",
                             str(side.gateway.config_path))
        assert result.returncode == 0, result.stderr

    def describe(self) -> str:
        return "; ".join(f"{s.name}: vip={s.holds_vip()} vrrp={s.vrrp_state()} "
                         f"gateway={_process_state(s.gateway)}" for s in self.sides)

    # --- teardown ------------------------------------------------------------------------

    def stop(self) -> None:
        """Everything started, stopped; every namespace removed; the lock given back."""
        try:
            for side in self.sides:
                if side.keepalived is not None and side.keepalived.poll() is None:
                    side.keepalived.terminate()
                    try:
                        side.keepalived.wait(10)
                    except subprocess.TimeoutExpired:
                        side.keepalived.kill()
                        side.keepalived.wait()
                if side.gateway is not None:
                    if side.gateway.stopped():
                        os.kill(side.gateway.pid, signal.SIGCONT)
                    side.gateway.stop()
            if self.servers is not None and self.servers.poll() is None:
                assert self.servers.stdin is not None
                self.servers.stdin.close()  # end of input: the cluster stops
                try:
                    self.servers.wait(60)
                except subprocess.TimeoutExpired:
                    self.servers.terminate()
                    self.servers.wait(30)
        finally:
            for ns in self.namespaces:
                ns.delete()
            self.lock.release()


def _process_state(gateway: NetnsGateway | None) -> str:
    if gateway is None or not gateway.running():
        return "dead"
    return "stopped" if gateway.stopped() else "running"
