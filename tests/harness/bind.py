"""A real BIND 9 primary (Debian's ``named``) that accepts TSIG-signed RFC 2136 updates.

``named`` runs in the foreground (``-g``) as our child, started as root and switching to the
``bind`` user itself (``-u bind``) once its sockets are open, from a private directory owned
by ``bind``: config, zone file, journal, the key made by ``tsig-keygen``, logs. It has no
control channel (``controls { };``, so no rndc and no clash on 127.0.0.1:953), no recursion,
and answers only on its own address.

**Why the address is added to ``lo`` for a moment.** Unlike a plain ``bind()``, which Linux
allows to any 127.x address, named listens only on the addresses it finds on an interface,
and ``lo`` carries only 127.0.0.1. So ``start()`` adds ``ADDRESS/32`` to ``lo`` while named
scans the interfaces, and removes it again once named answers (if it was not there before).
The socket stays bound and keeps working, and named never rescans (``interface-interval 0``,
``automatic-interface-scan no``), so the machine is left as it was, even by a killed run.

Teardown: ``stop()`` (fixture finalizer), a reaper process that kills this run's named if
pytest dies without teardown (``python -m tests.harness.bind``, as tests/harness/reaper.py
does for ejabberd), and the next start kills any named of a dead earlier run (the config
file name carries the pytest pid).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode

try:
    import pytest
except ImportError:  # bench/dnsbench.py uses Bind where pytest is not installed
    pytest = None  # type: ignore[assignment]

from .proc import (
    HarnessError,
    SystemUser,
    chown_tree,
    kill_and_wait,
    owner_pid_dead,
    pid_alive,
    pids_where,
    poll,
    port_accepts,
    stop_process,
    tail,
)

NAMED = "/usr/sbin/named"
ADDRESS = "127.0.4.54"
PORT = 53
ZONE = "example.test"
KEY_NAME = "xmppgw-update"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CONF_NAME = re.compile(r"named-(\d+)\.conf$")


# ----- stale processes and the reaper ------------------------------------------------------


def _conf_path(argv: list[str]) -> str | None:
    """The ``-c`` argument of a named command line, if any."""
    if argv and os.path.basename(argv[0]) == "named" and "-c" in argv[:-1]:
        return argv[argv.index("-c") + 1]
    return None


def kill_stale_named() -> list[int]:
    """SIGKILL named processes of earlier harness runs whose pytest process is gone (their
    config is ``named-<pytest pid>.conf``); a live owner's named is left alone."""

    def stale(argv: list[str]) -> bool:
        match = CONF_NAME.search(_conf_path(argv) or "")
        return bool(match) and owner_pid_dead(match.group(1))

    pids = pids_where(stale)
    if pids:
        kill_and_wait(pids)
    return pids


_reaper_lock = threading.Lock()
_reaper_pipe: int | None = None  # write end, held open for the life of this process


def start_reaper() -> None:
    """Spawn, once per process, a watchdog that kills our named when this process dies.

    It holds the read end of a pipe only we write to; EOF means we are gone, however we died.
    """
    global _reaper_pipe
    with _reaper_lock:
        if _reaper_pipe is not None:
            return
        read_end, write_end = os.pipe()
        repo_root = Path(__file__).resolve().parents[2]
        subprocess.Popen(
            [sys.executable, "-m", "tests.harness.bind", str(os.getpid()), str(read_end)],
            cwd=repo_root, env={**os.environ, "PYTHONPATH": str(repo_root)},
            pass_fds=(read_end,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )
        os.close(read_end)
        _reaper_pipe = write_end


def _reaper_main(argv: list[str]) -> None:
    owner, fd = int(argv[0]), int(argv[1])
    with os.fdopen(fd, "rb") as pipe:
        while pipe.read(4096):
            pass
    poll(lambda: not pid_alive(owner), 30, f"pid {owner} to exit", interval=0.1)
    kill_stale_named()


# ----- the address on lo -------------------------------------------------------------------


def _on_lo(address: str) -> bool:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "lo"], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    return f" {address}/" in out


@contextmanager
def address_on_lo(address: str) -> Iterator[None]:
    """``address``/32 on ``lo`` for the duration (named's interface scan needs it)."""
    added = False
    if not _on_lo(address):
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"],
                       capture_output=True, timeout=10, check=True)
        added = True
    try:
        yield
    finally:
        if added:
            subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"],
                           capture_output=True, timeout=10, check=False)


# ----- the server --------------------------------------------------------------------------


