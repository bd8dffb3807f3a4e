"""Faults outside toxiproxy: a SYN blackhole with nftables, and a node hung with SIGSTOP.

The blackhole has a table of its own (not tests/support/blackhole.py's, which the integration
tests use), so a chaos run and a test never delete each other's rules; it is always removed,
also by the next run when one died half way (`remove_stale`).

The rule sits on the output hook of the namespace the suite runs in: every leg of the
topology (client -> gateway -> toxiproxy -> node) is a loopback connection in this one
namespace, so a rule dropping the SYNs to an address and port there is what a dead host on
a real network looks like to whoever dials it (no RST, no answer: Linux retries the SYN six
times, about 127 s, before connect() fails).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

TABLE = "xmppgw_chaos_blackhole"


def _nft(*args: str, script: str | None = None, check: bool = True) -> None:
    subprocess.run(["nft", *args], input=script, text=True, capture_output=True, check=check,
                   timeout=10)


def remove_stale(table: str = TABLE) -> None:
    """Delete the suite's table if a run left it behind (no error when it is not there)."""
    _nft("delete", "table", "inet", table, check=False)


@contextmanager
def blackhole(targets: Sequence[tuple[str, Sequence[int]]],
              table: str = TABLE) -> Iterator[None]:
    """Drop the SYNs to each (address, ports) of `targets` (new connections hang; established
    ones, which need no SYN, go on) while the block runs, with nftables table `table`."""
    remove_stale(table)
    rules = "\n".join(
        f"    ip daddr {address} tcp dport {{ {', '.join(str(p) for p in ports)} }} "
        "tcp flags & (syn | ack) == syn drop" for address, ports in targets)
    _nft("-f", "-", script=f"""table inet {table} {{
  chain out {{
    type filter hook output priority 0; policy accept;
{rules}
  }}
}}""")
    try:
        yield
    finally:
        remove_stale(table)


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP `pid` (a hung process: its sockets stay open, the kernel still completes
    handshakes into its listen backlog, nothing answers), SIGCONT on the way out."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
