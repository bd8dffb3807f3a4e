"""pytest fixture giving the integration tests one running set of real servers per session.

Use in a conftest or a test module: ``from tests.harness.fixtures import servers  # noqa``.

Teardown is layered, because a leaked ejabberd VM keeps the test addresses bound and breaks
every later run:

1. the fixture's ``finally`` (normal end, failures, Ctrl-C: pytest runs session finalizers);
2. ``atexit`` (the interpreter exits without running finalizers, e.g. an error in pytest);
3. SIGTERM/SIGHUP become KeyboardInterrupt, so a ``kill`` or a closed terminal takes path 1;
4. the reaper process (tests/harness/reaper.py) for SIGKILL, where nothing in-process runs;
5. the next run kills servers of dead earlier runs before it starts its own.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .proc import owner_pid_dead
from .servers import Servers

BASE_PREFIX = "xmppgw-harness-"
KEEP_ENV = "XMPPGW_KEEP_HARNESS"  # set to 1 to keep logs and configs after a passing run

_lock = threading.RLock()
_shared: Servers | None = None  # one set per process, however many fixture definitions ask
_holders = 0
_start_error: BaseException | None = None
_hooks_installed = False


def make_base_dir() -> Path:
    """A fresh world-traversable directory under /tmp, tagged with our pid.

    The servers run as their own users, so the directory must be traversable by them; the
    pid tag lets a later run remove what a killed run left behind.
    """
    remove_stale_base_dirs()
    base = Path(tempfile.mkdtemp(prefix=f"{BASE_PREFIX}{os.getpid()}-", dir="/tmp"))
    base.chmod(0o755)
    return base


def remove_stale_base_dirs() -> None:
    """Delete base directories of earlier runs whose pytest process is gone."""
    pattern = re.compile(rf"^{re.escape(BASE_PREFIX)}(\d+)-")
    for entry in Path("/tmp").glob(f"{BASE_PREFIX}*"):
        match = pattern.match(entry.name)
        if match and owner_pid_dead(match.group(1)):
            shutil.rmtree(entry, ignore_errors=True)


def stop_all() -> None:
    """Stop the shared Servers set if it is still running (idempotent, for atexit)."""
    global _shared
    with _lock:
        instance = _shared
    if instance is None:
        return
    try:
        instance.stop()
    except Exception as exc:  # noqa: BLE001 - at exit, report and go on
        print(f"harness teardown failed: {exc!r}", file=sys.stderr)
        return
    with _lock:
        _shared = None


def _interrupt(signum: int, _frame: object) -> None:
    """Turn SIGTERM/SIGHUP into the KeyboardInterrupt pytest already handles with teardown."""
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


def install_teardown_hooks() -> None:
    """Register the atexit and signal paths once; signals only from the main thread, and only
    where nobody else installed a handler."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _interrupt)


def acquire_servers() -> Servers:
    """The process-wide running Servers set, started on first use.

    Shared because pytest keeps one cache per fixture *definition*: importing ``servers``
    into tests/conftest.py and into a test module makes two session fixtures, which must not
    start two sets on the same addresses. A failed start is remembered and re-raised.
    """
    global _shared, _holders
    with _lock:
        if _start_error is not None:
            raise _start_error
        if _shared is None:
            _shared = _start_new()
        _holders += 1
        return _shared


def _start_new() -> Servers:
    global _start_error
    install_teardown_hooks()
    base = make_base_dir()
    instance = Servers(base)
    try:
        instance.start()
    except BaseException as exc:
        _start_error = exc
        print(f"\nharness failed to start; logs and configs kept in {base}", file=sys.stderr)
        raise
    print(f"\nharness up in {instance.startup_seconds:.1f}s {instance.timings} at {base}")
    return instance


def release_servers(keep_files: bool) -> None:
    """Drop one holder; the last one stops the servers and removes their directory (kept if
    ``keep_files`` or ``XMPPGW_KEEP_HARNESS=1``, to read the logs of a failed run)."""
    global _shared, _holders
    with _lock:
        _holders -= 1
        if _holders > 0 or _shared is None:
            return
        instance = _shared
        instance.stop()  # if this is interrupted, _shared stays set for the atexit path
        _shared = None
    _dispose(instance.base_dir, keep_files)


@pytest.fixture(scope="session")
def servers(request: pytest.FixtureRequest) -> Iterator[Servers]:
    """The running DNS stub, ejabberd cluster and Prosody (see tests/harness/servers.py)."""
    instance = acquire_servers()
    keep_files = True  # unless the session ends without failures
    try:
        yield instance
        keep_files = request.session.testsfailed > 0
    finally:
        release_servers(keep_files)


def _dispose(base: Path, keep: bool) -> None:
    """Remove the run's directory, unless its logs may explain a failure."""
    if keep or os.environ.get(KEEP_ENV) == "1":
        print(f"\nharness logs and configs kept in {base}", file=sys.stderr)
        return
    shutil.rmtree(base, ignore_errors=True)
