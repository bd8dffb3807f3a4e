"""`xmppgw run --takeover`, the pure part: what the old gateway hands the new one, and which
listening socket goes to which vserver.

The handover message is one JSON line on the control socket, sent with the listening
sockets themselves as SCM_RIGHTS ancillary data (unix(7)); `net/takeover.py` does the I/O.
It carries, besides the sockets' addresses, the state a new process must not forget:

- the operator's word (`real ... inservice|no-inservice [--drain S]`, `vserver ...`), with
  a drain's end as wall-clock time, as the admin table holds it (`net/shared.py`);
- each real's health: the active probes' verdict (a PROBE_FAILED real stays PROBE_FAILED
  until its probes rise again) and passive failure detection (a FAILED real stays FAILED for
  the rest of its `retry`; partial faildetect counts are kept too);
- each real's state (OUTOFSERVICE included) and its age (seconds in it), so the new
  process takes the state over as it is: it logs it once as carried over
  (`real_state_carried`), not as a change, and `show` counts its time in the state on from
  the old process's;
- the farms in panic mode, so that a panic the old process was in is carried over too
  (`farm_panic_carried`), not logged again as a new one.

So no real looks healthy in the new process that did not in the old. The states ride in a
key of their own (`states`) beside the older `health` rows: a gateway that does not know
them reads the rest, in either direction of a takeover. What is not carried:
the counters `show` prints (total, failed attempts, reassigns start again from zero) and
the load of the streams the old process still relays (leastconns in the new process counts
only its own connections until the old one has exited).

No I/O and no clock here: times come in as arguments.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xmppgw.slb.types import RealState

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from xmppgw.config import VserverConfig
    from xmppgw.slb.farm import Serverfarm

VERSION = 1
MAX_SOCKETS = 250  # SCM_MAX_FD is 253 on Linux: one message carries at most that many fds


class HandoverError(ValueError):
    """A handover message that this version cannot read (or that is not one)."""


Admin = tuple[bool, float | None]  # (inservice, drain end as wall-clock time) if held


# What an engine records as a real's state (MAXCONNS is shown, never recorded).
RECORDED_STATES = frozenset({RealState.OPERATIONAL, RealState.TESTING, RealState.FAILED,
                             RealState.PROBE_FAILED, RealState.OUTOFSERVICE})


@dataclass(frozen=True, slots=True)
class RealHealth:
    """One real's health as the old process saw it. `retry_left`: seconds until a FAILED
    real becomes TESTING (0: TESTING already; None: not failed). `state`: its state as the
    old process recorded it, in it for `age` seconds (None from a gateway that does not
    send them)."""

    farm: str
    real: str
    probe_failed: bool = False
    retry_left: float | None = None
    consecutive_failures: int = 0
    failed_clients: tuple[str, ...] = ()
    state: RealState | None = None
    age: float | None = None

    def has_counts(self) -> bool:
        """Anything beyond the state to carry (a `health` row of the message)."""
        return bool(self.probe_failed or self.retry_left is not None
                    or self.consecutive_failures or self.failed_clients)


@dataclass(frozen=True, slots=True)
class Handover:
    """What the old process sends with its listening sockets (in `listeners` order)."""

    pid: int
    listeners: tuple[tuple[str, str, int], ...]  # (vserver, host, port), one per socket sent
    real_admin: Mapping[tuple[str, str], Admin] = field(default_factory=dict)
    vserver_admin: Mapping[str, Admin] = field(default_factory=dict)
    health: tuple[RealHealth, ...] = ()
    panic: tuple[str, ...] = ()  # the farms in panic mode

    def encode(self) -> bytes:
        """One JSON line."""
        data = {
            "version": VERSION, "pid": self.pid,
            "listeners": [list(item) for item in self.listeners],
            "real_admin": [[farm, real, inservice, drain]
                           for (farm, real), (inservice, drain) in self.real_admin.items()],
            "vserver_admin": [[name, inservice, drain]
                              for name, (inservice, drain) in self.vserver_admin.items()],
            "health": [[h.farm, h.real, h.probe_failed, h.retry_left, h.consecutive_failures,
                        list(h.failed_clients)] for h in self.health if h.has_counts()],
            "states": [[h.farm, h.real, str(h.state), h.age] for h in self.health
                       if h.state is not None and h.age is not None],
            "panic": list(self.panic),
        }
        return json.dumps(data, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes | str) -> Handover:
        """The message `encode` made; HandoverError if it is not one this version reads."""
        try:
            data = json.loads(line)
            if not isinstance(data, dict) or data.get("version") != VERSION:
                raise HandoverError(f"not a version {VERSION} handover message")
            return cls(
                pid=int(data["pid"]),
                listeners=tuple((str(n), str(h), int(p)) for n, h, p in data["listeners"]),
                real_admin={(str(f), str(r)): (bool(i), _wall(d))
                            for f, r, i, d in data["real_admin"]},
                vserver_admin={str(n): (bool(i), _wall(d)) for n, i, d in data["vserver_admin"]},
                health=_health(data["health"], data.get("states", [])),
                panic=tuple(str(name) for name in data.get("panic", [])))
        except HandoverError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise HandoverError(f"a handover message this version cannot read: {exc}") from None


def _wall(value: Any) -> float | None:
    return None if value is None else float(value)


def _health(rows: list[Any], states: list[Any]) -> tuple[RealHealth, ...]:
    """The `health` rows joined with the `states` rows, by (farm, real), in message order.
    A state this version does not know is dropped (the real's state is then worked out
    from the rest, as from a gateway that sends none)."""
    out: dict[tuple[str, str], RealHealth] = {}
    for f, r, pf, left, cf, fc in rows:
        out[(str(f), str(r))] = RealHealth(str(f), str(r), bool(pf), _wall(left), int(cf),
                                           tuple(str(c) for c in fc))
    for f, r, state, age in states:
        if state not in RECORDED_STATES or age is None:
            continue
        key = (str(f), str(r))
        known = out.get(key, RealHealth(*key))
        out[key] = dataclasses.replace(known, state=RealState(state), age=max(0.0, float(age)))
    return tuple(out.values())


# --- which socket for which vserver ------------------------------------------------------------


def address_key(host: str, port: int) -> tuple[str, int]:
    """An address as both sides compare it: IPv6 written one way (`::1`, not `0:0::1`)."""
    try:
        host = ipaddress.ip_address(host.strip("[]").split("%")[0]).compressed
    except ValueError:
        pass
    return host, int(port)


@dataclass(frozen=True, slots=True)
class SocketPlan:
    """`adopt`: vserver name -> index of the received socket it listens on; `bind`: the
    vservers with no socket received (new ones, or moved to another address): they bind
    their own; `close`: received sockets no vserver of the new config listens on (the new
    process closes its copy; the old one closes its own when it stops accepting, and the
    port is closed)."""

    adopt: dict[str, int]
    bind: tuple[str, ...]
    close: tuple[int, ...]


def plan_sockets(offered: Iterable[tuple[str, int]],
                 vservers: Iterable[VserverConfig]) -> SocketPlan:
    """Match the received sockets (their bound addresses, in order) to the new config's
    vservers by address and port. A socket bound to the address a vserver listens on is
    that vserver's whatever its name or mode was before (a renamed vserver keeps its
    listening socket, and so the connections waiting in its accept queue)."""
    index = {address_key(h, p): i for i, (h, p) in enumerate(offered)}
    adopt: dict[str, int] = {}
    bind: list[str] = []
    for vs in vservers:
        i = index.pop(address_key(vs.virtual.host, vs.virtual.port or 0), None)
        if i is None:
            bind.append(vs.name)
        else:
            adopt[vs.name] = i
    return SocketPlan(adopt, tuple(bind), tuple(sorted(index.values())))


# --- the engine's state, out and in ------------------------------------------------------------


def farm_health(farms: Iterable[Serverfarm], now: float) -> tuple[RealHealth, ...]:
    """Each real's health at loop time `now`, for the message: its recorded state and the
    state's age, and its probe verdict and faildetect counts if it has any. The farms'
    states are brought up to `now` first (a retry that elapsed makes TESTING; that change
    is recorded here as it would be anyway)."""
    out = []
    for farm in farms:
        farm.refresh(now)
        for real in farm.reals:
            left = None if real.retry_at is None else max(0.0, real.retry_at - now)
            out.append(RealHealth(farm.name, real.name, real.probe_failed, left,
                                  real.consecutive_failures,
                                  tuple(sorted(real.failed_clients)), real.recorded_state,
                                  max(0.0, now - real.last_change)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Restored:
    """What `restore_health` did. `probe_down`: (farm, real) restored PROBE_FAILED, whose
    probes must start *down* (`rise` good runs bring them back, as in the old process).
    `carried`: (farm, real, state, age in seconds) of each real whose state other than
    OPERATIONAL was taken over as it was, for the caller to log once. `panic_carried`:
    (farm, available, in service, threshold) of each farm in panic mode in both processes,
    for the caller to log once as carried over (a panic that began or ended on the way is
    a change the engine records)."""

    probe_down: list[tuple[str, str]] = field(default_factory=list)
    carried: list[tuple[str, str, RealState, float]] = field(default_factory=list)
    panic_carried: list[tuple[str, int, int, int]] = field(default_factory=list)


def restore_health(farms: Mapping[str, Serverfarm], health: Iterable[RealHealth],
                   now: float, admin: Mapping[tuple[str, str], Admin] | None = None,
                   panic: Iterable[str] = ()) -> Restored:
    """Put the old process's view of each real into the new engine (loop time `now`); a
    real gone from the new config is skipped. `admin`: the operator's word on reals,
    (inservice, seconds left of a drain or None) by (farm, real), as the new process holds
    it. A carried state is no change in the new engine (`Serverfarm.restore`): only what
    changed on the way is recorded as one. `panic`: the farms in panic mode in the old
    process; each farm's mode is worked out once every real is restored."""
    out = Restored()
    for h in health:
        farm = farms.get(h.farm)
        real = None if farm is None else farm.find(h.real)
        if farm is None or real is None:
            continue
        inservice, drain = (admin or {}).get((h.farm, h.real), (None, None))
        kept = farm.restore(
            real, now, probe_failed=h.probe_failed,
            retry_at=None if h.retry_left is None else now + h.retry_left,
            consecutive_failures=h.consecutive_failures, failed_clients=h.failed_clients,
            state=h.state, age=h.age or 0.0, inservice=inservice, drain_timeout=drain)
        if h.probe_failed:
            out.probe_down.append((farm.name, real.name))
        if kept and h.state is not None and h.state is not RealState.OPERATIONAL:
            out.carried.append((farm.name, real.name, h.state, h.age or 0.0))
    in_panic = frozenset(panic)
    for farm in farms.values():
        if farm.restore_panic(now, farm.name in in_panic):
            out.panic_carried.append((farm.name, *farm.availability(),
                                      farm.config.panic_threshold))
    return out
