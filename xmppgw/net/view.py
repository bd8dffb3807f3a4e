"""The running gateway read into a `GatewaySnapshot` (`control/snapshot.py`): what `show`,
`--json` and the metrics scrape all see. Counters are summed over the workers through the
shared table; vserver conns and `show conns` are this worker's."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from xmppgw.control.snapshot import (
    ConnSnapshot,
    FarmSnapshot,
    GatewaySnapshot,
    ProbeSnapshot,
    RealSnapshot,
    VserverSnapshot,
)

if TYPE_CHECKING:
    from xmppgw.net.core import GatewayCore
    from xmppgw.slb.farm import Real, Serverfarm


def take_snapshot(gw: GatewayCore, now: float, conns: bool = False) -> GatewaySnapshot:
    """Every vserver, farm and real at loop time `now`; with `conns`, the connections."""
    for farm in gw.farms.values():
        gw.sync_peers(farm)
    wall = time.time()
    counts: dict[str, int] = {}
    for session in gw.sessions:
        counts[session.vserver.name] = counts.get(session.vserver.name, 0) + 1
    vservers = tuple(VserverSnapshot(
        name=vs.name, virtual=str(vs.config.virtual), mode=vs.config.mode,
        serverfarm=vs.config.serverfarm, inservice=vs.server is not None,
        conns=counts.get(vs.name, 0)) for vs in gw.listeners.live())
    farms = tuple(_farm(gw, farm, now, wall) for farm in gw.farms.values())
    if not conns:
        return GatewaySnapshot(vservers, farms)
    note = (f"worker 0 of {gw.config.gateway.workers}: each worker holds its own connections"
            if gw.multi else None)
    return GatewaySnapshot(vservers, farms, connections(gw, now), note)


def _farm(gw: GatewayCore, farm: Serverfarm, now: float, wall: float) -> FarmSnapshot:
    users = [vs for vs in gw.listeners.listening() if (
        vs.config.serverfarm == farm.name
        or any(r.serverfarm == farm.name for r in vs.config.routes))]
    available, inservice = farm.availability()
    return FarmSnapshot(
        name=farm.name, predictor=farm.config.predictor, nat=farm.config.nat,
        virtuals_inservice=len(users), panic=farm.panic, available=available,
        inservice=inservice, panic_threshold=farm.config.panic_threshold,
        queue=len(farm.queue), queued_total=farm.queued_total,
        queue_timeouts=farm.queue_timeouts,
        reals=tuple(_real(gw, farm, real, now, wall) for real in farm.reals))


def _real(gw: GatewayCore, farm: Serverfarm, real: Real, now: float,
          wall: float) -> RealSnapshot:
    probes = () if gw.health is None else tuple(
        ProbeSnapshot.from_json(p) for p in gw.health.describe(farm.name, real.name, now, wall))
    return RealSnapshot(
        address=real.name, weight=real.config.weight, state=str(farm.state(real, now)),
        conns=gw.counter(real, "active"), connecting=real.connecting,
        max_connecting=real.config.max_connecting or farm.config.max_connecting,
        total=gw.counter(real, "total"), failed_attempts=gw.counter(real, "failed_attempts"),
        reassigns=gw.counter(real, "reassigns"), state_age=round(now - real.last_change, 3),
        probes=probes, **_drain(real, now, wall))


def _drain(real: Real, now: float, wall: float) -> dict[str, Any]:
    """The drain of a real out of service (`no-inservice --drain`): its end on the wall
    clock and the seconds left. The engine's deadline is on the loop clock `now`."""
    if real.inservice or real.drain_deadline is None:
        return {}
    left = real.drain_deadline - now
    end = datetime.fromtimestamp(wall + left, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"drain_end": end, "drain_left": round(max(0.0, left), 1)}


def connections(gw: GatewayCore, now: float) -> tuple[ConnSnapshot, ...]:
    """This worker's client connections, oldest first, for `show conns`."""
    return tuple(ConnSnapshot(vserver=s.vserver.name, client=s.client,
                              real=s.real.name if s.real else None, kind=s.conn.kind,
                              to=s.conn.domain, state=s.conn.state,
                              age=round(now - s.started, 1))
                 for s in sorted(gw.sessions, key=lambda s: s.started))
