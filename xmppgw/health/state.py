"""Probe scheduling and rise/fall counting, pure: no sockets, no clock, no logging.

The runner asks `HealthSchedule.start_due(now)` which probes to start, runs them, and reports
each result with `finish(probe, outcome, now)`, which says whether the probe's verdict or the
real's verdict changed. So the rules are tested on a fake clock:

- **No pile-up.** A probe that is still running is never started again, however late it is.
  The next run is due `interval` after the previous one *started* (a steady beat whatever a
  probe costs), or at once when the previous run took longer than that; never two at a time.
- **rise / fall.** A probe starts *up*, as the real starts in service (HAProxy does the
  same): `fall` failed runs in a row take it down, `rise` successful runs in a row bring it
  back. A result that agrees with the verdict clears the streak, so results that alternate
  never flip it.
- **The real's verdict.** A real with several probes is up only while every one of them is
  up (IOS SLB: every probe of a farm must pass).
- **Spread.** The first runs are spread over one interval, so a gateway with many reals does
  not open every probe connection in the same millisecond.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xmppgw.config import ProbeConfig, ServerfarmConfig


@dataclass(frozen=True, slots=True)
class Outcome:
    """One probe run. `rtt` is the ping round trip for `xmpp-ping`, the time to the stream
    features for `xmpp-stream`, the TCP handshake for `tcp` (seconds)."""

    ok: bool
    error: str | None = None
    rtt: float | None = None


@dataclass(frozen=True, slots=True)
class ProbeChange:
    """A probe's verdict flipped (logged once, as a `probe` line; not every run is)."""

    time: float
    farm: str
    real: str
    probe: str  # type, as the config says it
    port: int
    up: bool
    error: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class RealVerdict:
    """Every probe of the real up (`ok`), or one at least down: `Serverfarm.probe_result`."""

    time: float
    farm: str
    real: str
    ok: bool


class ProbeState:
    """One probe of one real: when it runs next, its streak, its last result."""

    def __init__(self, config: ProbeConfig, farm: str, real: str, port: int,
                 first_due: float) -> None:
        self.config = config
        self.farm = farm
        self.real = real
        self.port = port
        self.up = True
        self.streak = 0  # consecutive results that disagree with the verdict
        self.next_due = first_due
        self.running_since: float | None = None
        self.runs = 0
        self.last: Outcome | None = None
        self.last_time: float | None = None
        self.last_change: float | None = None  # when the verdict last flipped
        self.last_rtt: float | None = None  # the last successful run's

    @property
    def type(self) -> str:
        return self.config.type

    @property
    def running(self) -> bool:
        return self.running_since is not None

    def due(self, now: float) -> bool:
        return self.running_since is None and now >= self.next_due

    def start(self, now: float) -> None:
        if self.running_since is not None:
            raise RuntimeError(f"probe {self.type} of {self.real} is already running")
        self.running_since = now

    def finish(self, outcome: Outcome, now: float) -> ProbeChange | None:
        """Count the result; the verdict change it causes, if any."""
        if self.running_since is None:
            raise RuntimeError(f"probe {self.type} of {self.real} finished but never started")
        self.next_due = max(self.running_since + self.config.interval, now)
        self.running_since = None
        self.runs += 1
        self.last, self.last_time = outcome, now
        if outcome.ok:
            self.last_rtt = outcome.rtt
        if outcome.ok is self.up:
            self.streak = 0
            return None
        self.streak += 1
        need = self.config.rise if outcome.ok else self.config.fall
        if self.streak < need:
            return None
        self.up, self.streak, self.last_change = outcome.ok, 0, now
        if outcome.ok:
            reason = f"rise {need}: {need} successful probes in a row"
        else:
            reason = f"fall {need}: {need} failed probes in a row"
        return ProbeChange(now, self.farm, self.real, self.type, self.port, outcome.ok,
                           outcome.error, reason)

    def describe(self, now: float, wall: float) -> dict[str, Any]:
        """Plain data for `show` and `--json`; `wall` is the Unix time that `now` stands for."""
        last = self.last
        return {
            "type": self.type,
            "implicit": self.config.implicit,  # the tcp probe of a farm published in SRV
            "port": self.port,
            "verdict": "up" if self.up else "down",
            "last_result": None if last is None else ("ok" if last.ok else "failed"),
            "last_error": None if last is None or last.ok else last.error,
            "last_rtt": None if self.last_rtt is None else round(self.last_rtt, 6),
            "last_change": None if self.last_change is None else _iso(
                wall - (now - self.last_change)),
            "last_change_age": None if self.last_change is None else round(
                now - self.last_change, 3),
            "runs": self.runs,
        }


class RealHealth:
    """The probes of one real, and the verdict they give together."""

    def __init__(self, farm: str, real: str, probes: list[ProbeState]) -> None:
        self.farm = farm
        self.real = real
        self.probes = probes

    @property
    def ok(self) -> bool:
        return all(p.up for p in self.probes)

    def finish(self, probe: ProbeState, outcome: Outcome,
               now: float) -> tuple[ProbeChange | None, RealVerdict | None]:
        before = self.ok
        change = probe.finish(outcome, now)
        after = self.ok
        verdict = None if after is before else RealVerdict(now, self.farm, self.real, after)
        return change, verdict


class HealthSchedule:
    """Every probe of every real of a gateway, and which of them is due when."""

    def __init__(self, farms: Iterable[ServerfarmConfig], now: float) -> None:
        self.reals: list[RealHealth] = []
        planned = [(farm, real, probe) for farm in farms for real in farm.reals
                   for probe in farm.probes_for(real)]
        by_real: dict[tuple[str, str], list[ProbeState]] = {}
        for i, (farm, real, probe) in enumerate(planned):
            first_due = now + probe.interval * i / len(planned)
            state = ProbeState(probe, farm.name, str(real.address),
                               probe.port_for(real.address), first_due)
            key = (farm.name, str(real.address))
            if key not in by_real:
                by_real[key] = []
                self.reals.append(RealHealth(farm.name, key[1], by_real[key]))
            by_real[key].append(state)
        self._owner = {id(p): r for r in self.reals for p in r.probes}

    @property
    def probes(self) -> list[ProbeState]:
        return [p for r in self.reals for p in r.probes]

    def __bool__(self) -> bool:
        return bool(self.reals)

    def real(self, farm: str, real: str) -> RealHealth | None:
        return next((r for r in self.reals if r.farm == farm and r.real == real), None)

    def start_due(self, now: float) -> list[ProbeState]:
        """The probes to start now (marked running: a running probe is never due)."""
        due = [p for r in self.reals for p in r.probes if p.due(now)]
        for probe in due:
            probe.start(now)
        return due

    def next_wake(self) -> float | None:
        """When the next idle probe falls due; None if every probe is running (or none)."""
        return min((p.next_due for r in self.reals for p in r.probes if not p.running),
                   default=None)

    def finish(self, probe: ProbeState, outcome: Outcome,
               now: float) -> tuple[ProbeChange | None, RealVerdict | None]:
        return self._owner[id(probe)].finish(probe, outcome, now)


def _iso(unix: float) -> str:
    moment = datetime.datetime.fromtimestamp(unix, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
