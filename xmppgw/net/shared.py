"""What the workers of one gateway share: per real, each worker's counters, lock-free.

A table of doubles in an anonymous shared mapping made before the workers are forked: one
row per (worker, real), and each worker writes only its own rows, so no lock is needed (an
aligned 8-byte store is atomic on the platforms we run on). Readers sum the other workers'
rows. An anonymous `mmap` rather than `multiprocessing.shared_memory`: it has no name, so
nothing is left behind in /dev/shm when the master is killed, and fork is all the sharing
it needs.

What each worker sees (docs/architecture.md): the load of every real summed over all workers
(leastconns and maxconns are global), faildetect counts summed over workers (a success
resets only the counts of the worker that saw it), and a real FAILED by any worker is FAILED
for all until that worker's retry elapses. Active probes run in worker 0 alone; its row's
`probe_failed` is their verdict, which the other workers apply.
"""

from __future__ import annotations

import mmap
import pickle
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from xmppgw.config import Config

FIELDS = ("load", "pending", "active", "total", "failed_attempts", "reassigns", "consecutive_failures",
          "failed_clients", "failed_until", "probe_failed")
_WIDTH = len(FIELDS)
_SLOT = {name: i for i, name in enumerate(FIELDS)}
_ROW = struct.Struct(f"{_WIDTH}d")
_FIELD = struct.Struct("d")
_PROBE_FAILED = _SLOT["probe_failed"] * _FIELD.size  # byte offset in a row
_LOAD, _PENDING, _CONSECUTIVE, _CLIENTS, _UNTIL = (
    _SLOT[f] for f in ("load", "pending", "consecutive_failures", "failed_clients",
                       "failed_until"))


def _store(mem: mmap.mmap, layout: struct.Struct, offset: int, *values: Any) -> None:
    """Write a record another process may be reading at that very moment.

    Not `Struct.pack_into`: CPython's zero-fills the whole record before writing the fields
    (s_pack_internal's memset), so a reader in another worker could see zeros for a moment:
    a PROBE_FAILED real read as healthy, a FAILED one as serving (seen in the tests). Packing
    aside and copying in one slice assignment writes each aligned 8-byte field once, so a
    reader sees every field either old or new, never zero."""
    mem[offset:offset + layout.size] = layout.pack(*values)


class Row(NamedTuple):
    load: float = 0
    pending: float = 0  # attempts in flight (max_connecting is counted over every worker)
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
    pending: int


class SharedTable:
    def __init__(self, workers: int, reals: int) -> None:
        self.workers = workers
        self.reals = reals
        self._mem = mmap.mmap(-1, max(1, workers * reals) * _ROW.size)  # MAP_SHARED

    def _offset(self, worker: int, real: int) -> int:
        return (worker * self.reals + real) * _ROW.size

    def publish(self, worker: int, real: int, row: Row) -> None:
        _store(self._mem, _ROW, self._offset(worker, real), *row)

    def row(self, worker: int, real: int) -> Row:
        return Row(*_ROW.unpack_from(self._mem, self._offset(worker, real)))

    def peers(self, worker: int, real: int) -> Peers:
        """What every worker but `worker` holds of `real`: summed, `failed_until` the latest.
        Called before each pick, so each row is unpacked once into plain floats (no `Row`)."""
        load = pending = consecutive = clients = until = 0.0
        mem, step = self._mem, self.reals * _ROW.size
        offset = real * _ROW.size
        for w in range(self.workers):
            if w != worker:
                row = _ROW.unpack_from(mem, offset + w * step)
                load += row[_LOAD]
                pending += row[_PENDING]
                consecutive += row[_CONSECUTIVE]
                clients += row[_CLIENTS]
                until = max(until, row[_UNTIL])
        return Peers(int(load), int(consecutive), int(clients), until, int(pending))

    def probe_failed(self, real: int) -> bool:
        """The probes' verdict on a real: only worker 0 runs probes (once per gateway, not
        once per worker), so its row is the one that says."""
        return _FIELD.unpack_from(self._mem, self._offset(0, real) + _PROBE_FAILED)[0] > 0

    def total(self, real: int, field: str) -> float:
        i = _SLOT[field]
        return sum(self.row(w, real)[i] for w in range(self.workers))

    def clear(self, worker: int) -> None:
        """A worker that died holds nothing any more: its connections died with it."""
        for real in range(self.reals):
            self.publish(worker, real, Row())


