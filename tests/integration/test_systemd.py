"""The systemd unit (conf/xmppgw.service) and the sd_notify messages `Type=notify` relies on.

The notifications are read from a datagram socket the test owns, passed to `xmppgw run` as
NOTIFY_SOCKET, just as systemd does. Each message's sender is checked with SCM_CREDENTIALS:
systemd's default NotifyAccess=main drops what any other process sends, so with workers the
master must send them all. No XMPP server is needed: the vserver fronts a dummy real.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import ROOT, GatewayProcess

UNIT = ROOT / "conf" / "xmppgw.service"
VIP = "127.0.16.1"
DUMMY_REAL = "127.0.16.9"


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (scripts/setup.sh installs systemd)")
    xmppgw = Path(sys.executable).with_name("xmppgw")
    assert xmppgw.exists(), f"{xmppgw}: install the package (scripts/setup.sh)"
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecReload=", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "RuntimeDirectory=xmppgw", "AmbientCapabilities=CAP_NET_BIND_SERVICE"):
        assert line in text
    # verify checks that ExecStart's binary exists: this venv's stands in for /opt/xmppgw's
    unit = tmp_path / "xmppgw.service"
    unit.write_text(text.replace("/opt/xmppgw/bin/xmppgw", str(xmppgw)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60, check=False)
    # verify exits 0 on unknown keys and bad values too: anything it says is a finding
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr)


class NotifySocket:
    """What systemd listens on for sd_notify: an AF_UNIX datagram socket, with the sender's
    credentials on each message."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.address = address

    def next(self, timeout: float = 15.0) -> tuple[dict[str, str], int]:
        """The next message's fields and the pid that sent it."""
        self.sock.settimeout(timeout)
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = -1
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", value[:12])[0]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
        return fields, pid

    def quiet(self, wait: float = 0.5) -> None:
        """Nothing more arrives within `wait` seconds."""
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected notification: {data!r}")

    def close(self) -> None:
        self.sock.close()


def config(control: Path, workers: int) -> str:
    return f"""
[gateway]
domains = ["example.test"]
workers = {workers}
control_socket = "{control}"
shutdown_timeout = 1

[[vserver]]
name = "C2S"
virtual = "{VIP}:5222"
serverfarm = "DUMMY"

[[serverfarm]]
name = "DUMMY"
[[serverfarm.real]]
address = "{DUMMY_REAL}"
"""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """AF_UNIX paths hold 107 bytes: pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="xmppgw-notify-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def vserver_accepts() -> None:
    with socket.create_connection((VIP, 5222), timeout=5):
        pass


@pytest.mark.parametrize("workers", [1, 2])
def test_ready_reloading_stopping_reach_notify_socket(workers: int, short_dir: Path) -> None:
    # workers = 1: a path; workers = 2: the abstract namespace ('@'), as systemd may pass
    address = str(short_dir / "notify") if workers == 1 else f"@xmppgw-notify-{os.getpid()}"
    listener = NotifySocket(address)
    gw = GatewayProcess(config(short_dir / "ctl.sock", workers), short_dir,
                        env={"NOTIFY_SOCKET": address})
    try:
        gw.start()
        fields, pid = listener.next()
        assert fields.get("READY") == "1", fields
        assert pid == gw.pid  # the main PID (with workers: the master), never a worker
        vserver_accepts()  # READY=1 came once the listener was bound
        if workers > 1:
            gw.settle()
            assert len(gw.records("worker_started")) == workers, gw.log_text()
        for how in ("xmppgw reload", "SIGHUP"):
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            if how == "SIGHUP":
                os.kill(gw.pid, signal.SIGHUP)
            else:
                result = subprocess.run([sys.executable, "-m", "xmppgw", "reload", "-c",
                                         str(gw.config_path)], capture_output=True, text=True,
                                        timeout=30, check=False, cwd=ROOT)
                assert result.returncode == 0, result.stderr
            fields, pid = listener.next()
            assert fields.get("RELOADING") == "1", (how, fields)
            assert before <= int(fields["MONOTONIC_USEC"]) <= (
                time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000), (how, fields)
            assert pid == gw.pid, how
            fields, pid = listener.next()
            assert fields.get("READY") == "1" and pid == gw.pid, (how, fields)
            vserver_accepts()
        listener.quiet()
        gw.proc.send_signal(signal.SIGTERM)
        fields, pid = listener.next()
        assert fields == {"STOPPING": "1"} and pid == gw.pid, fields
        assert gw.proc.wait(30) == 0, gw.log_text()
        listener.quiet()  # the workers stopping said nothing
        assert "Traceback" not in gw.log_text(), gw.log_text()
    finally:
        gw.stop()
        listener.close()
