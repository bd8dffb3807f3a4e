"""A real ejabberd cluster of several nodes on one host, each on its own loopback address.

Each node gets its own config/log/spool directory owned by the ``ejabberd`` user, its own
Erlang node name (``<short>_<pytest pid>@localhost``, so a crashed earlier run can never be
mistaken for this one) and listeners bound to its own address only. All nodes share one
``.erlang.cookie`` so they can form a Mnesia cluster: nodes 2..n join node 1, after which an
account registered anywhere logs in everywhere.

Everything goes through ``ejabberdctl``: it is the interface operators use, and it sets the
environment (``ERL_INETRC``, ``EJABBERD_CONFIG_PATH``, ...) the way the packaged node expects.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from .certs import make_cert
from .proc import (
    HarnessError,
    SystemUser,
    base_env,
    chown_tree,
    kill_and_wait,
    kill_pids,
    owner_pid_dead,
    parallel,
    pids_where,
    poll,
    port_accepts,
    run_as,
    tail,
)
from .reaper import start_reaper

EJABBERDCTL = "ejabberdctl"
C2S_PORT, C2S_TLS_PORT, S2S_PORT = 5222, 5223, 5269
LISTEN_BACKLOG = 1024  # ejabberd's default accept backlog is 5: far too small under load
# A listener whose "backlog" is EJABBERD_DEFAULT (None) gets no `backlog` key at all, so ejabberd
# uses its own default, EJABBERD_DEFAULT_BACKLOG: the accept queue most operators run with.
EJABBERD_DEFAULT = None
EJABBERD_DEFAULT_BACKLOG = 5
START_TIMEOUT = 90.0
STOP_TIMEOUT = 20.0
CTL_TIMEOUT = 60.0
VM_APPEAR_TIMEOUT = 10.0  # `ejabberdctl start` returns before the detached VM shows up

DEFAULT_MODULES: dict[str, dict[str, Any]] = {
    "mod_admin_extra": {},  # provides connected_users_info and friends
    "mod_disco": {},
    "mod_ping": {},
    "mod_roster": {},
    "mod_s2s_dialback": {},  # self-signed certs make SASL EXTERNAL fail: dialback is the way
    "mod_stream_mgmt": {},
}


@dataclass(frozen=True)
class SessionInfo:
    """One line of ``ejabberdctl connected_users_info`` (mod_admin_extra)."""

    jid: str
    connection: str
    ip: str
    port: int
    priority: str
    node: str
    uptime: int
    status: str
    resource: str
    statustext: str

    @classmethod
    def parse(cls, line: str) -> SessionInfo:
        cols = line.split("\t")
        cols += [""] * (10 - len(cols))
        return cls(
            jid=cols[0], connection=cols[1], ip=cols[2], port=int(cols[3] or 0),
            priority=cols[4], node=cols[5], uptime=int(cols[6] or 0), status=cols[7],
            resource=cols[8], statustext=cols[9],
        )


@dataclass
class EjabberdNode:
    """Where one node lives: its Erlang name, its address and its private directory."""

    short: str
    address: str
    name: str
    directory: Path

    @property
    def log_path(self) -> Path:
        return self.directory / "ejabberd.log"

    @property
    def error_log_path(self) -> Path:
        return self.directory / "error.log"

    @property
    def start_out(self) -> Path:
        """Output of ``ejabberdctl start`` (errors before the VM has its own log)."""
        return self.directory / "start.out"

    @property
    def spool(self) -> Path:
        return self.directory / "db"

    def diagnostics(self) -> str:
        """Log tails to attach to an error about this node."""
        return "\n".join(tail(p) for p in (self.error_log_path, self.log_path, self.start_out))


def node_name(short: str, pid: int | None = None) -> str:
    """Erlang node name unique to this test run: ``<short>_<pid>@localhost``."""
    return f"{short}_{os.getpid() if pid is None else pid}@localhost"


def _sname(argv: list[str]) -> str | None:
    """The ``-sname``/``-name`` value of an Erlang VM command line, if any."""
    for flag in ("-sname", "-name"):
        if flag in argv[:-1]:
            return argv[argv.index(flag) + 1]
    return None


def _is_beam(argv: list[str]) -> bool:
    return bool(argv) and os.path.basename(argv[0]).startswith("beam")


def beam_pids(name: str) -> list[int]:
    """Pids of the Erlang VM(s) running node ``name`` (not the ctl VMs that talk to it)."""
    return pids_where(lambda argv: _is_beam(argv) and _sname(argv) == name)


def kill_stale_nodes(shorts: Sequence[str]) -> list[int]:
    """SIGKILL VMs of earlier harness runs (``<short>_<pid>@...`` whose pid is dead).

    A node left behind by a crashed run holds the listening addresses this run needs. Nodes of
    a run that is still alive (another pytest on this machine) are left alone.
    """
    pattern = re.compile(rf"^(?:{'|'.join(map(re.escape, shorts))})_(\d+)@")

    def stale(argv: list[str]) -> bool:
        match = pattern.match(_sname(argv) or "") if _is_beam(argv) else None
        return bool(match) and owner_pid_dead(match.group(1))

    pids = pids_where(stale)
    if pids:
        kill_and_wait(pids)
    return pids


def stop_idle_epmd() -> None:
    """Stop the Erlang port mapper the nodes started, if no node at all is registered.

    epmd itself refuses ``-kill`` while any node (of anyone) is registered, so this cannot
    disturb other Erlang users on the machine.
    """
    try:
        names = subprocess.run(
            ["epmd", "-names"], capture_output=True, text=True, timeout=5, check=False
        )
        if names.returncode == 0 and "name " not in names.stdout:
            subprocess.run(["epmd", "-kill"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        pass


class EjabberdCluster:
    """N ejabberd nodes for ``domain`` forming one Mnesia cluster.

    ``nodes`` are (short name, loopback address) pairs; the first node is the one the others
    join. ``resolver`` is the address of a nameserver (port 53) the nodes' Erlang resolver
    uses for SRV lookups, or None to leave resolution alone. ``extra_listeners`` (ejabberd
    ``listen`` entries without ``ip``, e.g. ``{"port": 5280, "module": "ejabberd_c2s",
    "use_proxy_protocol": True}``) are added to every node, bound to the node's own address.
    Every listener gets ``backlog: LISTEN_BACKLOG`` unless it names its own; one with
    ``"backlog": EJABBERD_DEFAULT`` (None) gets no backlog key: ejabberd's default (5).
    """

    def __init__(
        self,
        base_dir: Path,
        domain: str,
        nodes: Sequence[tuple[str, str]],
        resolver: str | None,
        extra_domains: Sequence[str] = (),
        extra_listeners: Sequence[Mapping[str, Any]] = (),
        modules: Mapping[str, Mapping[str, Any]] | None = None,
        config_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("an ejabberd cluster needs at least one node")
        self.base_dir = Path(base_dir)
        self.domain = domain
        self.domains = [domain, *extra_domains]
        self.resolver = resolver
        self.extra_listeners = [dict(listener) for listener in extra_listeners]
        if any("ip" in listener for listener in self.extra_listeners):
            raise ValueError("extra listeners are bound to each node's own address: no 'ip'")
        self.modules = dict(DEFAULT_MODULES if modules is None else modules)
        self.config_overrides = dict(config_overrides or {})
        self.nodes = [
            EjabberdNode(short, address, node_name(short), self.base_dir / short)
            for short, address in nodes
        ]
        self.user = SystemUser.lookup("ejabberd")
        self._cookie = secrets.token_hex(20)
        # Made now, not at start(), so tests can read the paths of a cluster not yet started.
        self.cert_dir = self.base_dir / "ejabberd-cert"
        self.cert_path, self.key_path, self.pem_path = make_cert(
            self.cert_dir, [*self.domains, *(f"*.{d}" for d in self.domains), *self.addresses]
        )
        chown_tree(self.cert_dir, self.user)

    # ----- public views -------------------------------------------------------------------

    @property
    def node_names(self) -> list[str]:
        return [node.name for node in self.nodes]

    @property
    def addresses(self) -> list[str]:
        return [node.address for node in self.nodes]

    @property
    def ports(self) -> list[int]:
        """Listening ports of every node: 5222 (STARTTLS), 5223 (direct TLS), 5269 (s2s),
        then those of ``extra_listeners``."""
        extra = [int(listener["port"]) for listener in self.extra_listeners]
        return [C2S_PORT, C2S_TLS_PORT, S2S_PORT, *extra]

    @property
    def log_paths(self) -> list[Path]:
        return [node.log_path for node in self.nodes]

    # ----- lifecycle ----------------------------------------------------------------------

    def start(self) -> EjabberdCluster:
        """Write configs, start every node in parallel, join them into one cluster.

        On any failure everything already started is killed before the error propagates.
        """
        shorts = [node.short for node in self.nodes]
        start_reaper(shorts)  # kills these nodes should this process die without teardown
        try:
            kill_stale_nodes(shorts)
            self._check_addresses_free()
            for node in self.nodes:
                self._write_node_dir(node)
            parallel([lambda i=i: self.start_node(i) for i in range(len(self.nodes))], "ej-start")
            self._join_all()
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, i: int, timeout: float = START_TIMEOUT) -> None:
        """Start node ``i`` (detached VM) and wait until ejabberd and its listeners are up.

        A restarted node of a cluster reconnects to the others by itself (its Mnesia schema
        lists them), so no rejoin is needed.
        """
        node = self.nodes[i]
        with node.start_out.open("ab") as out:
            # Output to a file, not a pipe: the detached VM may keep inherited fds open, and a
            # pipe would then never reach EOF.
            subprocess.run(
                self._ctl_argv(node, "start"), env=self._env(node), cwd=node.directory,
                user=self.user.uid, group=self.user.gid, extra_groups=[],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                timeout=CTL_TIMEOUT, check=False,
            )
        self._wait_started(i, timeout)

    def stop_node(self, i: int, timeout: float = STOP_TIMEOUT) -> None:
        """Stop node ``i`` cleanly (``ejabberdctl stop``); SIGKILL it if that does not work."""
        node = self.nodes[i]
        pids = beam_pids(node.name)
        if not pids:
            return
        kill_pids(pids, signal.SIGCONT)  # a test may have left it SIGSTOPped
        try:
            self._run_ctl(node, "stop", timeout=timeout)
            poll(lambda: not beam_pids(node.name), timeout, f"{node.name} to stop")
        except (HarnessError, subprocess.TimeoutExpired):
            pass
        kill_and_wait(beam_pids(node.name))

    def kill_node(self, i: int) -> None:
        """SIGKILL the VM of node ``i`` (a crash, as far as the cluster can tell)."""
        kill_and_wait(beam_pids(self.nodes[i].name))

    def pid_of(self, i: int) -> int:
        """Pid of node ``i``'s beam.smp, e.g. to SIGSTOP/SIGCONT it in a test."""
        pids = beam_pids(self.nodes[i].name)
        if len(pids) != 1:
            raise HarnessError(f"expected one VM for {self.nodes[i].name}, found {pids}")
        return pids[0]

    def stop(self) -> None:
        """Stop all nodes in parallel, then SIGKILL anything left of them. Never raises for a
        node that is already gone; safe to call repeatedly (teardown, atexit, signal)."""
        try:
            parallel([lambda i=i: self.stop_node(i) for i in range(len(self.nodes))], "ej-stop")
        finally:
            for node in self.nodes:
                kill_and_wait(beam_pids(node.name))
            stop_idle_epmd()

    # ----- commands -----------------------------------------------------------------------

    def ctl(self, node_index: int, *args: str, timeout: float = CTL_TIMEOUT) -> str:
        """Run ``ejabberdctl <args>`` against node ``node_index``; its output, or raise with
        that output when it exits non-zero."""
        return self._run_ctl(self.nodes[node_index], *args, timeout=timeout)

    def register(
        self, user: str, password: str, domain: str | None = None, node_index: int = 0
    ) -> None:
        """Register one account through one node; Mnesia replicates it to the others."""
        self.ctl(node_index, "register", user, domain or self.domain, password)

    def unregister(self, user: str, domain: str | None = None, node_index: int = 0) -> None:
        self.ctl(node_index, "unregister", user, domain or self.domain)

    def register_many(
        self, accounts: Mapping[str, str], domain: str | None = None, node_index: int = 0
    ) -> None:
        """Register many accounts in one ``import_piefxis`` (XEP-0227) call.

        One ``ejabberdctl register`` costs a fresh Erlang VM (~0.25 s of CPU); importing a
        generated XEP-0227 file registers hundreds of accounts in about the same time.
        The accounts must be new: ejabberd fails the import (``import_failed``) if one exists.
        """
        path = self.base_dir / f"accounts-{secrets.token_hex(4)}.xml"
        path.write_text(_piefxis(domain or self.domain, accounts))
        os.chown(path, self.user.uid, self.user.gid)
        try:
            self.ctl(node_index, "import_piefxis", str(path))
        finally:
            path.unlink(missing_ok=True)
        missing = set(accounts) - set(self.registered_users(domain, node_index))
        if missing:  # cheap insurance: the import is not documented to be all-or-nothing
            raise HarnessError(f"import_piefxis did not register {sorted(missing)[:10]}...")

    def registered_users(self, domain: str | None = None, node_index: int = 0) -> list[str]:
        return self.ctl(node_index, "registered_users", domain or self.domain).split()

    def list_cluster(self, node_index: int = 0) -> list[str]:
        """Node names Mnesia lists as cluster members, as seen from ``node_index``."""
        return [n.strip("'") for n in self.ctl(node_index, "list_cluster").split()]

    def connected_users_info(self, node_index: int = 0) -> list[SessionInfo]:
        """Sessions of the whole cluster; ``SessionInfo.node`` tells which node holds each."""
        out = self.ctl(node_index, "connected_users_info")
        return [SessionInfo.parse(line) for line in out.splitlines() if line.strip()]

    # ----- internals ----------------------------------------------------------------------

    def _ctl_argv(self, node: EjabberdNode, *args: str) -> list[str]:
        d = str(node.directory)
        return [
            EJABBERDCTL, "--config-dir", d, "--logs", d, "--spool", str(node.spool),
            "--node", node.name, *args,
        ]

    def _env(self, node: EjabberdNode) -> dict[str, str]:
        return base_env(node.directory)

    def _run_ctl(self, node: EjabberdNode, *args: str, timeout: float = CTL_TIMEOUT) -> str:
        result = run_as(
            self.user, self._ctl_argv(node, *args), self._env(node), timeout, node.directory
        )
        output = result.stdout + result.stderr
        if result.returncode != 0:
            raise HarnessError(
                f"ejabberdctl {' '.join(args)} on {node.name} exited {result.returncode}:\n"
                f"{output}"
            )
        return output

    def _status_ok(self, node: EjabberdNode) -> bool:
        """True once ejabberd (not just the VM) runs on ``node``."""
        try:
            self._run_ctl(node, "status", timeout=15)
        except (HarnessError, subprocess.TimeoutExpired):
            return False
        return True

    def _listening(self, node: EjabberdNode) -> bool:
        return all(port_accepts(node.address, port) for port in self.ports)

    def _check_addresses_free(self) -> None:
        """Fail clearly, before starting anything, if another process (e.g. a concurrent test
        run) already listens where the nodes must listen."""
        taken = [
            f"{node.address}:{port}"
            for node in self.nodes
            for port in self.ports
            if port_accepts(node.address, port, timeout=0.2)
        ]
        if taken:
            raise HarnessError(f"already in use by another process (see `ss -ltnp`): {taken}")

    def _wait_started(self, i: int, timeout: float) -> None:
        """Poll until ``status`` succeeds and every listener accepts; fail fast (with the
        node's logs) if the VM is gone instead of waiting out the whole timeout."""
        node = self.nodes[i]
        since = time.monotonic()

        def ready() -> bool:
            if self._status_ok(node):
                return True
            if not beam_pids(node.name) and time.monotonic() - since > VM_APPEAR_TIMEOUT:
                raise HarnessError(f"{node.name}: no Erlang VM is running\n{node.diagnostics()}")
            return False

        poll(ready, timeout, f"ejabberd on {node.name}", interval=0.2,
             on_timeout=node.diagnostics)
        poll(lambda: self._listening(node), timeout, f"listeners of {node.name}",
             on_timeout=node.diagnostics)

    def _join_all(self) -> None:
        """Join nodes 2..n to node 1, one at a time (each join rewrites the Mnesia schema)."""
        first = self.nodes[0]
        for i in range(1, len(self.nodes)):
            self.ctl(i, "join_cluster", first.name, timeout=START_TIMEOUT)
            self._wait_started(i, START_TIMEOUT)
        members = set(self.list_cluster(0))
        if members != set(self.node_names):
            raise HarnessError(f"cluster is {sorted(members)}, expected {self.node_names}")

    def _write_node_dir(self, node: EjabberdNode) -> None:
        d = node.directory
        if d.exists():
            shutil.rmtree(d)
        node.spool.mkdir(parents=True)
        (d / "ejabberd.yml").write_text(self._config_text(node))
        (d / "ejabberdctl.cfg").write_text(_CTL_CFG)
        (d / "inetrc").write_text(
            f'{{resolv_conf, "{d}/resolv.conf"}}.\n' if self.resolver else ""
        )
        if self.resolver:
            (d / "resolv.conf").write_text(f"nameserver {self.resolver}\n")
        cookie = d / ".erlang.cookie"
        cookie.write_text(self._cookie)
        chown_tree(d, self.user)
        cookie.chmod(0o400)

    def _config_text(self, node: EjabberdNode) -> str:
        """ejabberd.yml as JSON, which is valid YAML and needs no YAML library here."""
        config: dict[str, Any] = {
            "hosts": self.domains,
            "loglevel": "info",
            "certfiles": [str(self.pem_path)],
            "listen": self._listeners(node),
            "s2s_use_starttls": "optional",
            "auth_method": "internal",
            "acme": {"auto": False},
            "modules": self.modules,
        }
        config.update(self.config_overrides)
        return "# written by tests/harness/ejabberd.py (JSON is YAML)\n" + json.dumps(
            config, indent=2
        )

    def _listeners(self, node: EjabberdNode) -> list[dict[str, Any]]:
        base = [
            {"port": C2S_PORT, "module": "ejabberd_c2s", "starttls": True},
            {"port": C2S_TLS_PORT, "module": "ejabberd_c2s", "tls": True},
            {"port": S2S_PORT, "module": "ejabberd_s2s_in"},
        ]
        listeners = []
        for listener in [*base, *self.extra_listeners]:
            entry = {"ip": node.address, "backlog": LISTEN_BACKLOG, **listener}
            if entry["backlog"] is EJABBERD_DEFAULT:
                del entry["backlog"]  # ejabberd's own default, EJABBERD_DEFAULT_BACKLOG
            listeners.append(entry)
        return listeners


# Sourced by ejabberdctl instead of /etc/ejabberd/ejabberdctl.cfg. Keep Erlang distribution on
# loopback; no crash dumps (a SIGKILLed node in a test is expected, not a crash to keep).
_CTL_CFG = """\
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0 -kernel inet_dist_use_interface {127,0,0,1}"
ERL_EPMD_ADDRESS=127.0.0.1
"""


def _piefxis(domain: str, accounts: Mapping[str, str]) -> str:
    """A XEP-0227 document holding ``accounts`` (user -> plaintext password) of ``domain``."""
    users = "".join(
        f"<user name={quoteattr(user)} password={quoteattr(password)}/>"
        for user, password in accounts.items()
    )
    return (
        "<?xml version='1.0' encoding='UTF-8'?>\n"
        "<server-data xmlns='urn:xmpp:pie:0'>"
        f"<host jid={quoteattr(domain)}>{users}</host></server-data>\n"
    )
