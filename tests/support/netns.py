"""Network namespaces for tests: create, run in, tear down; and a thread whose sockets live in one.

`Netns` wraps `ip netns`: a namespace this test run made (its name carries the run's pid), a
loopback that is up, processes started in it with `ip netns exec` (which execs, so the Popen's
pid is the program's own), and a teardown that kills whatever still runs inside (everything
there is this run's) before `ip netns del`.

`NetnsLoop` is a thread that joins a namespace with setns(2) and runs an asyncio loop: the
test process itself can then open client connections from inside the namespace (slixmpp,
raw sockets) without a child process per login. Linux lets one thread of a process change its
network namespace; threads it starts (asyncio's executor) inherit it.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import signal
import subprocess
import threading
import time
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ip ARGS`; CalledProcessError (with ip's words) when it fails and `check`."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                            check=False)
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, ["ip", *args],
                                            result.stdout, result.stderr)
    return result


class Netns:
    """One network namespace, made by `create()` and gone after `delete()`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def create(self) -> Netns:
        ip("netns", "add", self.name)
        self.ip("link", "set", "lo", "up")
        return self

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ip -n NAME ARGS`."""
        return ip("-n", self.name, *args, check=check)

    def argv(self, *argv: str) -> list[str]:
        """`argv` run inside the namespace (`ip netns exec` execs it: same pid)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*argv), capture_output=True, text=True,
                              timeout=timeout, check=False)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.argv(*argv), **kwargs)

    def addresses(self, dev: str) -> list[str]:
        """The IPv4 addresses on `dev`, without prefix length."""
        out = self.ip("-4", "-o", "addr", "show", "dev", dev, check=False).stdout
        return [word.split("/")[0] for line in out.splitlines()
                for i, word in enumerate(line.split()) if i > 0 and line.split()[i - 1] == "inet"]

    def pids(self) -> list[int]:
        out = ip("netns", "pids", self.name, check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    def delete(self, grace: float = 5.0) -> None:
        """Kill what still runs inside (SIGTERM, then SIGKILL after `grace` s), then remove
        the namespace. Safe to call for a namespace that was never made."""
        if not (NETNS_DIR / self.name).exists():
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
        ip("netns", "del", self.name, check=False)


def setns(name: str) -> None:
    """Move the calling thread into network namespace `name` (setns(2)); OSError if refused."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsLoop:
    """An asyncio loop in its own thread, inside network namespace `name`.

    `run(coro)` runs a coroutine there and returns its result (or raises its exception);
    `submit(coro)` returns a Future at once, for work that overlaps the caller's."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"netns-{name}", daemon=True)

    def start(self) -> NetnsLoop:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        try:
            setns(self.name)
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        asyncio.set_event_loop(self.loop)
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self.submit(coro).result(timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            # Clients dropped by the tests go now, while their loop can still take
            # the callbacks their finalizers schedule.
            self.loop.call_soon_threadsafe(lambda: (gc.collect(), self.loop.stop()))
            self._thread.join(10)
