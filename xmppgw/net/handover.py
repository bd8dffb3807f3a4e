"""`xmppgw run --takeover`, the pure part: what the old gateway hands the new one, and which
listening socket goes to which vserver.

The handover message is one JSON line on the control socket, sent with the listening
sockets themselves as SCM_RIGHTS ancillary data (unix(7)); `net/takeover.py` does the I/O.
It carries, besides the sockets' addresses, the state a new process must not forget:

- the operator's word (`real ... inservice|no-inservice [--drain S]`, `vserver ...`), with
  a drain's end as wall-clock time, as the admin table holds it (`net/shared.py`);
- each real's health: the active probes' verdict (a PROBE_FAILED real stays PROBE_FAILED
  until its probes rise again) and passive failure detection (a FAILED real stays FAILED for
  the rest of its `retry`; partial faildetect counts are kept too).

So no real looks healthy in the new process that did not in the old. What is not carried:
the counters `show` prints (total, failed attempts, reassigns start again from zero) and
the load of the streams the old process still relays (leastconns in the new process counts
only its own connections until the old one has exited).

No I/O and no clock here: times come in as arguments.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from xmppgw.config import VserverConfig
    from xmppgw.slb.farm import Serverfarm

VERSION = 1
MAX_SOCKETS = 250  # SCM_MAX_FD is 253 on Linux: one message carries at most that many fds


class HandoverError(ValueError):
    """A handover message that this version cannot read (or that is not one)."""


Admin = tuple[bool, float | None]  # (inservice, drain end as wall-clock time) if held


@dataclass(frozen=True, slots=True)
class RealHealth:
    """One real's health as the old process saw it. `retry_left`: seconds until a FAILED
    real becomes TESTING (0: TESTING already; None: not failed)."""

    farm: str
    real: str
    probe_failed: bool = False
    retry_left: float | None = None
    consecutive_failures: int = 0
    failed_clients: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Handover:
    """What the old process sends with its listening sockets (in `listeners` order)."""

    pid: int
    listeners: tuple[tuple[str, str, int], ...]  # (vserver, host, port), one per socket sent
    real_admin: Mapping[tuple[str, str], Admin] = field(default_factory=dict)
    vserver_admin: Mapping[str, Admin] = field(default_factory=dict)
    health: tuple[RealHealth, ...] = ()

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
                        list(h.failed_clients)] for h in self.health],
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
                health=tuple(RealHealth(str(f), str(r), bool(pf), _wall(left), int(cf),
                                        tuple(str(c) for c in fc))
                             for f, r, pf, left, cf, fc in data["health"]))
        except HandoverError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise HandoverError(f"a handover message this version cannot read: {exc}") from None


def _wall(value: Any) -> float | None:
    return None if value is None else float(value)


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
    """Each real's health at loop time `now`, for the message (reals with nothing to say
    are left out: a real that is simply healthy needs no line)."""
    out = []
    for farm in farms:
        for real in farm.reals:
            left = None if real.retry_at is None else max(0.0, real.retry_at - now)
            if real.probe_failed or left is not None or real.consecutive_failures \
                    or real.failed_clients:
                out.append(RealHealth(farm.name, real.name, real.probe_failed, left,
                                      real.consecutive_failures,
                                      tuple(sorted(real.failed_clients))))
    return tuple(out)


def restore_health(farms: Mapping[str, Serverfarm], health: Iterable[RealHealth],
                   now: float) -> list[tuple[str, str]]:
    """Put the old process's view of each real into the new engine (loop time `now`); a
    real gone from the new config is skipped. Returns the (farm, real) restored PROBE_FAILED,
    whose probes must start *down* (`rise` good runs bring them back, as in the old one)."""
    down = []
    for h in health:
        farm = farms.get(h.farm)
        real = None if farm is None else farm.find(h.real)
        if farm is None or real is None:
            continue
        real.consecutive_failures = h.consecutive_failures
        real.failed_clients = set(h.failed_clients)
        if h.retry_left is not None:
            real.retry_at = now + h.retry_left
        if h.probe_failed:
            farm.probe_result(real, False, now)  # records the change, as a probe would
            down.append((farm.name, real.name))
        farm.refresh(now)  # FAILED or TESTING, recorded for the log
    return down
