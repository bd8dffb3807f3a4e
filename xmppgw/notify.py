"""sd_notify(3) for `Type=notify` under systemd: the service manager is told when the gateway
is ready, reloading and stopping.

The protocol is one datagram of newline-separated `KEY=value` fields to the AF_UNIX socket
named by `$NOTIFY_SOCKET` (a path, or an abstract-namespace name when it starts with '@').
No socket set (not under systemd, or `Type=simple`): nothing is sent. Written here rather than
taken from a library: `sdnotify` (PyPI, last release 2017) holds one socket open for the
process's life and sends no MONOTONIC_USEC; `systemd-python` and `cysystemd` are C extensions
that need libsystemd headers to build. What this needs is the few lines below.

Only the main process notifies: with `workers > 1` the master (`net/workers.py`), else the
one gateway process (`net/workers.py` and `Gateway.reload`).
"""

from __future__ import annotations

import os
import socket
import time


def notify(*fields: str) -> bool:
    """Send `fields` (e.g. "READY=1") as one notification; True if it was sent."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):  # unset, or a kind this does not speak (vsock:)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError:
        return False
    return True


def ready(status: str | None = None) -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def reloading() -> bool:
    """RELOADING=1 with the CLOCK_MONOTONIC timestamp systemd (253+) asks to go with it."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping() -> bool:
    return notify("STOPPING=1")