class RowWriter:
    """One worker's rows of a `SharedTable`, written only when they differ from what this
    writer wrote last.

    The gateway publishes after every engine run (about four per stream open), and most runs
    change one real of a farm, or none of its counters (a response read, a log line): the
    other reals' rows are the same values again. Comparing a tuple of numbers with the last
    one written costs less than packing it into the mapping, and the table's contents after
    each `write` are exactly what writing every row would leave, since only this worker
    writes its rows. A worker that starts (or is respawned after `clear`) starts with an
    empty writer, so its first write of each row always goes through."""

    __slots__ = ("_last", "_table", "_worker")

    def __init__(self, table: SharedTable, worker: int) -> None:
        self._table = table
        self._worker = worker
        self._last: dict[int, tuple[float, ...]] = {}

    def write(self, real: int, values: tuple[float, ...]) -> bool:
        """Publish `values` (the fields of `Row`, in order) as this worker's row for `real`
        unless they equal the last ones written there; True if written."""
        if self._last.get(real) == values:
            return False
        _store(self._table._mem, _ROW, self._table._offset(self._worker, real), *values)
        self._last[real] = values
        return True



# --- what the operator changed at run time, and reloads -----------------------------------

_ADMIN_HEAD = struct.Struct("d")  # generation
_ADMIN_REAL = struct.Struct("3d")  # set (1.0: an operator command holds it), inservice, drain wall
_ADMIN_VSERVER = struct.Struct("3d")  # set, inservice, drain wall
_SLOT_HEAD = struct.Struct("2q")  # generation, length
CONFIG_SLOT_BYTES = 4 << 20


class RowMap:
    """Which row of the shared tables each real and vserver has, stable across reloads.

    Keys are (farm, real address) and vserver names. Rows are handed out in config order and
    never reused, so every worker, each extending its own copy with the same sequence of
    configs (a respawned worker inherits the master's copy at fork), agrees with the others.
    """

    def __init__(self, real_capacity: int, vserver_capacity: int) -> None:
        self.real_capacity = real_capacity
        self.vserver_capacity = vserver_capacity
        self.reals: dict[tuple[str, str], int] = {}
        self.vservers: dict[str, int] = {}

    def missing(self, config: Any) -> int:
        """How many rows `config` needs beyond the free ones (0: it fits)."""
        new_reals = {(f.name, str(r.address)) for f in config.serverfarms for r in f.reals}
        new_vservers = {v.name for v in config.vservers}
        over_reals = len(self.reals) + len(new_reals - self.reals.keys()) - self.real_capacity
        over_vs = len(self.vservers) + len(new_vservers - self.vservers.keys()) \
            - self.vserver_capacity
        return max(0, over_reals, over_vs)

    def assign(self, config: Any) -> None:
        for farm in config.serverfarms:
            for real in farm.reals:
                self.reals.setdefault((farm.name, str(real.address)), len(self.reals))
        for vserver in config.vservers:
            self.vservers.setdefault(vserver.name, len(self.vservers))