class Bind:
    """named, primary for ``zones``, on ``address``:``port``, updatable with one TSIG key.

    ``records`` are extra zone-file lines for every zone (relative names are under the zone);
    ``zone_texts`` replaces a zone's whole file (the bench serves the zone `xmppgw zone`
    prints). ``threads``: named's ``-n`` (worker threads; default one per CPU). ``stop()``
    then ``start()`` restarts the same named from the same files and journal: what was
    updated before is still there, as after a real restart of a primary.
    """

    def __init__(
        self,
        base_dir: Path,
        address: str = ADDRESS,
        port: int = PORT,
        zones: Sequence[str] = (ZONE,),
        key_name: str = KEY_NAME,
        records: Sequence[str] = (),
        zone_texts: Mapping[str, str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.address = address
        self.port = port
        self.zones = list(zones)
        self.key_name = key_name
        self.records = list(records)
        self.zone_texts = dict(zone_texts or {})
        self.threads = threads
        self.directory = Path(base_dir) / f"bind-{address}"
        self.conf_path = self.directory / f"named-{os.getpid()}.conf"
        self.key_path = self.directory / "update.key"
        self.log_path = self.directory / "named.log"
        self.user = SystemUser.lookup("bind")
        self.process: subprocess.Popen[bytes] | None = None
        self._written = False

    # ----- lifecycle ----------------------------------------------------------------------

    def start(self) -> Bind:
        """Write the files (first start only), start named, wait until it answers SOA."""
        start_reaper()
        try:
            kill_stale_named()
            if port_accepts(self.address, self.port, 0.2):
                raise HarnessError(f"{self.address}:{self.port} already in use (ss -ltnp)")
            if not self._written:
                self._write_files()
            with address_on_lo(self.address):
                self._spawn()
                poll(self._ready, START_TIMEOUT, f"named on {self.address}:{self.port}",
                     on_timeout=self.diagnostics)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; also any stray named of this config.
        Safe to call repeatedly."""
        process, self.process = self.process, None
        stop_process(process, lambda argv: _conf_path(argv) == str(self.conf_path), STOP_TIMEOUT)

    @property
    def pid(self) -> int:
        """Pid of the running named (for SIGSTOP/SIGCONT tests)."""
        if self.process is None or self.process.poll() is not None:
            raise HarnessError("named is not running")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def diagnostics(self) -> str:
        return tail(self.log_path)

    # ----- queries ------------------------------------------------------------------------

    def dig(self, name: str, rdtype: str = "SRV") -> list[str]:
        """``dig +short`` at this server: the records' text, sorted (as an operator checks)."""
        return sorted(self.dig_text(name, rdtype, "+short").splitlines())

    def dig_text(self, name: str, rdtype: str = "SRV", *options: str) -> str:
        """``dig @server name type`` with ``options``; the whole output."""
        argv = ["dig", "+norecurse", "+time=2", "+tries=1", *options, "-p", str(self.port),
                f"@{self.address}", name, rdtype]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
        if result.returncode != 0:
            raise HarnessError(f"{' '.join(argv)} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}")
        return result.stdout

    # ----- internals ----------------------------------------------------------------------

    def _ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise HarnessError(f"named exited with {code}\n{self.diagnostics()}")
        query = dns.message.make_query(self.zones[0], "SOA")
        try:
            response = dns.query.udp(query, self.address, timeout=0.5, port=self.port)
        except (dns.exception.DNSException, OSError):
            return False
        answered = response.rcode() == dns.rcode.NOERROR and bool(response.flags & dns.flags.AA)
        return answered and port_accepts(self.address, self.port)

    def _spawn(self) -> None:
        with self.log_path.open("ab") as out:
            threads = ["-n", str(self.threads)] if self.threads else []
            self.process = subprocess.Popen(
                [NAMED, "-g", "-4", *threads, "-u", self.user.name, "-c", str(self.conf_path)],
                cwd=self.directory, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C reaches pytest, whose teardown stops named in order.
                start_new_session=True,
            )

    def _write_files(self) -> None:
        if self.directory.exists():
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)
        self._make_key()
        for zone in self.zones:
            (self.directory / f"{zone}.zone").write_text(self._zone_text(zone))
        self.conf_path.write_text(self._conf_text())
        chown_tree(self.directory, self.user)
        check = subprocess.run(["named-checkconf", "-z", str(self.conf_path)],
                               capture_output=True, text=True, timeout=30, check=False)
        if check.returncode != 0:
            raise HarnessError(f"named-checkconf refused {self.conf_path}:\n{check.stdout}"
                               f"{check.stderr}")
        self._written = True

    def _make_key(self) -> None:
        """The key exactly as an operator makes it: ``tsig-keygen -a hmac-sha256 NAME``."""
        result = subprocess.run(["tsig-keygen", "-a", "hmac-sha256", self.key_name],
                                capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            raise HarnessError(f"tsig-keygen failed: {result.stderr}")
        self.key_path.write_text(result.stdout)
        self.key_path.chmod(0o640)

    def _zone_text(self, zone: str) -> str:
        if zone in self.zone_texts:
            return self.zone_texts[zone]
        lines = [
            "$TTL 30",
            f"@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 30",
            f"@ IN NS ns.{zone}.",
            f"ns IN A {self.address}",
            *self.records,
        ]
        return "\n".join(lines) + "\n"

    def _conf_text(self) -> str:
        d = self.directory
        zones = "".join(
            f'zone "{zone}" {{\n    type primary;\n    file "{d}/{zone}.zone";\n'
            f'    allow-update {{ key "{self.key_name}"; }};\n}};\n'
            for zone in self.zones
        )
        return f"""// written by tests/harness/bind.py
include "{self.key_path}";
options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {self.port} {{ {self.address}; }};
    listen-on-v6 {{ none; }};
    interface-interval 0;
    automatic-interface-scan no;
    recursion no;
    dnssec-validation no;
    notify no;
    allow-transfer {{ none; }};
}};
controls {{ }};
{zones}"""


# ----- pytest fixture ----------------------------------------------------------------------


def bind_primary(request: pytest.FixtureRequest) -> Iterator[Bind]:
    """A running BIND primary for ``example.test`` on 127.0.4.54:53, fresh for each module.

    Its directory is removed after a module without failures, else kept for the log.
    """
    from .fixtures import make_base_dir  # the harness's pid-tagged, stale-cleaned base dirs

    base = make_base_dir()
    server = Bind(base)
    failed_before = request.session.testsfailed
    keep = True
    try:
        server.start()
        yield server
        keep = request.session.testsfailed > failed_before
    finally:
        server.stop()
        if keep or os.environ.get("XMPPGW_KEEP_HARNESS") == "1":
            print(f"\nBIND directory kept in {server.directory}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if pytest is not None:
    bind_primary = pytest.fixture(scope="module")(bind_primary)


if __name__ == "__main__":
    _reaper_main(sys.argv[1:])
