"""The balancing engine's types, apart from its logic (as HAProxy's `server-t.h`).

`farm.py` (the rules) and `predictors.py` (the choice) both import these and never each
other. A real's state is two fields: the administrative one (`inservice`, the operator's
or the file's word) and the operational one (`oper_state`: OPERATIONAL, TESTING, FAILED or
PROBE_FAILED, as the engine last worked it out). What `show` prints adds MAXCONNS, which is
computed from the load and never recorded (`Serverfarm.state`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple, Protocol

from xmppgw.slb.closes import CloseBurst

if TYPE_CHECKING:
    from xmppgw.config import RealConfig


class RealState(StrEnum):
    """The states `show ip slb reals` prints, in IOS's words."""

    OPERATIONAL = "OPERATIONAL"
    OUTOFSERVICE = "OUTOFSERVICE"
    FAILED = "FAILED"
    TESTING = "TESTING"
    MAXCONNS = "MAXCONNS"
    PROBE_FAILED = "PROBE_FAILED"


# States from which a return to OPERATIONAL starts the slow-start ramp.
NOT_SERVING = frozenset(
    {RealState.FAILED, RealState.TESTING, RealState.OUTOFSERVICE, RealState.PROBE_FAILED})

# Reals that count as available for panic mode (MAXCONNS is shown, never recorded).
AVAILABLE = frozenset({RealState.OPERATIONAL, RealState.TESTING})


class DoubleReport(RuntimeError):
    """An attempt or a connection reported ended twice (or never started): a caller bug.

    The engine raises rather than clamp its counters at zero, which would hide the bug and
    skew every later pick."""


@dataclass(frozen=True, slots=True)
class StateChange:
    """One state change of one real, for the log."""

    time: float
    farm: str
    real: str
    old: RealState
    new: RealState
    reason: str


@dataclass(frozen=True, slots=True)
class PanicChange:
    """The farm entered (`panic`) or left panic mode; `available` of `inservice` reals."""

    time: float
    farm: str
    panic: bool
    available: int
    inservice: int
    threshold: int


@dataclass(frozen=True, slots=True)
class MassClose:
    """A real closed `closes` of its streams from its own side within `window` seconds,
    of the `held` it had before them, `still_open` left now: it is going away. `failed`: it
    was marked FAILED for it; else it was kept as the last available real of the farm."""

    time: float
    farm: str
    real: str
    closes: int
    held: int
    still_open: int
    window: float
    failed: bool


@dataclass(slots=True, eq=False, repr=False)
class Real:
    """One backend server of a farm: its config, its two states, live counters."""

    config: RealConfig
    standby: bool = False
    inservice: bool = True  # administrative: `inservice` / `no inservice`
    probe_failed: bool = False  # the active probes' verdict
    oper_state: RealState = RealState.OPERATIONAL  # operational, as of the last sync
    active: int = 0  # connections the real owns now
    pending: int = 0  # attempts picked and not yet ended
    total: int = 0  # successful connections since start
    failed_attempts: int = 0
    reassigns: int = 0  # client connections moved away from this real after a failed attempt
    consecutive_failures: int = 0
    failed_clients: set[str] = field(default_factory=set)
    retry_at: float | None = None  # set while FAILED: when it becomes TESTING
    ramp_start: float | None = None  # slow start began here
    drain_deadline: float | None = None
    last_change: float = 0.0
    server_closes: CloseBurst = field(default_factory=CloseBurst)  # its own recent closes
    # The other workers of the same gateway (workers > 1), as the I/O layer last read them
    # from the shared table (`Serverfarm.observe_peers`); zero with one worker.
    peer_load: int = 0
    peer_pending: int = 0
    peer_consecutive_failures: int = 0
    peer_failed_clients: int = 0
    peer_failed_until: float = 0.0

    @property
    def name(self) -> str:
        return str(self.config.address)

    @property
    def weight(self) -> int:
        return self.config.weight

    @property
    def recorded_state(self) -> RealState:
        """What the last `StateChange` said: OUTOFSERVICE while administratively out,
        else the operational state. MAXCONNS is never recorded (see `Serverfarm.state`)."""
        return self.oper_state if self.inservice else RealState.OUTOFSERVICE

    @property
    def load(self) -> int:
        """What leastconns and maxconns count: owned connections plus attempts in flight,
        over every worker of the gateway."""
        return self.active + self.pending + self.peer_load

    @property
    def connecting(self) -> int:
        """Attempts in flight to this real over every worker of the gateway."""
        return self.pending + self.peer_pending

    def endpoint(self, vserver_port: int) -> tuple[str, int]:
        return self.config.address.with_port(vserver_port)

    def has_room(self) -> bool:
        """Below `maxconns` (IOS "Maximum Connections"): at the limit the real is skipped
        and shown MAXCONNS until one of its connections ends."""
        limit = self.config.maxconns
        return limit is None or self.load < limit

    def __repr__(self) -> str:  # short, for logs and test failures
        return (f"<Real {self.name} {self.recorded_state} active={self.active}"
                f" pending={self.pending}>")


class Candidate(NamedTuple):
    """A real a predictor may choose, with what it weighs now (slow start applied) and its
    load; the farm has already filtered out what must not be picked."""

    real: Real
    weight: float
    load: int


class Waiter(Protocol):
    """A client connection in the queue (a ConnectPlan): what it may still try."""

    tried: frozenset[Real]
    last_resort: bool