class AdminTable:
    """Operator commands (`real ... no-inservice`, `vserver ...`) for every worker.

    Worker 0 serves the control socket and writes here; every worker applies what it reads
    when the generation moves. A drain deadline is wall-clock time because the workers'
    loop clocks need not agree; each turns it into its own clock on reading.
    """

    def __init__(self, reals: int, vservers: int) -> None:
        self.reals = reals
        self.vservers = vservers
        size = _ADMIN_HEAD.size + reals * _ADMIN_REAL.size + vservers * _ADMIN_VSERVER.size
        self._mem = mmap.mmap(-1, size)

    def generation(self) -> int:
        return int(_ADMIN_HEAD.unpack_from(self._mem, 0)[0])

    def _bump(self) -> None:
        _store(self._mem, _ADMIN_HEAD, 0, self.generation() + 1)

    def set_real(self, row: int, inservice: bool, drain_wall: float | None) -> None:
        _store(self._mem, _ADMIN_REAL, _ADMIN_HEAD.size + row * _ADMIN_REAL.size,
                              1.0, float(inservice), drain_wall or 0.0)
        self._bump()

    def real(self, row: int) -> tuple[bool, float | None] | None:
        """(inservice, drain wall-clock deadline) if an operator set it, else None."""
        held, inservice, drain = _ADMIN_REAL.unpack_from(
            self._mem, _ADMIN_HEAD.size + row * _ADMIN_REAL.size)
        return (inservice > 0, drain or None) if held else None

    def clear_real(self, row: int) -> None:
        """A reload whose file changes the real's `inservice` takes it back from the operator."""
        _store(self._mem, _ADMIN_REAL, _ADMIN_HEAD.size + row * _ADMIN_REAL.size, 0, 0, 0)
        self._bump()

    def _vserver_offset(self, row: int) -> int:
        return _ADMIN_HEAD.size + self.reals * _ADMIN_REAL.size + row * _ADMIN_VSERVER.size

    def set_vserver(self, row: int, inservice: bool, drain_wall: float | None) -> None:
        _store(self._mem, _ADMIN_VSERVER, self._vserver_offset(row), 1.0, float(inservice),
                                 drain_wall or 0.0)
        self._bump()

    def vserver(self, row: int) -> tuple[bool, float | None] | None:
        held, inservice, drain = _ADMIN_VSERVER.unpack_from(self._mem, self._vserver_offset(row))
        return (inservice > 0, drain or None) if held else None

    def clear_vserver(self, row: int) -> None:
        _store(self._mem, _ADMIN_VSERVER, self._vserver_offset(row), 0, 0, 0)
        self._bump()


class ConfigSlot:
    """The config the master checked and resolved on SIGHUP, for the workers to apply.

    The `Config` itself is passed (pickled), not the path or the text: every worker applies
    the very config the master checked, secrets read by the master included, even if the
    operator edits the file or the secret again a moment later. Only the master writes it,
    into memory made before the fork."""

    def __init__(self) -> None:
        self._mem = mmap.mmap(-1, CONFIG_SLOT_BYTES)

    def write(self, config: Config) -> int:
        data = pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) > CONFIG_SLOT_BYTES - _SLOT_HEAD.size:
            raise ValueError(f"config larger than {CONFIG_SLOT_BYTES >> 20} MiB")
        generation = self.generation() + 1
        self._mem[_SLOT_HEAD.size:_SLOT_HEAD.size + len(data)] = data
        _store(self._mem, _SLOT_HEAD, 0, generation, len(data))
        return generation

    def generation(self) -> int:
        return _SLOT_HEAD.unpack_from(self._mem, 0)[0]

    def read(self) -> tuple[int, Config | None]:
        """(generation, the config); None before the first write."""
        generation, length = _SLOT_HEAD.unpack_from(self._mem, 0)
        if not length:
            return generation, None
        data = bytes(self._mem[_SLOT_HEAD.size:_SLOT_HEAD.size + length])
        return generation, pickle.loads(data)


@dataclass(slots=True)
class WorkerShared:
    """What the workers of one gateway share, made by the master before it forks."""

    table: SharedTable
    admin: AdminTable
    slot: ConfigSlot
    rows: RowMap


def make_shared(config: Config, workers: int) -> WorkerShared:
    """Tables with room for reals and vservers that reloads add (rows are never reused)."""
    reals = sum(len(f.reals) for f in config.serverfarms)
    rows = RowMap(max(256, 4 * reals), max(64, 4 * len(config.vservers)))
    rows.assign(config)
    return WorkerShared(SharedTable(workers, rows.real_capacity),
                        AdminTable(rows.real_capacity, rows.vserver_capacity), ConfigSlot(),
                        rows)
