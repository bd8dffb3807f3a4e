"""One real-server harness per machine at a time.

The harness binds fixed loopback addresses (127.0.2.x, 127.0.3.1, 127.0.4.53) and fixed
Erlang node names, so two runs at once (two pytest processes, the demo, the chaos suite)
would break each other in confusing ways. ``Servers.start`` takes this lock first and
``Servers.stop`` releases it; a second run waits, saying who holds it. The lock is an
``flock`` on a file, so the kernel drops it when its holder dies, even by SIGKILL.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

LOCK_PATH = Path(os.environ.get("XMPPGW_HARNESS_LOCK", "/tmp/xmppgw-harness.lock"))


class HarnessLock:
    """An exclusive, blocking, re-entrant-per-object flock on ``LOCK_PATH``."""

    def __init__(self, path: Path = LOCK_PATH) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> float:
        """Block until the lock is ours; return the seconds spent waiting."""
        if self._fd is not None:
            return 0.0
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        began = time.monotonic()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            print(f"\nharness: another run holds {self.path} (pid {holder}); waiting for it",
                  file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return time.monotonic() - began

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
