"""What the workers of one gateway share: per real, each worker's counters, lock-free.

A table of doubles in an anonymous shared mapping made before the workers are forked: one
row per (worker, real), and each worker writes only its own rows, so no lock is needed (an
aligned 8-byte store is atomic on the platforms we run on). Readers sum the other workers'
rows. An anonymous `mmap` rather than `multiprocessing.shared_memory`: it has no name, so
nothing is left behind in /dev/shm when the master is killed, and fork is all the sharing
it needs.

What each worker sees (README, "Workers"): the load of every real summed over all workers
(leastconns and maxconns are global), faildetect counts summed over workers (a success
resets only the counts of the worker that saw it), and a real FAILED by any worker is FAILED
for all until that worker's retry elapses. Active probes run in worker 0 alone; its row's
`probe_failed` is their verdict, which the other workers apply.
"""

from __future__ import annotations

import mmap
import struct
from typing import NamedTuple

FIELDS = ("load", "active", "total", "failed_attempts", "reassigns", "consecutive_failures",
          "failed_clients", "failed_until", "probe_failed")
_WIDTH = len(FIELDS)
_SLOT = {name: i for i, name in enumerate(FIELDS)}
_ROW = struct.Struct(f"{_WIDTH}d")


class Row(NamedTuple):
    load: float = 0
    active: float = 0
    total: float = 0
    failed_attempts: float = 0
    reassigns: float = 0
    consecutive_failures: float = 0
    failed_clients: float = 0
    failed_until: float = 0.0
    probe_failed: float = 0.0  # 1.0: the real is PROBE_FAILED; only worker 0's row counts


class Peers(NamedTuple):
    """The other workers' view of one real, as the engine takes it."""

    load: int
    consecutive_failures: int
    failed_clients: int
    failed_until: float


class SharedTable:
    def __init__(self, workers: int, reals: int) -> None:
        self.workers = workers
        self.reals = reals
        self._mem = mmap.mmap(-1, max(1, workers * reals) * _ROW.size)  # MAP_SHARED

    def _offset(self, worker: int, real: int) -> int:
        return (worker * self.reals + real) * _ROW.size

    def publish(self, worker: int, real: int, row: Row) -> None:
        _ROW.pack_into(self._mem, self._offset(worker, real), *row)

    def row(self, worker: int, real: int) -> Row:
        return Row(*_ROW.unpack_from(self._mem, self._offset(worker, real)))

    def peers(self, worker: int, real: int) -> Peers:
        rows = [self.row(w, real) for w in range(self.workers) if w != worker]
        return Peers(
            load=int(sum(r.load for r in rows)),
            consecutive_failures=int(sum(r.consecutive_failures for r in rows)),
            failed_clients=int(sum(r.failed_clients for r in rows)),
            failed_until=max((r.failed_until for r in rows), default=0.0),
        )

    def probe_failed(self, real: int) -> bool:
        """The probes' verdict on a real: only worker 0 runs probes (once per gateway, not
        once per worker), so its row is the one that says."""
        return self.row(0, real).probe_failed > 0

    def total(self, real: int, field: str) -> float:
        i = _SLOT[field]
        return sum(self.row(w, real)[i] for w in range(self.workers))

    def clear(self, worker: int) -> None:
        """A worker that died holds nothing any more: its connections died with it."""
        for real in range(self.reals):
            self.publish(worker, real, Row())

