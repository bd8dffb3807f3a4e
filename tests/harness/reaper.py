"""Last-resort teardown: a watchdog process that outlives a killed test run.

atexit and signal handlers cannot run when pytest is SIGKILLed (OOM killer, CI timeout,
``kill -9``); the ejabberd VMs are detached and would keep the test addresses bound. The
reaper is a separate process in its own session holding the read end of a pipe whose write end
only pytest holds. When pytest dies, for whatever reason, the read sees EOF and the reaper
kills every ejabberd node and Prosody tagged with that pytest's pid. After a clean teardown it
finds nothing to kill and just exits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .proc import pid_alive, poll

_started_for: set[tuple[str, ...]] = set()
_lock = threading.Lock()
_pipes: list[int] = []  # write ends, kept open (never inherited) for the life of pytest


def start_reaper(ejabberd_shorts: Sequence[str]) -> None:
    """Spawn the watchdog for this process once per set of node short names."""
    key = tuple(sorted(ejabberd_shorts))
    with _lock:
        if key in _started_for:
            return
        read_end, write_end = os.pipe()  # both non-inheritable; pass_fds shares read_end only
        repo_root = Path(__file__).resolve().parents[2]
        subprocess.Popen(
            [sys.executable, "-m", "tests.harness.reaper", str(os.getpid()), str(read_end),
             *key],
            cwd=repo_root,
            env={**os.environ, "PYTHONPATH": str(repo_root)},
            pass_fds=(read_end,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # survives the terminal's Ctrl-C and pytest's process group
        )
        os.close(read_end)
        _pipes.append(write_end)
        _started_for.add(key)


def reap(owner: int, ejabberd_shorts: Sequence[str]) -> None:
    """Kill what the dead run ``owner`` left behind."""
    # Imported here: ejabberd.py imports this module (to start the reaper), not vice versa.
    from .ejabberd import kill_stale_nodes, stop_idle_epmd
    from .prosody import kill_stale_prosody

    poll(lambda: not pid_alive(owner), 30, f"pid {owner} to exit", interval=0.1)
    kill_stale_nodes(list(ejabberd_shorts))
    kill_stale_prosody()
    stop_idle_epmd()


def main(argv: list[str]) -> None:
    owner, fd, shorts = int(argv[0]), int(argv[1]), argv[2:]
    with os.fdopen(fd, "rb") as pipe:
        while pipe.read(4096):  # blocks until every write end is closed: the owner is gone
            pass
    reap(owner, shorts)


if __name__ == "__main__":
    main(sys.argv[1:])
