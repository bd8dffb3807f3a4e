"""Process and readiness helpers shared by the harness modules.

Everything here is deliberately small and synchronous: the harness runs once per pytest
session, outside any event loop, and prefers polling a real readiness condition (a port that
accepts, a command that succeeds) over sleeping for a guessed time.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class HarnessError(RuntimeError):
    """A server of the harness failed to start, stop or answer as expected."""


def poll(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Call ``condition`` until it returns something truthy, or raise after ``timeout`` s.

    ``what`` names the awaited condition in the error; ``on_timeout`` may add diagnostics
    (e.g. a log tail) so a failing start-up explains itself.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = on_timeout() if on_timeout else ""
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}")
        time.sleep(interval)


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to (host, port) succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class SystemUser:
    """A system account the servers run as (they refuse root, or should not run as root)."""

    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str) -> SystemUser:
        entry = pwd.getpwnam(name)
        return cls(name, entry.pw_uid, entry.pw_gid)


def chown_tree(path: Path, user: SystemUser) -> None:
    """Give ``path`` and everything below it to ``user`` (the servers write into it)."""
    os.chown(path, user.uid, user.gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.uid, user.gid)


def run_as(
    user: SystemUser,
    argv: Sequence[str],
    env: dict[str, str],
    timeout: float,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``user`` with exactly ``env``; output captured, never raises on rc.

    ``subprocess``'s ``user=``/``group=`` switch identity in the child directly, which is the
    same as ``su USER -s /bin/sh -c ...`` without a shell to quote for.
    """
    return subprocess.run(
        list(argv),
        env=env,
        cwd=cwd,
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def base_env(home: Path) -> dict[str, str]:
    """A minimal environment for a server process: nothing of the test runner leaks in."""
    return {
        "HOME": str(home),
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
    }


def iter_cmdlines() -> Iterator[tuple[int, list[str]]]:
    """Yield (pid, argv) of every live process that can be read."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            yield int(entry.name), raw.rstrip(b"\0").decode(errors="replace").split("\0")


def pids_where(match: Callable[[list[str]], bool]) -> list[int]:
    """Pids of processes whose argv satisfies ``match`` (zombies have no argv: skipped)."""
    return [pid for pid, argv in iter_cmdlines() if match(argv)]


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_pids(pids: Sequence[int], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to each pid, ignoring those already gone."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill_and_wait(pids: Sequence[int], timeout: float = 10.0) -> None:
    """SIGKILL ``pids`` and wait until none of them is alive (they are not our children)."""
    kill_pids(pids)
    poll(lambda: not any(pid_alive(p) for p in pids), timeout, f"pids {list(pids)} to die")


def stop_process(process: subprocess.Popen[bytes] | None, stray: Callable[[list[str]], bool],
                 timeout: float = 10.0) -> None:
    """Stop a server we started: SIGCONT (a test may have left it SIGSTOPped), SIGTERM, then
    SIGKILL after `timeout`; then any stray process whose argv `stray` recognises (one
    started by an earlier attempt, or forked). Safe on a process already gone."""
    if process is not None and process.poll() is None:
        kill_pids([process.pid], signal.SIGCONT)
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    strays = pids_where(stray)
    if strays:
        kill_and_wait(strays)


def owner_pid_dead(pid_text: str) -> bool:
    """True if the harness run that owns a resource tagged with ``pid_text`` is gone.

    Resources (node names, temp dirs) carry the pytest pid; a live pid that is not ours is a
    concurrent run whose servers must not be touched.
    """
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    return pid != os.getpid() and not pid_alive(pid)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file, or a note that it is missing."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"({path}: {exc.strerror})"
    return f"--- tail of {path} ---\n" + "\n".join(text.splitlines()[-lines:])


def parallel(calls: Sequence[Callable[[], T]], name: str = "harness") -> list[T]:
    """Run ``calls`` in threads, wait for ALL of them, then re-raise the first failure.

    Waiting for every call before raising matters for start-up: a half-started server that is
    still being started in a thread would otherwise escape the caller's cleanup; so even an
    interrupt (KeyboardInterrupt) is held until the calls, all bounded, are done. Plain threads,
    not an executor: executors refuse work once the interpreter is shutting down, which is
    exactly when the atexit teardown runs; if even a thread cannot start, the call runs inline.
    """
    results: list[T | None] = [None] * len(calls)
    errors: list[BaseException | None] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            errors[i] = exc

    threads = []
    for i in range(len(calls)):
        thread = threading.Thread(target=run, args=(i,), name=f"{name}-{i}", daemon=True)
        try:
            thread.start()
            threads.append(thread)
        except RuntimeError:
            run(i)
    interrupted: BaseException | None = None
    for thread in threads:
        while thread.is_alive():
            try:
                thread.join()
            except BaseException as exc:  # noqa: BLE001 - Ctrl-C/SIGTERM: let the (bounded)
                # calls finish, then raise it
                interrupted = interrupted or exc
    if interrupted is not None:
        raise interrupted
    for error in errors:
        if error is not None:
            raise error
    return results  # type: ignore[return-value]  # all set when no call raised
