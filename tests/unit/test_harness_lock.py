"""The machine-wide harness lock (tests/harness/lock.py): a second holder waits for the first,
and a holder killed with SIGKILL frees it."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from tests.harness.lock import HarnessLock

HOLD = """
import sys, time
from pathlib import Path
from tests.harness.lock import HarnessLock
lock = HarnessLock(Path(sys.argv[1]))
lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder(path: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_waits_until_the_first_exits(tmp_path: Path) -> None:
    path = tmp_path / "harness.lock"
    first = _holder(path, 1.5)
    lock = HarnessLock(path)
    lock.acquire()
    # the lock came only once the first holder had gone
    assert first.poll() == 0
    assert path.read_text().strip() == str(os.getpid())
    lock.release()


def test_sigkilled_holder_frees_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "harness.lock"
    first = _holder(path, 60)
    first.kill()
    first.wait(5)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if anyone still held it
    finally:
        os.close(fd)
    lock = HarnessLock(path)
    lock.acquire()
    lock.release()
    lock.release()  # idempotent
