"""A SYN blackhole: nftables drops new TCP connections to one address and port.

A dead host's address behaves like this (no RST, no answer), which is the case that costs
clients a long connect timeout and that hedged connects are for. The table has its own name
and is always deleted, also by a run that died (see `remove_stale`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

TABLE = "xmppgw_blackhole"


def _nft(script: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True, timeout=10)


def remove_stale() -> None:
    subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True, check=False,
                   timeout=10)


@contextmanager
def blackhole(address: str, port: int) -> Iterator[None]:
    remove_stale()
    _nft(f"""table inet {TABLE} {{
  chain out {{
    type filter hook output priority 0; policy accept;
    ip daddr {address} tcp dport {port} tcp flags & (syn | ack) == syn drop
  }}
}}""")
    try:
        yield
    finally:
        remove_stale()
