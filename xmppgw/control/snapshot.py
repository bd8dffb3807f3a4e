"""What a running gateway shows of itself: one typed snapshot for `show`, metrics and `--json`.

The gateway (`net/view.py`) takes a `GatewaySnapshot`; `control/show.py` formats it in IOS's
layout, `metrics.StateCollector` turns it into Prometheus families, and the control socket
carries `to_json()` to the CLI, which reads it back with `from_json()`. `to_json()` is the
dict shape `xmppgw show --json` has always printed (same keys, same order; a real's
`drain_end` and `drain_left` were added after `state_age`); `from_json()` takes that shape
and fills what an older or partial one leaves out with quiet defaults.

Pure data: frozen dataclasses, no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ProbeSnapshot:
    """One active probe of a real (`health.state.ProbeState.describe`)."""

    type: str
    port: int
    verdict: str  # "up" or "down"
    last_result: str | None = None  # "ok", "failed", or None before the first run
    last_error: str | None = None
    last_rtt: float | None = None  # seconds
    last_change: str | None = None  # ISO 8601, UTC
    last_change_age: float | None = None  # seconds
    runs: int = 0
    implicit: bool = False  # the tcp probe the gateway adds to a farm published in SRV

    def to_json(self) -> Json:
        return {"type": self.type, "implicit": self.implicit, "port": self.port,
                "verdict": self.verdict, "last_result": self.last_result,
                "last_error": self.last_error, "last_rtt": self.last_rtt,
                "last_change": self.last_change, "last_change_age": self.last_change_age,
                "runs": self.runs}

    @classmethod
    def from_json(cls, data: Json) -> ProbeSnapshot:
        return cls(type=data["type"], port=data["port"], verdict=data["verdict"],
                   last_result=data.get("last_result"), last_error=data.get("last_error"),
                   last_rtt=data.get("last_rtt"), last_change=data.get("last_change"),
                   last_change_age=data.get("last_change_age"), runs=data.get("runs", 0),
                   implicit=bool(data.get("implicit", False)))


@dataclass(frozen=True, slots=True)
class RealSnapshot:
    """One real of a farm. Counters are summed over the workers."""

    address: str
    weight: int
    state: str  # a RealState value: OPERATIONAL, FAILED, ...
    conns: int
    total: int = 0
    failed_attempts: int = 0
    reassigns: int = 0
    state_age: float = 0.0  # seconds since the last state change
    connecting: int = 0  # attempts in flight (this worker)
    max_connecting: int = 0  # 0: no limit
    probes: tuple[ProbeSnapshot, ...] = ()
    # Out of service with `--drain`: when its streams are closed (ISO 8601, UTC) and the
    # seconds left until then (0 once passed); None when no drain is set.
    drain_end: str | None = None
    drain_left: float | None = None

    def to_json(self) -> Json:
        return {"address": self.address, "weight": self.weight, "state": self.state,
                "conns": self.conns, "connecting": self.connecting,
                "max_connecting": self.max_connecting, "total": self.total,
                "failed_attempts": self.failed_attempts, "reassigns": self.reassigns,
                "state_age": self.state_age, "drain_end": self.drain_end,
                "drain_left": self.drain_left, "probes": [p.to_json() for p in self.probes]}

    @classmethod
    def from_json(cls, data: Json) -> RealSnapshot:
        return cls(address=data["address"], weight=data["weight"], state=data["state"],
                   conns=data["conns"], total=data.get("total", 0),
                   failed_attempts=data.get("failed_attempts", 0),
                   reassigns=data.get("reassigns", 0), state_age=data.get("state_age", 0.0),
                   connecting=data.get("connecting", 0),
                   max_connecting=data.get("max_connecting") or 0,
                   drain_end=data.get("drain_end"), drain_left=data.get("drain_left"),
                   probes=tuple(ProbeSnapshot.from_json(p) for p in data.get("probes", [])))


@dataclass(frozen=True, slots=True)
class FarmSnapshot:
    """One serverfarm: its panic and queue, and its reals."""

    name: str
    predictor: str
    nat: str
    virtuals_inservice: int
    reals: tuple[RealSnapshot, ...] = ()
    panic: bool = False
    available: int = 0  # reals in service that are OPERATIONAL or TESTING
    inservice: int = 0
    panic_threshold: int = 0
    queue: int = 0  # connections waiting now (this worker)
    queued_total: int = 0
    queue_timeouts: int = 0

    @property
    def conns(self) -> int:
        return sum(r.conns for r in self.reals)

    def to_json(self) -> Json:
        return {"name": self.name, "predictor": self.predictor, "nat": self.nat,
                "virtuals_inservice": self.virtuals_inservice, "panic": self.panic,
                "available": self.available, "inservice": self.inservice,
                "panic_threshold": self.panic_threshold, "queue": self.queue,
                "queued_total": self.queued_total, "queue_timeouts": self.queue_timeouts,
                "reals": [r.to_json() for r in self.reals]}

    @classmethod
    def from_json(cls, data: Json) -> FarmSnapshot:
        return cls(name=data["name"], predictor=data["predictor"], nat=data["nat"],
                   virtuals_inservice=data["virtuals_inservice"],
                   reals=tuple(RealSnapshot.from_json(r) for r in data.get("reals", [])),
                   panic=bool(data.get("panic", False)), available=data.get("available", 0),
                   inservice=data.get("inservice", 0),
                   panic_threshold=data.get("panic_threshold", 0),
                   queue=data.get("queue", 0), queued_total=data.get("queued_total", 0),
                   queue_timeouts=data.get("queue_timeouts", 0))


@dataclass(frozen=True, slots=True)
class VserverSnapshot:
    name: str
    virtual: str
    mode: str
    serverfarm: str | None
    inservice: bool  # listening now
    conns: int  # this worker's

    def to_json(self) -> Json:
        return {"name": self.name, "virtual": self.virtual, "mode": self.mode,
                "serverfarm": self.serverfarm, "inservice": self.inservice,
                "conns": self.conns}

    @classmethod
    def from_json(cls, data: Json) -> VserverSnapshot:
        return cls(name=data["name"], virtual=data["virtual"], mode=data["mode"],
                   serverfarm=data.get("serverfarm"), inservice=bool(data["inservice"]),
                   conns=data.get("conns", 0))


@dataclass(frozen=True, slots=True)
class ConnSnapshot:
    """One client connection, for `show conns`."""

    vserver: str
    client: str
    real: str | None
    kind: str | None
    to: str | None
    state: str
    age: float  # seconds since accept

    def to_json(self) -> Json:
        return {"vserver": self.vserver, "client": self.client, "real": self.real,
                "kind": self.kind, "to": self.to, "state": self.state, "age": self.age}

    @classmethod
    def from_json(cls, data: Json) -> ConnSnapshot:
        return cls(vserver=data["vserver"], client=data["client"], real=data.get("real"),
                   kind=data.get("kind"), to=data.get("to"), state=data["state"],
                   age=data["age"])


@dataclass(frozen=True, slots=True)
class GatewaySnapshot:
    """Every vserver, farm and real; the connections only when asked for (`show conns`)."""

    vservers: tuple[VserverSnapshot, ...] = ()
    serverfarms: tuple[FarmSnapshot, ...] = ()
    conns: tuple[ConnSnapshot, ...] | None = None
    conns_note: str | None = None  # with workers: whose connections these are

    def reals(self) -> list[tuple[FarmSnapshot, RealSnapshot]]:
        """Every real with its farm, farm by farm."""
        return [(farm, real) for farm in self.serverfarms for real in farm.reals]

    def to_json(self) -> Json:
        data: Json = {"vservers": [v.to_json() for v in self.vservers],
                      "serverfarms": [f.to_json() for f in self.serverfarms]}
        if self.conns is not None:
            data["conns"] = [c.to_json() for c in self.conns]
        if self.conns_note is not None:
            data["conns_note"] = self.conns_note
        return data

    @classmethod
    def from_json(cls, data: Json) -> GatewaySnapshot:
        conns = data.get("conns")
        return cls(vservers=tuple(VserverSnapshot.from_json(v) for v in data.get("vservers", [])),
                   serverfarms=tuple(FarmSnapshot.from_json(f)
                                     for f in data.get("serverfarms", [])),
                   conns=None if conns is None else tuple(ConnSnapshot.from_json(c)
                                                          for c in conns),
                   conns_note=data.get("conns_note"))


def typed(snapshot: GatewaySnapshot | Json) -> GatewaySnapshot:
    """A snapshot as it came (typed), or read from its JSON shape."""
    return snapshot if isinstance(snapshot, GatewaySnapshot) else GatewaySnapshot.from_json(
        snapshot)
