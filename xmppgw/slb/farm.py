"""The balancing engine: serverfarms of reals, pure, with the clock passed in.

The asyncio layer asks `farm.pick(client, now, tried)` for a real and reports each outcome
(`connected`, `failed`, `closed`); the engine alone changes states and counters. No sockets
and no sleeps here, so failure timelines are tested on a fake clock.

This first version picks round-robin among reals in service and keeps the counters;
predictors, faildetect, retry and slow start (Cisco IOS SLB semantics) build on this seam.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from xmppgw.config import RealConfig, ServerfarmConfig


class RealState(StrEnum):
    """The states `show ip slb reals` prints, in IOS's words."""

    OPERATIONAL = "OPERATIONAL"
    OUTOFSERVICE = "OUTOFSERVICE"
    FAILED = "FAILED"
    TESTING = "TESTING"
    MAXCONNS = "MAXCONNS"
    PROBE_FAILED = "PROBE_FAILED"


@dataclass(slots=True, eq=False)
class Real:
    """One backend server of a farm, with its live counters."""

    config: RealConfig
    state: RealState = RealState.OPERATIONAL
    active: int = 0
    total: int = 0
    failed_attempts: int = 0
    last_change: float = 0.0
    history: list[tuple[float, RealState, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.config.address)

    def endpoint(self, vserver_port: int) -> tuple[str, int]:
        return self.config.address.with_port(vserver_port)

    def set_state(self, state: RealState, now: float, reason: str) -> None:
        if state is not self.state:
            self.state = state
            self.last_change = now
            self.history.append((now, state, reason))


class Serverfarm:
    """A named group of reals that one or more vservers send connections to."""

    def __init__(self, config: ServerfarmConfig, now: float = 0.0) -> None:
        self.config = config
        self.reals = [
            Real(r, RealState.OPERATIONAL if r.inservice else RealState.OUTOFSERVICE,
                 last_change=now)
            for r in config.reals
        ]
        self._next = 0

    @property
    def name(self) -> str:
        return self.config.name

    def available(self, real: Real) -> bool:
        if real.state is not RealState.OPERATIONAL:
            return False
        limit = real.config.maxconns
        return limit is None or real.active < limit

    def pick(self, client: str, now: float, tried: frozenset[Real] = frozenset()) -> Real | None:
        """The next real for a new connection from `client`, or None if none can take it.

        `tried` holds reals this connection already failed on, so a reassign never returns
        to them.
        """
        n = len(self.reals)
        for offset in range(n):
            real = self.reals[(self._next + offset) % n]
            if real not in tried and self.available(real):
                self._next = (self._next + offset + 1) % n
                return real
        return None

    def connected(self, real: Real, client: str, now: float) -> None:
        real.active += 1
        real.total += 1

    def failed(self, real: Real, client: str, now: float, reason: str) -> None:
        real.failed_attempts += 1

    def closed(self, real: Real, now: float) -> None:
        real.active -= 1
