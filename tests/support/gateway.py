"""Runs the real `xmppgw run` as a child process and reads its JSON log lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class GatewayProcess:
    def __init__(self, config_text: str, workdir: Path, name: str = "gateway",
                 env: dict[str, str] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(config_text)
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, **env} if env else None  # added to the inherited environment
        self.run_args: list[str] = []  # more `xmppgw run` options (e.g. --takeover)

    def start(self, timeout: float = 15.0) -> GatewayProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xmppgw", "run", *self.run_args, "-c",
             str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(r.get("event") == "started" for r in self.records()):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway did not start within {timeout} s:\n{self.log_text()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def show(self, *args: str) -> str:
        """`xmppgw show ARGS -c <this gateway's config>`, as an operator types it."""
        result = subprocess.run([sys.executable, "-m", "xmppgw", "show", *args, "-c",
                                 str(self.config_path)], capture_output=True, text=True,
                                timeout=30, check=False, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def settle(self) -> None:
        """Let buffered info lines reach the log (xmppgw.log flushes them within 50 ms)."""
        time.sleep(0.2)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if event is None or record.get("event") == event:
                out.append(record)
        return out

    def wait_record(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
                    event: str = "connection") -> dict[str, Any]:
        """The first log record of `event` that satisfies `predicate`, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.records(event):
                if predicate(record):
                    return record
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event} record matched within {timeout} s:\n"
                                     + self.log_text()[-4000:])
            time.sleep(0.05)
