"""ConnectPlan: the attempts of ONE client connection, as a pure state machine (sans-IO).

Like h11, the plan does no I/O: the I/O layer feeds it events (`start`, `on_connected`,
`on_response`, `on_failed`, `on_timer`, `on_wake`, `cancel`) with the time, and carries out
the actions each returns, in order:

- `Connect(attempt_id, real)`: open a TCP connection to the real (on the vserver's port).
- `Replay(attempt_id)`: the handshake is done; write the buffered client bytes to it. Keep
  buffering (and forwarding) client bytes until `Commit`: the replay may have to go elsewhere.
- `Commit(attempt_id)`: the real answered; it owns the client connection now. Relay its bytes
  to the client. No reassign after this: the client has seen the real's bytes.
- `Abort(attempt_id)`: close that attempt; the plan has already reported its outcome.
  (Attempts the I/O layer reported failed are closed by the I/O layer, not re-aborted.)
- `Detach(attempt_id, verdict)`: the attempt lost a hedge race while its SYN is still
  unanswered. It is no longer this connection's, but it goes on until it connects (then the
  I/O layer closes it: the real is alive, no verdict) or reaches its own `connect_timeout`
  (a failure). `verdict` is the pure `DetachedAttempt` the I/O layer feeds with that outcome.
  So a black-holed real is still found out while hedging hides it from clients, and a busy
  real that merely answered later than another is never blamed.
- `Queued()`: every real that could take the connection is at its `max_connecting`: the plan
  waits in the farm's queue until `on_wake` (the I/O layer asks `farm.next_waiter`) or until
  `queue_timeout` (then `GiveUp`).
- `GiveUp(reason)`: no real can take the connection; the client gets remote-connection-failed.

Then call `on_timer` at `deadline` (None: no timer needed).

The plan reports every attempt's outcome to the farm exactly once: `connected` at the first
response, `failed` (counts for faildetect), or `abandoned` (no verdict); a detached attempt's
by its `DetachedAttempt`. A committed connection's end is reported by the I/O layer
(`farm.closed`), which frees the plan at the commit to keep idle connections small. A real
that completes the handshake but never answers is thus a failure, not a success that would
reset faildetect's counts.

Reassign, the gateway's mapping of IOS `reassign N`. IOS [SLB-FC] "TCP Session
Reassignment": "IOS SLB tracks each TCP SYN sent to a real server by a client attempting to
open a new connection. If several consecutive SYNs are not answered, or if a SYN is replied to
with an RST, the TCP session is reassigned to a new real server. The number of SYN attempts is
controlled by a configurable reassign threshold." A gateway does not see the client's SYN
retransmissions; it makes its own attempt instead. So:

- one attempt on a real stands for IOS's unanswered SYNs: it ends at a refusal (RST) at once,
  or at `connect_timeout` without a handshake (default 4 s: Linux's SYN and its
  retransmissions at 1 s and 3 s, IOS's default `reassign 3`), or at `response_timeout`
  without a first byte after the replay. A timeout shorter than two retransmissions cannot
  tell a real whose accept queue is full (it drops SYNs) from a dead one;
- a failed attempt moves the connection to another real (a reassign; R's `reassigns`
  counter counts connections that moved away from R), and each real is tried at most once
  per client connection. The connection gives up only when every real in service has
  refused or timed out on it: after the available reals, the FAILED and PROBE_FAILED ones
  are tried too, one at a time (`last resort`);
- hedging (beyond IOS): if the newest attempt has no handshake after `hedge_delay`, the next
  pick is started beside it, while fewer than the real's `reassign` reassigns have been
  made: `reassign N` bounds how many reals one connection races at once. The first to
  complete the handshake is kept; the others are detached (see `Detach`). A black-holed
  real then costs a client about `hedge_delay`, not `connect_timeout`.

[SLB-FC] Cisco IOS IP Configuration Guide 12.2, "Configuring Server Load Balancing", "IOS SLB
Functions and Capabilities" (78-11741-02, p. IPC-137).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xmppgw.slb.farm import Serverfarm
    from xmppgw.slb.types import Real


@dataclass(frozen=True, slots=True)
class Connect:
    attempt_id: int
    real: Real


@dataclass(frozen=True, slots=True)
class Replay:
    attempt_id: int


@dataclass(frozen=True, slots=True)
class Commit:
    attempt_id: int
    real: Real


@dataclass(frozen=True, slots=True)
class Abort:
    attempt_id: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str


@dataclass(frozen=True, slots=True)
class Queued:
    pass


@dataclass(frozen=True, slots=True, eq=False)
class Detach:
    attempt_id: int
    verdict: DetachedAttempt


Action = Connect | Replay | Commit | Abort | GiveUp | Queued | Detach

NO_REAL = "no real in service"
EVERY_REAL_FAILED = "every real in service failed"
QUEUE_TIMEOUT = "every real busy"
QUEUE_FULL = "queue full"
TIMEOUT = "timeout"
NO_RESPONSE = "no response"


class Phase(StrEnum):
    # A StrEnum equals its value: hash it as that str, in C (Enum's __hash__ is a Python
    # call on every `attempt.phase in IN_FLIGHT`).
    __hash__ = str.__hash__

    CONNECTING = "connecting"  # SYN sent, no handshake yet
    REPLAYED = "replayed"  # handshake done, client bytes replayed, waiting for a first byte
    COMMITTED = "committed"
    FAILED = "failed"
    ABANDONED = "abandoned"
    DETACHED = "detached"  # lost a hedge race; its verdict comes through a DetachedAttempt


IN_FLIGHT = frozenset({Phase.CONNECTING, Phase.REPLAYED})
_NONE_TRIED: frozenset[Real] = frozenset()


@dataclass(slots=True, eq=False)
class Attempt:
    id: int
    real: Real
    started: float
    deadline: float | None
    phase: Phase = Phase.CONNECTING
    reason: str | None = None


class DetachedAttempt:
    """A hedge loser still waiting for its handshake: its verdict on the real, reported once.

    Connected later: the real is alive, only slower than another (abandoned, no verdict).
    Refused: a failure. Silent until `deadline` (the attempt's own connect_timeout): a
    timeout, the one piece of evidence that condemns a silent real.
    """

    __slots__ = ("client_ip", "deadline", "farm", "real", "reported")

    def __init__(self, farm: Serverfarm, real: Real, client_ip: str, deadline: float) -> None:
        self.farm = farm
        self.real = real
        self.client_ip = client_ip
        self.deadline = deadline
        self.reported = False

    def on_connected(self, now: float) -> None:
        if not self._report():
            self.farm.abandoned(self.real, now)

    def on_failed(self, now: float, reason: str) -> None:
        if not self._report():
            self.farm.failed(self.real, self.client_ip, now, reason)

    def on_timer(self, now: float) -> None:
        if not self._report():
            self.farm.failed(self.real, self.client_ip, now, TIMEOUT, silent=True)

    def cancel(self, now: float) -> None:
        """The gateway stops: no verdict."""
        if not self._report():
            self.farm.abandoned(self.real, now)

    def _report(self) -> bool:
        done, self.reported = self.reported, True
        return done


class ConnectPlan:
    """The connect/reassign/hedge/queue decisions for one client connection.

    `client_ip` is the client's address (`xmppgw.addresses.client_ip`), not "ip:port": the
    farm hashes it (sourcehash) and counts it (faildetect numclients)."""

    def __init__(self, farm: Serverfarm, client_ip: str, connect_timeout: float,
                 hedge_delay: float | None, response_timeout: float | None,
                 queue_timeout: float = 0.0) -> None:
        self.farm = farm
        self.client_ip = client_ip
        self.connect_timeout = connect_timeout
        self.hedge_delay = hedge_delay if hedge_delay and hedge_delay < connect_timeout else None
        self.response_timeout = response_timeout or None
        self.queue_timeout = queue_timeout
        self.attempts: list[Attempt] = []
        self.winner: Attempt | None = None
        self.gave_up: str | None = None
        self.cancelled = False
        self.last_resort = False  # every available real failed: try the others in service
        self.queued_at: float | None = None  # waiting in the farm's queue since
        self.owner: object = None  # the I/O layer's handle, for the farm's queue
        self._hedge_at: float | None = None

    @classmethod
    def for_farm(cls, farm: Serverfarm, client_ip: str) -> ConnectPlan:
        """A plan with the farm's own timeouts."""
        c = farm.config
        return cls(farm, client_ip, c.connect_timeout, c.hedge_delay, c.response_timeout,
                   c.queue_timeout)

    # --- what the I/O layer reads ------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.winner is not None or self.gave_up is not None or self.cancelled

    @property
    def real(self) -> Real | None:
        """The real that owns the connection once committed."""
        return self.winner.real if self.winner is not None else None

    @property
    def tried(self) -> frozenset[Real]:
        """Reals this connection has used (each is tried at most once)."""
        attempts = self.attempts
        if not attempts:  # every connection's first pick
            return _NONE_TRIED
        return frozenset([a.real for a in attempts])

    @property
    def deadline(self) -> float | None:
        """When `on_timer` must be called next; None while no timer is needed."""
        times = [a.deadline for a in self._in_flight() if a.deadline is not None]
        if self._hedge_at is not None:
            times.append(self._hedge_at)
        if self.queued_at is not None:
            times.append(self.queued_at + self.queue_timeout)
        return min(times, default=None)

    def attempt(self, attempt_id: int) -> Attempt:
        return self.attempts[attempt_id - 1]

    # --- events --------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """The first attempt, a wait in the queue, or GiveUp if no real can take it."""
        if self.attempts or self.done or self.queued_at is not None:
            return []
        return self._next_real(now)

    def on_wake(self, now: float) -> list[Action]:
        """The farm took this plan off its queue: a real has a free slot now."""
        if self.done or self.queued_at is None:
            return []
        self.queued_at = None
        return self._next_real(now)

    def on_connected(self, attempt_id: int, now: float) -> list[Action]:
        """TCP handshake done: replay to it; the other attempts lost the race."""
        attempt = self._find(attempt_id, Phase.CONNECTING)
        if attempt is None:
            return []
        attempt.phase = Phase.REPLAYED
        attempt.deadline = now + self.response_timeout if self.response_timeout else None
        self._hedge_at = None
        losers = [a for a in self._in_flight() if a is not attempt]
        return [*(self._detach_loser(a, now) for a in losers), Replay(attempt.id)]

    def on_response(self, attempt_id: int, now: float) -> list[Action]:
        """First byte from the real: it wins for good; the farm counts a success."""
        actions: list[Action] = []
        attempt = self._find(attempt_id, Phase.CONNECTING)
        if attempt is not None:  # data before the handshake was reported: take it as both
            actions = self.on_connected(attempt_id, now)
        attempt = self._find(attempt_id, Phase.REPLAYED)
        if attempt is None:
            return actions
        attempt.phase = Phase.COMMITTED
        attempt.deadline = None
        self.winner = attempt
        self.farm.connected(attempt.real, now)
        return [*actions, Commit(attempt.id, attempt.real)]

    def on_failed(self, attempt_id: int, now: float, reason: str) -> list[Action]:
        """The I/O layer saw the attempt fail (refused, reset, closed before response...)."""
        attempt = self._find(attempt_id, *IN_FLIGHT)
        if attempt is None:
            return []
        self._fail(attempt, now, reason)
        return self._after_failure(attempt, now)

    def on_timer(self, now: float) -> list[Action]:
        """Handle every timeout, hedge and queue deadline due by `now`, oldest first."""
        actions: list[Action] = []
        while not self.done:
            if self.queued_at is not None and self.queued_at + self.queue_timeout <= now:
                self.farm.dequeue(self, timed_out=True)
                self.queued_at = None
                actions += self._give_up(f"{QUEUE_TIMEOUT} for {self.queue_timeout:g} s")
                break
            due = self._next_due(now)
            if due is None:
                break
            attempt = due[0]
            actions.extend(self._hedge(now) if attempt is None else self._timed_out(attempt, now))
        return actions

    def cancel(self, now: float) -> list[Action]:
        """The client left before a real answered: abort every attempt, no verdict on reals."""
        if self.done:
            return []
        self.cancelled = True
        self._hedge_at = None
        if self.queued_at is not None:
            self.farm.dequeue(self)
            self.queued_at = None
        actions: list[Action] = []
        for attempt in self._in_flight():
            attempt.phase = Phase.ABANDONED
            attempt.deadline = None
            self.farm.abandoned(attempt.real, now)
            actions.append(Abort(attempt.id))
        return actions

    # --- internals -------------------------------------------------------------------------

    def _in_flight(self) -> list[Attempt]:
        return [a for a in self.attempts if a.phase in IN_FLIGHT]

    def _find(self, attempt_id: int, *phases: Phase) -> Attempt | None:
        """The attempt if it exists and is in one of `phases`; late events are ignored."""
        if self.done or not 1 <= attempt_id <= len(self.attempts):
            return None
        attempt = self.attempts[attempt_id - 1]
        return attempt if attempt.phase in phases else None

    def _launch(self, real: Real, now: float) -> Connect:
        attempt = Attempt(len(self.attempts) + 1, real, now, now + self.connect_timeout)
        self.attempts.append(attempt)
        self._hedge_at = (now + self.hedge_delay if self.hedge_delay and not self.last_resort
                          else None)
        return Connect(attempt.id, real)

    def _fail(self, attempt: Attempt, now: float, reason: str, silent: bool = False) -> None:
        attempt.phase = Phase.FAILED
        attempt.reason = reason
        attempt.deadline = None
        self.farm.failed(attempt.real, self.client_ip, now, reason, silent=silent)

    def _next_due(self, now: float) -> tuple[Attempt | None] | None:
        """The earliest timer due by `now`: (attempt,) for a timeout, (None,) for the hedge.

        On a tie a timeout goes first, so the hedge sees the attempts still in flight.
        """
        timers = [(a.deadline, 0, a.id, a) for a in self._in_flight()
                  if a.deadline is not None and a.deadline <= now]
        if self._hedge_at is not None and self._hedge_at <= now:
            timers.append((self._hedge_at, 1, 0, None))
        if not timers:
            return None
        return (min(timers, key=lambda t: t[:3])[3],)

    def _timed_out(self, attempt: Attempt, now: float) -> list[Action]:
        reason = TIMEOUT if attempt.phase is Phase.CONNECTING else NO_RESPONSE
        self._fail(attempt, now, reason, silent=True)
        return [Abort(attempt.id), *self._after_failure(attempt, now)]

    def _after_failure(self, failed: Attempt, now: float) -> list[Action]:
        """Move on to another real; give up only when every real in service failed here."""
        if self._in_flight():  # a hedge is still under way: the connection moved on to it
            self.farm.reassigned(failed.real, now)
            return self._rearm_hedge(now)
        actions = self._next_real(now)
        if not self.done:
            self.farm.reassigned(failed.real, now)
        return actions

    def _next_real(self, now: float) -> list[Action]:
        """An untried available real; else, as a last resort, an untried real in service
        whatever its state; a wait in the queue if only `max_connecting` stands in the way
        of either; else give up."""
        tried = self.tried
        if not self.last_resort:
            real = self.farm.pick(self.client_ip, now, tried)
            if real is not None:
                return [self._launch(real, now)]
            if self.farm.busy(tried):
                return self._wait(now)
            self.last_resort = True
        real = self.farm.pick(self.client_ip, now, tried, last_resort=True)
        if real is not None:
            return [self._launch(real, now)]
        if self.farm.busy(tried, last_resort=True):
            return self._wait(now)
        return self._give_up(EVERY_REAL_FAILED if self.attempts else NO_REAL)

    def _wait(self, now: float) -> list[Action]:
        if not self.farm.enqueue(self):
            return self._give_up(QUEUE_FULL)
        self.queued_at = now
        self._hedge_at = None
        return [Queued()]

    def _hedge(self, now: float) -> list[Action]:
        """The newest attempt is slow: start the next pick beside it, if budget and reals allow.

        When no real is free to hedge to, hedging stops until the next launch; the attempts
        under way then run to their own timeouts. A hedge never waits in the queue.
        """
        self._hedge_at = None
        connecting = [a for a in self._in_flight() if a.phase is Phase.CONNECTING]
        if not connecting or not self._budget_allows(connecting[-1].real):
            return []
        real = self.farm.pick(self.client_ip, now, self.tried)
        return [] if real is None else [self._launch(real, now)]

    def _rearm_hedge(self, now: float) -> list[Action]:
        """After a failure beside other attempts: hedge around the newest one still connecting.

        So a hedge that is refused at once does not leave the client waiting on the slow
        attempt it was meant to replace: if that one is already past hedge_delay, the next
        pick starts now.
        """
        connecting = [a for a in self._in_flight() if a.phase is Phase.CONNECTING]
        if self.hedge_delay is None or not connecting or self.last_resort:
            self._hedge_at = None
            return []
        self._hedge_at = connecting[-1].started + self.hedge_delay
        return self._hedge(now) if self._hedge_at <= now else []

    def _detach_loser(self, attempt: Attempt, now: float) -> Detach:
        """Another real completed its handshake first: this one is no longer needed, but its
        verdict is still owed (see `Detach`)."""
        if self.hedge_delay is not None and now - attempt.started >= self.hedge_delay:
            self.farm.reassigned(attempt.real, now)  # the connection moved away from it
        attempt.phase = Phase.DETACHED
        deadline, attempt.deadline = attempt.deadline, None
        verdict = DetachedAttempt(self.farm, attempt.real, self.client_ip,
                                  deadline if deadline is not None else now)
        return Detach(attempt.id, verdict)

    def _budget_allows(self, real: Real) -> bool:
        """Each attempt after the first is a reassign; `real`'s reassign value caps hedges."""
        return len(self.attempts) - 1 < real.config.reassign

    def _give_up(self, reason: str) -> list[Action]:
        self.gave_up = reason
        self._hedge_at = None
        return [GiveUp(reason)]
