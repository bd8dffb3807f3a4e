"""Login storms for the integration tests: hundreds of slixmpp clients in a few processes.

``Storm`` starts several ``tests/support/storm_client.py`` processes (each runs its share of
the clients on one asyncio loop), waits until all are loaded, then starts every client in
the same instant with ``go()``. The clients report each login (``up``), failed attempt
(``fail``, with the stream error condition if one came) and cut connection (``down``) as JSON
lines, collected here by one reader thread per process. ``quit()`` (or leaving the ``with``
block) closes every client and ends the processes.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[2]
SOURCE_NET = "127.0.10"  # unused loopback addresses the clients connect from


def source_addresses(count: int) -> list[str]:
    """``count`` loopback addresses (127.0.10.1, ...) to spread clients over, as real clients
    come from many addresses (the gateway's faildetect numclients counts distinct ones)."""
    return [f"{SOURCE_NET}.{i}" for i in range(1, count + 1)]


def ensure_accounts(servers: Any, prefix: str, count: int) -> list[str]:
    """`prefix`0 .. `prefix`count-1 on the ejabberd cluster, registering only those missing
    (once per session however many modules ask); the names, in order."""
    wanted = [f"{prefix}{i}" for i in range(count)]
    have = set(servers.ejabberd.registered_users())
    missing = {user: servers.password for user in wanted if user not in have}
    if missing:
        servers.ejabberd.register_many(missing)
    return wanted


class Storm:
    """``clients`` logins as ``<user_prefix><i>@<domain>/<resource>`` (i from 0) at
    (host, port), split over ``processes`` client processes.

    ``mode="once"``: one attempt each, sessions kept until ``quit``; ``mode="stay"``: the
    clients retry failed logins and log in again when cut, as real clients do.
    """

    def __init__(self, workdir: Path, *, host: str, port: int, domain: str, password: str,
                 user_prefix: str, clients: int, processes: int = 5, resource: str = "storm",
                 sources: Sequence[str] = (), mode: str = "once", direct_tls: bool = False,
                 attempt_timeout: float = 60.0) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.clients = clients
        self.argv_common = [
            "--host", host, "--port", str(port), "--domain", domain, "--password", password,
            "--user-prefix", user_prefix, "--resource", resource, "--mode", mode,
            "--sources", ",".join(sources), "--attempt-timeout", str(attempt_timeout),
            *(["--direct-tls"] if direct_tls else []),
        ]
        self.processes = processes
        self.procs: list[subprocess.Popen[str]] = []
        self._records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.started_at: float | None = None  # wall clock of `go`
        self.first = 0  # the first account number
        # The client process, and whether it runs in a session of its own (so a Ctrl-C
        # reaches only the caller, which then stops the clients itself).
        self.client_command: list[str] = [sys.executable, "-m", "tests.support.storm_client"]
        self.new_session = False

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Self:
        """Start the processes and wait until every one is loaded and waiting for `go`."""
        share, extra = divmod(self.clients, self.processes)
        first = self.first
        for n in range(self.processes):
            count = share + (1 if n < extra else 0)
            stderr = (self.workdir / f"client-{n}.stderr").open("w")
            proc = subprocess.Popen(
                [*self.client_command, *self.argv_common,
                 "--first", str(first), "--count", str(count)],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                text=True, bufsize=1, start_new_session=self.new_session)
            stderr.close()
            self.procs.append(proc)
            thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
            thread.start()
            self._threads.append(thread)
            first += count
        try:
            self.wait(lambda: len(self.records("ready")) == self.processes, timeout,
                      "every client process loaded")
        except BaseException:
            self.quit()
            raise
        return self

    def go(self) -> float:
        """Start every client now; returns the wall-clock start (also `started_at`)."""
        self.started_at = time.time()
        self._send("go")
        return self.started_at

    def quit(self, timeout: float = 30.0) -> None:
        """Close every client and end the processes (SIGKILL after `timeout`)."""
        self._send("quit")
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.quit()

    def _send(self, command: str) -> None:
        for proc in self.procs:
            if proc.poll() is None and proc.stdin is not None:
                try:
                    proc.stdin.write(command + "\n")
                    proc.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self._records.append(record)

    # --- what the clients said -----------------------------------------------------------------

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self._records if event is None or r["event"] == event]

    def wait(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while not (result := condition()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout:g} s\n{self.describe()}")
            dead = [p.returncode for p in self.procs if p.poll() is not None]
            if dead and not self.records("exit"):
                raise AssertionError(f"a client process exited ({dead}) while waiting for "
                                     f"{what}:\n{self.stderr_tail()}")
            time.sleep(0.05)
        return result

    def latest(self) -> dict[int, dict[str, Any]]:
        """Each client's last up/down/fail record, by client index."""
        out: dict[int, dict[str, Any]] = {}
        for record in self.records():
            if record["event"] in ("up", "down", "fail"):
                out[record["client"]] = record
        return out

    def settled(self) -> bool:
        """Mode once: every client has logged in or failed."""
        return len({r["client"] for r in self.records() if r["event"] in ("up", "fail")}) \
            == self.clients

    def all_up(self) -> bool:
        """Every client's last word is `up` (a cut client that logged in again counts)."""
        latest = self.latest()
        return len(latest) == self.clients and all(r["event"] == "up" for r in latest.values())

    def failures(self) -> list[dict[str, Any]]:
        return self.records("fail")

    def summary(self, since: float | None = None) -> dict[str, Any]:
        """Logins, failures (by reason and stream error) and login times (s after `since`,
        by default after `go`)."""
        since = self.started_at if since is None else since
        assert since is not None
        ups = [r["t"] - since for r in self.records("up") if r["t"] >= since]
        fails = [r for r in self.records("fail") if r["t"] >= since]
        return {
            "logins": len(ups),
            "failed_attempts": len(fails),
            "failure_reasons": dict(Counter(_reason(r["reason"]) for r in fails)),
            "stream_errors": dict(Counter(r["condition"] for r in fails if r["condition"])),
            "first_login_s": round(min(ups), 3) if ups else None,
            "median_login_s": round(statistics.median(ups), 3) if ups else None,
            "last_login_s": round(max(ups), 3) if ups else None,
        }

    def describe(self) -> str:
        latest = self.latest()
        counts = Counter(r["event"] for r in latest.values())
        reasons = Counter(_reason(r["reason"]) for r in self.records("fail"))
        return (f"{self.clients} clients: {dict(counts)} (never heard of: "
                f"{self.clients - len(latest)}); failed attempts by reason: {dict(reasons)}")

    def stderr_tail(self, chars: int = 3000) -> str:
        return "\n".join(
            f"--- client-{n}.stderr ---\n"
            + (self.workdir / f"client-{n}.stderr").read_text(errors="replace")[-chars:]
            for n in range(len(self.procs)))


def _reason(reason: str | None) -> str:
    """A failure reason without the per-connection detail (addresses, ports)."""
    text = reason or "?"
    return text.split(" in serverfarm ")[0][:120]
