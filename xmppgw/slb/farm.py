"""The balancing engine: serverfarms of reals, pure, with the clock passed in.

The asyncio layer asks `farm.pick(client_ip, now, tried)` for a real and reports each attempt's
outcome; the engine alone changes states and counters. No sockets, no sleeps, no clock and no
logging here: every call takes `now`, and every state change is recorded as a `StateChange`
that the I/O layer collects with `drain_events()` and logs. So failure timelines are tested on
a fake clock, and two gateways fed the same events decide the same way.

The rules follow Cisco IOS SLB, whose words the config uses (weight, reassign, faildetect,
retry, inservice, maxconns). Sources quoted below:

[SLB-FC] Cisco IOS IP Configuration Guide 12.2, "Configuring Server Load Balancing",
    "IOS SLB Functions and Capabilities" (78-11741-02, p. IPC-137): TCP Session Reassignment,
    Automatic Server Failure Detection, Automatic Unfail.
    http://phone.manualsonline.com/manuals/mfg/cisco_systems/781174102.html?p=183
[SLB-VF] Same guide, "Verifying Server Failure Detection" (p. IPC-149): numclients tuning,
    slow start for weighted least connections.
    http://phone.manualsonline.com/manuals/mfg/cisco_systems/781174102.html?p=195
[SLB-12.1E] IOS Server Load Balancing 12.1(1)E feature guide: Maximum Connections, Slow
    Start, and the faildetect / reassign / retry / maxconns command reference.
    http://www.cisco.com/en/US/docs/ios/12_1/12_1e1/feature/guide/iosslb1.html
[SLB-MIB] CISCO-SLB-EXT-MIB cslbxServerFarmSlowStart (.1.3.6.1.4.1.9.9.254.1.2.1.1.9).

The contract with the caller: every real `pick` returns is one attempt in flight (it counts
towards the real's load at once, so a burst of logins cannot all land on the same "least
loaded" real before any handshake completes), and each attempt ends with exactly one of
`connected` (the real answered: it now owns a connection, later ended by `closed`), `failed`
(it counts against the real) or `abandoned` (the client left first: no verdict on the real).
`xmppgw.slb.plan.ConnectPlan` keeps that contract for one client connection. A report with
nothing in flight (or a `closed` with no connection) raises `DoubleReport`: counters are
never clamped at zero, which would hide the caller's bug.

Overload (docs/failover-and-overload.md). A failure signal that grows with load must never take
reals out faster than load moves away from them:

- `max_connecting`: at most that many attempts in flight per real (HAProxy's per-server
  `maxconn` applied to connects): a busy real with a small accept backlog is not flooded
  with SYNs it will drop. A client connection that finds every candidate at its limit waits
  in the farm's queue (`enqueue`, `next_waiter`) for at most `queue_timeout` seconds.
- Panic (Envoy's healthy panic threshold): when fewer than `panic_threshold` percent of the
  in-service reals are available (OPERATIONAL, TESTING), picks ignore FAILED and
  PROBE_FAILED, since a health signal that condemns most of a farm is more likely wrong
  than the farm dead.
- A timeout on the last available real never marks it FAILED: silence alone cannot tell a
  dead real from one buried in a storm, and taking the last one out turns a slow service
  into none. A refusal (RST) still does.
- A mass close (`closed(..., by_real=True)`, `_by_real`): a real that closes most of its
  streams from its own side at once is going away; it is FAILED at once rather than handed
  the clients it just cut, but never when it is the last available real.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from xmppgw.slb.closes import is_mass_close
from xmppgw.slb.predictors import Predictor, make_predictor
from xmppgw.slb.types import (
    AVAILABLE,
    NOT_SERVING,
    Candidate,
    DoubleReport,
    MassClose,
    PanicChange,
    Real,
    RealState,
    StateChange,
    Waiter,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from xmppgw.config import RealConfig, ServerfarmConfig

__all__ = ["DoubleReport", "MassClose", "PanicChange", "Real", "RealState", "Serverfarm", "StateChange"]

EVENTS_LIMIT = 4096  # undrained changes kept per farm: a missed drain cannot grow memory
SLOWSTART_FLOOR = 0.05  # a returning real starts at 5% of its weight, never at zero


class Serverfarm:
    """A named group of reals that one or more vservers send connections to."""

    def __init__(self, config: ServerfarmConfig, now: float = 0.0) -> None:
        self.config = config
        self.reals = [self._new_real(r, now) for r in config.reals]
        self.predictor: Predictor = make_predictor(config.predictor)
        self._events: deque[StateChange | PanicChange] = deque(maxlen=EVENTS_LIMIT)
        self.queue: deque[Waiter] = deque()  # client connections waiting for a free real
        self.queued_total = 0  # connections that ever had to wait
        self.queue_timeouts = 0  # ... and gave up waiting
        self.panic = False

    def _new_real(self, config: RealConfig, now: float) -> Real:
        """At gateway start a real is simply in service or not: no slow start yet."""
        return Real(config, standby=config.standby, inservice=config.inservice,
                    last_change=now)

    @property
    def name(self) -> str:
        return self.config.name

    def find(self, name: str) -> Real | None:
        """The real whose address reads `name` (as in `show` and the control commands)."""
        return next((r for r in self.reals if r.name == name), None)

    # --- choosing a real ---------------------------------------------------------------

    def pick(self, client_ip: str, now: float, tried: frozenset[Real] = frozenset(),
             last_resort: bool = False) -> Real | None:
        """The real for a new attempt of a connection from `client_ip`, or None if none can
        take it. `client_ip` is an address (`xmppgw.addresses.client_ip`), not "ip:port":
        the port changes on every reconnect, and sourcehash must send a resuming client
        (XEP-0198) back to the same real.

        `tried` holds reals this client connection already used, so a reassign never returns
        to them. Standby reals are considered only when no other real can take it. A real whose
        retry has elapsed (TESTING) and has no attempt in flight gets this connection as its
        test (IOS "Automatic Unfail" [SLB-FC]: "IOS SLB sends the server the next connection for
        which it qualifies"); with sourcehash it qualifies only if the client hashes to it, so
        stickiness holds. In panic mode, or with `last_resort` (every available real already
        failed this connection), FAILED and PROBE_FAILED reals in service qualify as well.
        A real at `maxconns` or at its `max_connecting` is skipped. The returned real counts
        this attempt in its load at once.
        """
        self.refresh(now)
        any_state = last_resort or self.panic
        for standby in (False, True):
            group = [r for r in self.reals if r.standby is standby and r not in tried]
            real = self._choose(group, client_ip, now, any_state)
            if real is not None:
                real.pending += 1
                return real
        return None

    def busy(self, tried: frozenset[Real] = frozenset(), last_resort: bool = False) -> bool:
        """Would a pick succeed but for `max_connecting`? Then the connection may wait."""
        any_state = last_resort or self.panic
        return any(self._eligible(r, any_state) and r.has_room() and not self._has_slot(r)
                   for r in self.reals if r not in tried)

    def _choose(self, group: list[Real], ip: str, now: float, any_state: bool) -> Real | None:
        """Filter `group` to what may be picked now; the predictor chooses among it."""
        group = [r for r in group if self._eligible(r, any_state)
                 and r.has_room() and self._has_slot(r)]
        ready = [r for r in group if r.recorded_state is RealState.OPERATIONAL]
        testing = [r for r in group if r.recorded_state is RealState.TESTING and r.pending == 0]
        if any_state:  # panic or last resort: every real in service, the tested ones first
            ready += [r for r in group if r.recorded_state not in AVAILABLE]
        if testing and not self.predictor.sticky:
            return min(testing, key=lambda r: r.retry_at or 0.0)
        pool = ready + testing if self.predictor.sticky else ready
        if not pool:
            return None
        return self.predictor.choose(
            [Candidate(r, self.effective_weight(r, now), r.load) for r in pool], ip)

    @staticmethod
    def _eligible(real: Real, any_state: bool) -> bool:
        if any_state:
            return real.inservice
        return real.recorded_state in AVAILABLE

    def _has_slot(self, real: Real) -> bool:
        limit = real.config.max_connecting or self.config.max_connecting
        return limit is None or real.connecting < limit

    # --- the queue ---------------------------------------------------------------------

    def enqueue(self, waiter: Waiter) -> bool:
        """Wait for a free real; False when the queue is full (`queue_length`)."""
        if len(self.queue) >= self.config.queue_length or self.config.queue_timeout <= 0:
            return False
        self.queue.append(waiter)
        self.queued_total += 1
        return True

    def dequeue(self, waiter: Waiter, timed_out: bool = False) -> None:
        """The waiter left the queue without a real (gave up waiting, or its client left)."""
        try:
            self.queue.remove(waiter)
        except ValueError:
            return
        if timed_out:
            self.queue_timeouts += 1

    def next_waiter(self, now: float) -> Waiter | None:
        """The oldest waiter a pick can serve now, taken off the queue, or None.

        The caller lets it pick (which takes the slot) before asking again, so a burst of
        freed slots is handed out in order and never twice.
        """
        self.refresh(now)
        for waiter in self.queue:
            last_resort = waiter.last_resort
            any_state = last_resort or self.panic
            if any(self._eligible(r, any_state) and r.has_room() and self._has_slot(r)
                   for r in self.reals if r not in waiter.tried):
                self.queue.remove(waiter)
                return waiter
        return None

    def effective_weight(self, real: Real, now: float) -> float:
        """The weight predictors use: the configured weight, ramped during slow start.

        IOS [SLB-VF], [SLB-MIB]: "a real server that is placed in service initially has no
        connections, and could therefore be assigned so many new connections that it becomes
        overloaded"; the slow start feature limits that. Here the weight grows linearly from
        SLOWSTART_FLOOR to the full weight over `slowstart` seconds (HAProxy's `slowstart`
        does the same), which throttles leastconns and roundrobin alike; with sourcehash the
        returning real takes its clients back gradually.
        """
        slowstart = self.config.slowstart
        if real.ramp_start is None or slowstart <= 0:
            return real.weight
        fraction = (now - real.ramp_start) / slowstart
        if fraction >= 1.0:
            return real.weight
        return real.weight * max(SLOWSTART_FLOOR, fraction)

    # --- outcomes of attempts ------------------------------------------------------------

    def connected(self, real: Real, now: float) -> None:
        """The attempt succeeded: the real owns a connection now (ended later by `closed`).

        A success clears faildetect's counts; on a TESTING real it is the successful test
        connection, and the real is OPERATIONAL again (with slow start). So is a FAILED real
        that answered a connection sent to it in panic mode or as a last resort: an answer
        is the best evidence a real can give.
        """
        self._sync(real, now)
        self._end_attempt(real, "connected")
        real.active += 1
        real.total += 1
        if real.retry_at is not None:
            testing = now >= real.retry_at
            real.retry_at = None
            self._sync(real, now, "test connection succeeded" if testing
                       else "a connection succeeded")
        real.consecutive_failures = 0
        real.failed_clients.clear()

    def failed(self, real: Real, client_ip: str, now: float, reason: str,
               silent: bool = False) -> None:
        """An attempt failed (refused, timeout, no response, hedged: no answer...).

        faildetect [SLB-FC] "Automatic Server Failure Detection": "IOS SLB automatically
        detects each failed TCP connection attempt to a real server, and increments a failure
        counter for that server. (The failure counter is not incremented if a failed TCP
        connection from the same client has already been counted.)" Mapped as:

        - `numconns N`: FAILED at the Nth consecutive failed attempt (every attempt counts,
          so one client retrying against a dead real fails it too);
        - `numclients M`: FAILED once failed attempts came from M distinct client IPs (a
          client failing again is counted once);
        - whichever comes first; a success resets both counts.

        A failure while TESTING is the failed test: FAILED again for another `retry`. A
        failure while already FAILED (an attempt started before) is only counted.
        """
        self._sync(real, now)
        self._end_attempt(real, "failed")
        real.failed_attempts += 1
        if real.retry_at is not None:
            if now >= real.retry_at:
                self._fail(real, now, f"test connection failed: {reason}")
            return
        real.consecutive_failures += 1
        real.failed_clients.add(client_ip)
        numconns, numclients = real.config.faildetect.numconns, real.config.faildetect.numclients
        consecutive = real.consecutive_failures + real.peer_consecutive_failures
        clients = len(real.failed_clients) + real.peer_failed_clients
        if silent and self._last_available(real, now):
            return
        if consecutive >= numconns:
            self._fail(real, now, f"faildetect numconns {numconns}: {consecutive}"
                       f" consecutive failed attempts, last: {reason}")
        elif clients >= numclients:
            self._fail(real, now, f"faildetect numclients {numclients}: failed attempts from"
                       f" {clients} clients, last: {reason}")

    def _last_available(self, real: Real, now: float) -> bool:
        return real.recorded_state in AVAILABLE and not any(
            r.recorded_state in AVAILABLE for r in self.reals if r is not real and r.inservice)

    def abandoned(self, real: Real, now: float) -> None:
        """The attempt ended without a verdict (the client left, or a hedge won first)."""
        self._end_attempt(real, "abandoned")

    def closed(self, real: Real, now: float, by_real: bool = False) -> MassClose | None:
        """A connection the real owned has ended; `by_real`: the real's side ended it first
        (its FIN or RST reached the gateway before the client's, and the gateway did not
        close it). Returns the mass close this close completed, if any (see `_by_real`)."""
        if real.active <= 0:
            raise DoubleReport(f"closed on {real!r}, which owns no connection")
        real.active -= 1
        return self._by_real(real, now) if by_real else None

    def _by_real(self, real: Real, now: float) -> MassClose | None:
        """A real that closes many of its streams at once is going away: out at once.

        `ejabberdctl stop` closes every session of the node, and its listener still accepts
        for a few seconds; the cut clients reconnect at once and leastconns would send them
        to the emptied real, where they fail after the gateway committed them (a stream
        cannot be retried once it passed through). At least `mass_close_streams` closes by
        the real within `mass_close_window` seconds, and at least `mass_close_share` percent
        of the most streams it held before any of those closes (streams that reconnecting
        clients opened on it meanwhile do not dilute the burst), mark it FAILED for its `retry`, as faildetect would, but never
        the last available real (panic mode and the last-available rule still hold). A real
        already out (FAILED, PROBE_FAILED, out of service) is left to the rules that hold it.
        Counted per worker; another worker sees the FAILED through the shared table.
        """
        cfg = self.config
        if cfg.mass_close_streams <= 0:
            return None
        self._sync(real, now)
        if real.recorded_state not in AVAILABLE:
            real.server_closes.clear()
            return None
        window = cfg.mass_close_window
        closes, held = real.server_closes.note(now, window, real.active + 1)
        if not is_mass_close(closes, held, cfg.mass_close_streams, cfg.mass_close_share):
            return None
        real.server_closes.clear()
        kept = self._last_available(real, now)
        if not kept:
            self._fail(real, now, f"mass close: the real closed {closes} of its {held} streams"
                       f" within {window:g} s")
        return MassClose(now, self.name, real.name, closes, held, real.active, window, not kept)

    @staticmethod
    def _end_attempt(real: Real, outcome: str) -> None:
        """Each attempt `pick` returned ends exactly once; a second report is a bug."""
        if real.pending <= 0:
            raise DoubleReport(f"{outcome} on {real!r}, which has no attempt in flight")
        real.pending -= 1

    def reassigned(self, real: Real, now: float) -> None:
        """A client connection moved on to another real after an attempt failed on this one."""
        real.reassigns += 1

    def _fail(self, real: Real, now: float, reason: str) -> StateChange | None:
        """Out of the picks for `retry` seconds.

        IOS "Automatic Unfail" [SLB-FC]: a failed real "is assigned no new connections for a
        length of time specified by a configurable retry timer. After that timer expires, the
        server is again eligible for new virtual server connections and IOS SLB sends the
        server the next connection for which it qualifies. If the connection is successful,
        the failed server is placed back on the list of active real servers." TESTING is that
        eligible-again state, computed from `now` (see `_oper_state`).
        """
        real.retry_at = now + real.config.retry
        real.consecutive_failures = 0
        real.failed_clients.clear()
        return self._sync(real, now, reason)

    # --- the other workers ------------------------------------------------------------------

    def observe_peers(self, real: Real, load: int, consecutive_failures: int,
                      failed_clients: int, failed_until: float, pending: int,
                      now: float) -> None:
        """What the other workers hold of `real`, read from the shared table.

        Loads and faildetect counts add up over workers; a real another worker marked FAILED
        is FAILED here too until that worker's retry elapses (then that worker tests it). A
        newly seen peer failure spends this worker's partial counts as well, as `_fail` does
        for its own.
        """
        if failed_until > real.peer_failed_until and failed_until > now:
            real.consecutive_failures = 0
            real.failed_clients.clear()
        real.peer_load = load
        real.peer_pending = pending
        real.peer_consecutive_failures = consecutive_failures
        real.peer_failed_clients = failed_clients
        real.peer_failed_until = failed_until
        self._sync(real, now, "marked FAILED by another worker" if failed_until > now
                   else "another worker's retry elapsed")

    # --- operator and probes ---------------------------------------------------------------

    def set_inservice(self, real: Real, inservice: bool, now: float,
                      drain_timeout: float | None = None) -> StateChange | None:
        """`inservice` / `no inservice` at run time.

        Out of service: no new connections, the existing ones stay (the seed's advice: take a
        node out "day before" rather than pulling its cable). With `drain_timeout` the engine
        notes a deadline after which `reals_to_drain` names the real so the I/O layer closes
        what is left. Back in service: a passive failure is forgotten (the operator vouches
        for the real) and slow start begins.
        """
        self._sync(real, now)
        before = real.recorded_state  # the administrative change is recorded against it
        if inservice:
            if not real.inservice:
                real.inservice = True
                real.retry_at = None
                real.consecutive_failures = 0
                real.failed_clients.clear()
            real.drain_deadline = None
            return self._sync(real, now, "inservice", before)
        real.inservice = False
        real.drain_deadline = None if drain_timeout is None else now + drain_timeout
        # Rounded: a drain given in seconds is turned into loop time and back on its way
        # through the admin table (599.9887 s), which is not what the operator typed.
        drain = "" if drain_timeout is None else f" (drain {round(drain_timeout, 1):g} s)"
        return self._sync(real, now, f"no inservice{drain}", before)

    def reconfigure(self, config: ServerfarmConfig, now: float) -> list[Real]:
        """A reload: the new config applies to new connections, nothing live is dropped.

        Reals are matched by address and keep their counters and state; a new real starts in
        service with slow start (it has no connections yet, exactly the overload slow start
        exists for); a real whose `inservice` changed in the file takes the file's word. A
        real gone from the file leaves the picks at once; its connections stay until they end
        (the sessions hold it), and it is returned so the caller can account for them.
        """
        old = {r.name: r for r in self.reals}
        reals = []
        for real_config in config.reals:
            real = old.pop(str(real_config.address), None)
            if real is None:
                real = self._new_real(real_config, now)
                if real.inservice:
                    real.ramp_start = now
            else:
                previous, real.config = real.config, real_config
                real.standby = real_config.standby
                if real_config.inservice != previous.inservice:
                    self.set_inservice(real, real_config.inservice, now)
            reals.append(real)
        self.config = config
        self.reals = reals
        self.predictor = make_predictor(config.predictor)
        return list(old.values())

    def probe_result(self, real: Real, ok: bool, now: float) -> StateChange | None:
        """An active probe's verdict (rise/fall already counted by the probe module).

        Only flips PROBE_FAILED; a passive failure (FAILED/retry) is independent of it.
        """
        self._sync(real, now)
        real.probe_failed = not ok
        return self._sync(real, now, "probe succeeded" if ok else "probe failed")

    def restore(self, real: Real, now: float, *, probe_failed: bool, retry_at: float | None,
                consecutive_failures: int, failed_clients: Iterable[str],
                state: RealState | None = None, age: float = 0.0,
                inservice: bool | None = None, drain_timeout: float | None = None) -> bool:
        """A real's health as the gateway taken over left it (`xmppgw run --takeover`,
        `net/handover.py`); `now`, `retry_at` on this engine's clock.

        `state`, what the old process had recorded `age` seconds before (OUTOFSERVICE
        included), is taken as it is: no StateChange for it (the old process logged it, the
        caller says it once as carried over), and it keeps its age. `inservice` (with
        `drain_timeout` seconds left of a drain) is the operator's word the old process held,
        taken over the same way. Only what differs by `now` (a retry that elapsed on the
        way, a config that changed the real's `inservice`) is recorded, as any change is.
        Without `state` (an older gateway's message) the state is worked out and recorded as
        a change. Returns True when `state` was kept as it came. Panic mode is not checked
        here (a farm half restored counts the reals still to come as available): call
        `restore_panic` once every real is restored."""
        real.probe_failed = probe_failed
        real.retry_at = retry_at
        real.consecutive_failures = consecutive_failures
        real.failed_clients = set(failed_clients)
        if inservice is not None:
            real.inservice = inservice
            real.drain_deadline = (None if inservice or drain_timeout is None
                                   else now + drain_timeout)
        if state is RealState.MAXCONNS:
            state = None  # never recorded: nothing to keep
        if state is not None:
            real.last_change = now - max(0.0, age)
            if state in NOT_SERVING:
                real.ramp_start = None
        change = self._sync(real, now, "carried over" if state is None else None, state,
                            check_panic=False)
        return state is not None and change is None

    def restore_panic(self, now: float, was_panic: bool) -> bool:
        """After `restore` of every real: panic mode as the restored states make it.
        `was_panic`: the old process's mode. The same mode here is no change (no
        PanicChange; True is returned when it is on, for the caller to say once that it was
        carried over); another mode is recorded as a change."""
        self.panic = was_panic
        self._check_panic(now)
        return self.panic and was_panic

    def reals_to_drain(self, now: float) -> list[Real]:
        """Out-of-service reals whose drain deadline passed and that still own connections.

        The I/O layer closes those connections; the same real is named on every call until
        they are gone, so closing twice must be harmless (it is: sessions close idempotently).
        """
        return [r for r in self.reals
                if not r.inservice and r.drain_deadline is not None
                and now >= r.drain_deadline and r.active > 0]

    # --- states ---------------------------------------------------------------------------

    def state(self, real: Real, now: float) -> RealState:
        """The state to show now: TESTING once retry elapsed, MAXCONNS while at the limit."""
        self._sync(real, now)
        state = real.recorded_state
        if state is RealState.OPERATIONAL and not real.has_room():
            return RealState.MAXCONNS
        return state

    def refresh(self, now: float) -> list[StateChange]:
        """Record changes due to the clock alone (FAILED -> TESTING), for timely logs."""
        return [c for c in (self._sync(r, now) for r in self.reals) if c is not None]

    def availability(self) -> tuple[int, int]:
        """(available, in service): the reals panic mode counts."""
        inservice = [r for r in self.reals if r.inservice]
        return sum(r.oper_state in AVAILABLE for r in inservice), len(inservice)

    def _check_panic(self, now: float) -> None:
        """Enter or leave panic mode after a state change (Envoy's healthy panic threshold:
        below it, balance over every real in service whatever its health says)."""
        threshold = self.config.panic_threshold
        available, inservice = self.availability()
        panic = bool(threshold and inservice and available * 100 < threshold * inservice)
        if panic is self.panic:
            return
        self.panic = panic
        self._events.append(PanicChange(now, self.name, panic, available, inservice,
                                        threshold))

    def drain_events(self) -> list[StateChange | PanicChange]:
        """The state changes since the last call, oldest first, for the I/O layer to log."""
        events = list(self._events)
        self._events.clear()
        return events

    def _oper_state(self, real: Real, now: float) -> RealState:
        """The operational state now: probes first, then passive failure detection."""
        if real.probe_failed:
            return RealState.PROBE_FAILED
        if real.retry_at is not None:
            return RealState.FAILED if now < real.retry_at else RealState.TESTING
        if now < real.peer_failed_until:
            return RealState.FAILED
        return RealState.OPERATIONAL

    def _sync(self, real: Real, now: float, reason: str | None = None,
              before: RealState | None = None, check_panic: bool = True,
              ) -> StateChange | None:
        """Bring the operational state up to `now`; record the real's state if it changed
        (from `before` when the caller just changed the administrative state), and start slow
        start on a return to service.

        MAXCONNS is not recorded: it would flap with every open and close at the limit.
        """
        old = real.recorded_state if before is None else before
        real.oper_state = self._oper_state(real, now)
        new = real.recorded_state
        if new is old:
            return None
        at = now
        if new is RealState.TESTING and real.retry_at is not None:
            at = max(real.retry_at, real.last_change)  # it became TESTING when retry elapsed
            reason = reason or f"retry {real.config.retry:g} s elapsed: next connection tests it"
        if new is RealState.OPERATIONAL and old in NOT_SERVING:
            real.ramp_start = at
        elif new in NOT_SERVING:
            real.ramp_start = None
        real.last_change = at
        change = StateChange(at, self.name, real.name, old, new, reason or str(new).lower())
        self._events.append(change)
        if check_panic:
            self._check_panic(now)
        return change
