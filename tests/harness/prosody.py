"""A real Prosody server for one domain on one loopback address.

Prosody refuses to run as root, so it runs as the ``prosody`` user from a private directory
(config, certificate, data, logs) owned by that user, in the foreground (``-F``) as our child
process: no pidfile, no daemon to hunt for. Name resolution never touches /etc/hosts or
/etc/resolv.conf: lua-unbound is pointed at a private ``resolv.conf`` (the test DNS stub) and a
private hosts file, so Prosody finds e.g. ``example.test`` at the gateway's address.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .certs import make_cert
from .proc import (
    HarnessError,
    SystemUser,
    base_env,
    chown_tree,
    kill_and_wait,
    owner_pid_dead,
    pids_where,
    poll,
    port_accepts,
    run_as,
    stop_process,
    tail,
)

C2S_PORT, S2S_PORT = 5222, 5269
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
DEFAULT_MODULES = ("roster", "saslauth", "tls", "dialback", "disco", "ping")
UNBOUND_LOCAL_ZONE = "test. transparent"  # one zone only: lua-unbound takes a table of options
CONFIG_NAME = re.compile(r"prosody-(\d+)\.cfg\.lua$")
LUA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _config_path(argv: list[str]) -> str | None:
    """The ``--config`` argument of a prosody command line, if any."""
    if "--config" in argv[:-1] and any(a.endswith("/prosody") for a in argv[:2]):
        return argv[argv.index("--config") + 1]
    return None


def kill_stale_prosody() -> list[int]:
    """SIGKILL Prosody processes of earlier harness runs whose pytest process is gone.

    Their config file is named ``prosody-<pytest pid>.cfg.lua``; a live owner means a
    concurrent run, which is left alone.
    """

    def stale(argv: list[str]) -> bool:
        match = CONFIG_NAME.search(_config_path(argv) or "")
        return bool(match) and owner_pid_dead(match.group(1))

    pids = pids_where(stale)
    if pids:
        kill_and_wait(pids)
    return pids


LuaValue = str | int | bool | Sequence[Any] | Mapping[str, Any]


def lua(value: LuaValue) -> str:
    """Render a Python value as a Lua literal for Prosody's config file.

    str -> string, bool -> true/false, int -> number, sequence -> list, mapping -> table
    (keys that are not Lua identifiers, like unbound's ``"local-zone:"``, get ``["..."]``).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Mapping):
        fields = (f"{_lua_key(k)} = {lua(v)}" for k, v in value.items())
        return "{ " + "; ".join(fields) + " }"
    return "{ " + "; ".join(lua(v) for v in value) + " }"


def _lua_key(key: str) -> str:
    return key if LUA_NAME.match(key) else f"[{lua(key)}]"


class Prosody:
    """Prosody for ``domain`` listening on ``address`` only (c2s 5222, s2s 5269).

    ``resolver``: address of a nameserver on port 53 for lua-unbound, or None for the system
    one. ``hosts``: name -> address entries of Prosody's private hosts file (consulted for
    address lookups, e.g. after SRV finds nothing). ``overrides``: global config options
    that replace or extend the generated ones (e.g. ``{"log": ...}``).
    """

    def __init__(
        self,
        base_dir: Path,
        domain: str,
        address: str,
        resolver: str | None,
        hosts: Mapping[str, str],
        modules: Sequence[str] = DEFAULT_MODULES,
        overrides: Mapping[str, LuaValue] | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.domain = domain
        self.address = address
        self.resolver = resolver
        self.hosts = dict(hosts)
        self.modules = list(modules)
        self.overrides = dict(overrides or {})
        self.directory = self.base_dir / "prosody"
        self.config_path = self.directory / f"prosody-{os.getpid()}.cfg.lua"
        self.log_path = self.directory / "prosody.log"
        self.stdout_path = self.directory / "prosody.out"
        self.user = SystemUser.lookup("prosody")
        self.process: subprocess.Popen[bytes] | None = None
        # Made now, not at start(), so tests can read the paths before Prosody runs.
        cert_dir = self.base_dir / "prosody-cert"
        self.cert_path, self.key_path, _ = make_cert(
            cert_dir, [domain, f"*.{domain}", address]
        )
        chown_tree(cert_dir, self.user)

    # ----- lifecycle ----------------------------------------------------------------------

    def start(self) -> Prosody:
        """Write the config, start Prosody as its user and wait until c2s and s2s accept."""
        try:
            kill_stale_prosody()
            busy = [p for p in (C2S_PORT, S2S_PORT) if port_accepts(self.address, p, 0.2)]
            if busy:
                raise HarnessError(f"{self.address} ports {busy} already in use (ss -ltnp)")
            self._write_files()
            self._spawn()
            poll(self._ready, START_TIMEOUT, f"Prosody on {self.address}",
                 on_timeout=self.diagnostics)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; also kills any stray process running
        this config. Safe to call repeatedly."""
        process, self.process = self.process, None
        stop_process(process, lambda argv: _config_path(argv) == str(self.config_path),
                     STOP_TIMEOUT)

    @property
    def pid(self) -> int:
        """Pid of the running Prosody process (for SIGSTOP/SIGCONT tests)."""
        if self.process is None or self.process.poll() is not None:
            raise HarnessError("Prosody is not running")
        return self.process.pid

    def register(self, user: str, password: str) -> None:
        """Create an account with ``prosodyctl register`` (works while Prosody runs: the
        internal storage is read from disk at login)."""
        result = run_as(
            self.user,
            ["prosodyctl", "--config", str(self.config_path), "register", user, self.domain,
             password],
            base_env(self.directory), timeout=60, cwd=self.directory,
        )
        if result.returncode != 0:
            raise HarnessError(
                f"prosodyctl register {user} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )

    def diagnostics(self) -> str:
        return "\n".join(tail(p) for p in (self.log_path, self.stdout_path))

    # ----- internals ----------------------------------------------------------------------

    def _ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise HarnessError(f"Prosody exited with {code}\n{self.diagnostics()}")
        return port_accepts(self.address, C2S_PORT) and port_accepts(self.address, S2S_PORT)

    def _spawn(self) -> None:
        with self.stdout_path.open("ab") as out:
            self.process = subprocess.Popen(
                ["prosody", "--config", str(self.config_path), "-F"],
                env=base_env(self.directory), cwd=self.directory,
                user=self.user.uid, group=self.user.gid, extra_groups=[],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C at the terminal reaches pytest, whose teardown then
                # stops Prosody in order, instead of killing it under a running test.
                start_new_session=True,
            )

    def _write_files(self) -> None:
        if self.directory.exists():
            shutil.rmtree(self.directory)
        (self.directory / "data").mkdir(parents=True)
        (self.directory / "hosts").write_text(
            "".join(f"{ip} {name}\n" for name, ip in self.hosts.items())
        )
        if self.resolver:
            (self.directory / "resolv.conf").write_text(f"nameserver {self.resolver}\n")
        self.config_path.write_text(self._config_text())
        chown_tree(self.directory, self.user)

    def _unbound(self) -> dict[str, LuaValue]:
        """lua-unbound settings: private hosts file, private resolv.conf, and ``test.``
        made an ordinary zone. libunbound, like unbound, serves the RFC 6761 special-use
        names (``test.``, ``invalid.``, ...) itself as NXDOMAIN without asking any
        nameserver; ``transparent`` keeps the hosts-file entries and forwards the rest."""
        settings: dict[str, LuaValue] = {
            "hoststxt": str(self.directory / "hosts"),
            "options": {"local-zone:": UNBOUND_LOCAL_ZONE},
        }
        if self.resolver:
            settings["resolvconf"] = str(self.directory / "resolv.conf")
        return settings

    def _globals(self) -> dict[str, LuaValue]:
        d = self.directory
        no_ports: list[int] = []
        settings: dict[str, LuaValue] = {
            "pidfile": str(d / "prosody.pid"),
            "certificates": str(self.cert_path.parent),
            "data_path": str(d / "data"),
            "log": [{"levels": {"min": "info"}, "to": "file", "filename": str(self.log_path)}],
            "interfaces": [self.address],
            "local_interfaces": [self.address],
            "c2s_ports": [C2S_PORT],
            "s2s_ports": [S2S_PORT],
            "c2s_direct_tls_ports": no_ports,
            "s2s_direct_tls_ports": no_ports,
            "legacy_ssl_ports": no_ports,
            "component_ports": no_ports,
            "http_ports": no_ports,
            "https_ports": no_ports,
            "modules_enabled": self.modules,
            "authentication": "internal_plain",
            "c2s_require_encryption": False,
            "s2s_require_encryption": False,
            "s2s_secure_auth": False,  # self-signed certificates: dialback must be accepted
            "unbound": self._unbound(),
        }
        settings.update(self.overrides)
        return settings

    def _config_text(self) -> str:
        lines = ["-- written by tests/harness/prosody.py"]
        lines += [f"{key} = {lua(value)}" for key, value in self._globals().items()]
        ssl = {"certificate": str(self.cert_path), "key": str(self.key_path)}
        lines += [f"VirtualHost {lua(self.domain)}", f"    ssl = {lua(ssl)}", ""]
        return "\n".join(lines)
