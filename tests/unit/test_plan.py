"""ConnectPlan: one client connection's attempts as timelines on a fake clock."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xmppgw.config import Address, Faildetect, RealConfig, ServerfarmConfig
from xmppgw.slb.farm import PanicChange, Real, RealState, Serverfarm
from xmppgw.slb.plan import (
    EVERY_REAL_FAILED,
    NO_REAL,
    QUEUE_FULL,
    Abort,
    Action,
    Commit,
    Connect,
    ConnectPlan,
    Detach,
    DetachedAttempt,
    GiveUp,
    Phase,
    Queued,
    Replay,
)

CLIENT = "198.51.100.7"


class CountingFarm(Serverfarm):
    """Counts outcome reports, to check each attempt gets exactly one."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.outcomes = 0

    def connected(self, real: Real, now: float) -> None:
        self.outcomes += 1
        super().connected(real, now)

    def failed(self, real: Real, client: str, now: float, reason: str,
               silent: bool = False) -> None:
        self.outcomes += 1
        super().failed(real, client, now, reason, silent)

    def abandoned(self, real: Real, now: float) -> None:
        self.outcomes += 1
        super().abandoned(real, now)


def make_farm(n: int = 3, predictor: str = "roundrobin", farm: dict[str, Any] | None = None,
              **real: Any) -> CountingFarm:
    real.setdefault("faildetect", Faildetect(numconns=100, numclients=100))
    reals = tuple(RealConfig(Address(f"10.0.0.{i + 1}", None), **real) for i in range(n))
    settings: dict[str, Any] = {"max_connecting": None, **(farm or {})}
    cfg = ServerfarmConfig("F", predictor=predictor, connect_timeout=1.0, hedge_delay=0.2,
                           response_timeout=5.0, slowstart=0, reals=reals, **settings)
    return CountingFarm(cfg, 0.0)


def plan_for(farm: Serverfarm, hedge_delay: float | None = 0.2) -> ConnectPlan:
    return ConnectPlan(farm, CLIENT, connect_timeout=1.0, hedge_delay=hedge_delay,
                       response_timeout=5.0)


def connects(actions: list[Action]) -> list[Real]:
    return [a.real for a in actions if isinstance(a, Connect)]


def detached(actions: list[Action]) -> list[DetachedAttempt]:
    return [a.verdict for a in actions if isinstance(a, Detach)]


def shape(actions: list[Action]) -> list[tuple[str, int]]:
    """Actions as (kind, attempt id): a Detach carries an object that compares by identity."""
    return [(type(a).__name__, getattr(a, "attempt_id", 0)) for a in actions]


def settled(farm: Serverfarm) -> bool:
    return all(r.pending == 0 for r in farm.reals)


# --- timelines ---------------------------------------------------------------------------------


def test_response_from_the_first_real_commits_and_nothing_follows() -> None:
    farm = make_farm()
    a = farm.reals[0]
    plan = plan_for(farm)
    assert plan.start(0.0) == [Connect(1, a)]
    assert plan.deadline == 0.2  # the hedge timer
    assert plan.on_connected(1, 0.01) == [Replay(1)]
    assert plan.deadline == 5.01  # response_timeout, no more hedging
    assert plan.on_response(1, 0.02) == [Commit(1, a)]
    assert plan.done and plan.real is a and plan.deadline is None
    assert plan.on_timer(100.0) == []
    assert plan.on_failed(1, 100.0, "reset") == []
    assert (a.active, a.total, a.pending, a.failed_attempts) == (1, 1, 0, 0)


def test_refused_reassigns_at_once() -> None:
    farm = make_farm()
    a, b, _ = farm.reals
    plan = plan_for(farm)
    plan.start(0.0)
    assert plan.on_failed(1, 0.003, "refused") == [Connect(2, b)]
    assert (a.failed_attempts, a.reassigns, a.pending) == (1, 1, 0)
    assert plan.on_connected(2, 0.004) == [Replay(2)]
    assert plan.on_response(2, 0.005) == [Commit(2, b)]


def test_black_holed_first_real_is_hedged_and_found_out_at_its_own_timeout() -> None:
    """The hedge wins; a is detached, keeps dialling, and only its own connect_timeout (1 s
    here) makes it a failure: a busy real that answers a retransmitted SYN is never blamed."""
    farm = make_farm()
    a, b, _ = farm.reals
    plan = plan_for(farm)
    plan.start(0.0)
    assert plan.on_timer(0.1) == []  # early timer: nothing due
    assert plan.on_timer(0.2) == [Connect(2, b)]
    actions = plan.on_connected(2, 0.21)
    assert shape(actions) == [("Detach", 1), ("Replay", 2)]
    [verdict] = detached(actions)
    assert plan.on_response(2, 0.22) == [Commit(2, b)]
    assert (a.failed_attempts, a.reassigns, a.pending) == (0, 1, 1)  # still dialling
    assert verdict.deadline == 1.0
    verdict.on_timer(1.0)
    verdict.on_timer(1.0)  # reported once
    assert (a.failed_attempts, a.pending, a.active) == (1, 0, 0)
    assert (b.failed_attempts, b.active, b.total) == (0, 1, 1)
    assert plan.on_connected(1, 0.3) == []  # the plan no longer owns attempt 1


def test_a_detached_attempt_that_connects_late_is_no_verdict() -> None:
    """a's SYN was dropped (full accept queue) and its retransmission answered at 1.0 s:
    b had won meanwhile; a is alive, so nothing counts against it."""
    farm = make_farm()
    a, _, _ = farm.reals
    plan = plan_for(farm)
    plan.start(0.0)
    plan.on_timer(0.2)
    [verdict] = detached(plan.on_connected(2, 0.3))
    verdict.on_connected(0.99)
    assert (a.failed_attempts, a.pending, a.consecutive_failures) == (0, 0, 0)
    assert farm.outcomes == 1  # a abandoned; b not answered yet


def test_a_detached_attempt_that_is_refused_counts() -> None:
    farm = make_farm()
    a = farm.reals[0]
    plan = plan_for(farm)
    plan.start(0.0)
    plan.on_timer(0.2)
    [verdict] = detached(plan.on_connected(2, 0.3))
    verdict.on_failed(0.4, "Connection refused")
    assert (a.failed_attempts, a.pending) == (1, 0)


def test_a_refused_hedge_is_replaced_at_once() -> None:
    """a black-holed, its hedge b refuses: c starts at once, not at a's connect_timeout."""
    farm = make_farm(n=4)
    a, b, c, _ = farm.reals
    plan = plan_for(farm)
    plan.start(0.0)
    assert plan.on_timer(0.2) == [Connect(2, b)]
    assert plan.on_failed(2, 0.21, "refused") == [Connect(3, c)]
    assert (b.failed_attempts, b.reassigns, a.failed_attempts) == (1, 1, 0)
    assert plan.deadline == pytest.approx(0.41)
    assert shape(plan.on_connected(3, 0.22)) == [("Detach", 1), ("Replay", 3)]
    assert (a.failed_attempts, a.reassigns) == (0, 1)


def test_a_refused_first_attempt_beside_a_young_hedge_waits_for_the_hedge_timer() -> None:
    farm = make_farm(n=4)
    plan = plan_for(farm)
    plan.start(0.0)
    plan.on_timer(0.2)
    assert plan.on_failed(1, 0.3, "refused") == []  # b, started at 0.2, is not overdue yet
    assert plan.deadline == 0.4


def test_a_hedge_that_loses_the_race_young_is_not_blamed() -> None:
    """a answers at 0.25, just after b was started at 0.2: b is detached; it connects too."""
    farm = make_farm()
    a, b, _ = farm.reals
    plan = plan_for(farm)
    plan.start(0.0)
    plan.on_timer(0.2)
    [verdict] = detached(plan.on_connected(1, 0.25))
    verdict.on_connected(0.26)
    assert (b.failed_attempts, b.pending, b.reassigns) == (0, 0, 0)
    assert a.failed_attempts == 0


def test_both_black_holed_gives_up_when_every_real_timed_out() -> None:
    farm = make_farm(n=2)
    a, b = farm.reals
    plan = plan_for(farm)
    plan.start(0.0)
    assert plan.on_timer(0.2) == [Connect(2, b)]
    assert plan.deadline == 0.4
    assert plan.on_timer(0.4) == []  # no third real to hedge to
    assert plan.deadline == 1.0
    assert plan.on_timer(1.0) == [Abort(1)]  # a's connect_timeout; b still under way
    assert plan.deadline == 1.2
    assert plan.on_timer(1.2) == [Abort(2), GiveUp(EVERY_REAL_FAILED)]
    assert plan.done and plan.deadline is None
    assert (a.failed_attempts, b.failed_attempts) == (1, 1)
    assert (a.reassigns, b.reassigns) == (1, 0)
    assert settled(farm)


def test_a_late_timer_handles_everything_due_in_order() -> None:
    farm = make_farm(n=2)
    plan = plan_for(farm)
    plan.start(0.0)
    # the hedge (due 0.2) first, then a's timeout (due 1.0); b's clock starts now
    assert plan.on_timer(5.0) == [Connect(2, farm.reals[1]), Abort(1)]
    assert plan.deadline == 5.2


def test_accepted_but_silent_real_times_out_and_the_bytes_go_elsewhere() -> None:
    farm = make_farm()
    a, b, _ = farm.reals
    plan = plan_for(farm)
    plan.start(0.0)
    assert plan.on_connected(1, 0.01) == [Replay(1)]
    assert plan.on_timer(5.0) == []
    assert plan.on_timer(5.01) == [Abort(1), Connect(2, b)]
    assert plan.attempt(1).reason == "no response"
    assert (a.failed_attempts, a.active, a.total, a.reassigns) == (1, 0, 0, 1)
    assert plan.on_connected(2, 5.02) == [Replay(2)]  # the replay goes to b
    assert plan.on_response(2, 5.03) == [Commit(2, b)]


def test_closed_before_response_reassigns() -> None:
    farm = make_farm()
    plan = plan_for(farm)
    plan.start(0.0)
    plan.on_connected(1, 0.01)
    assert connects(plan.on_failed(1, 0.02, "closed before response")) == [farm.reals[1]]


def test_a_connection_gives_up_only_when_every_real_in_service_refused() -> None:
    """reassign 2 no longer ends a connection early: all five reals are tried in turn."""
    farm = make_farm(n=5, reassign=2)
    plan = plan_for(farm, hedge_delay=None)
    tried = connects(plan.start(0.0))
    for attempt_id in range(1, 5):
        tried += connects(plan.on_failed(attempt_id, 0.1 * attempt_id, "refused"))
    assert plan.on_failed(5, 0.5, "refused") == [GiveUp(EVERY_REAL_FAILED)]
    assert tried == farm.reals
    assert [r.reassigns for r in farm.reals] == [1, 1, 1, 1, 0]


def test_reassign_bounds_how_many_reals_race_at_once() -> None:
    """reassign 1: one hedge beside the first attempt, no third racer; after both time
    out the last real is still tried, alone."""
    farm = make_farm(n=3, reassign=1)
    _, b, c = farm.reals
    plan = plan_for(farm)
    plan.start(0.0)
    assert plan.on_timer(0.2) == [Connect(2, b)]
    assert plan.on_timer(0.4) == []  # the budget allows no second hedge
    assert plan.on_timer(1.0) == [Abort(1)]
    assert plan.on_timer(1.2) == [Abort(2), Connect(3, c)]
    assert plan.deadline == pytest.approx(1.4)  # c is not a last resort: hedged as usual


def fail_now(farm: Serverfarm, real: Real, now: float = 0.0) -> None:
    """One refused attempt on `real` (with numconns 1 it is FAILED)."""
    real.pending += 1
    farm.failed(real, "192.0.2.1", now, "refused")


def test_last_resort_tries_failed_reals_one_at_a_time() -> None:
    """Panic off: the one available real refuses, then the FAILED ones are tried in turn,
    without hedging, before the client is told remote-connection-failed."""
    farm = make_farm(n=3, faildetect=Faildetect(1, 100), farm={"panic_threshold": 0})
    a, b, c = farm.reals
    fail_now(farm, b)
    fail_now(farm, c)
    plan = plan_for(farm)
    assert plan.start(0.0) == [Connect(1, a)]
    [again] = connects(plan.on_failed(1, 0.01, "refused"))
    assert again in (b, c) and plan.last_resort
    assert plan.deadline == pytest.approx(1.01)  # its connect_timeout: no hedge
    [third] = connects(plan.on_failed(2, 0.02, "refused"))
    assert {again, third} == {b, c}
    assert plan.on_failed(3, 0.03, "refused") == [GiveUp(EVERY_REAL_FAILED)]
    assert settled(farm)


def test_panic_balances_over_every_real_in_service() -> None:
    """Two of three PROBE_FAILED (33% available, under 50%): panic; picks use all three;
    one PanicChange on entry and one on exit."""
    farm = make_farm(n=3)
    a, b, c = farm.reals
    farm.probe_result(b, False, 0.0)
    assert not farm.panic  # 2 of 3 available
    farm.probe_result(c, False, 0.0)
    assert farm.panic
    picked = set()
    for i in range(6):
        plan = ConnectPlan(farm, f"192.0.2.{i}", 1.0, None, 5.0)
        picked |= set(connects(plan.start(0.0)))
        plan.cancel(0.0)
    assert picked == {a, b, c}
    farm.probe_result(b, True, 1.0)
    assert not farm.panic
    panics = [e for e in farm.drain_events() if isinstance(e, PanicChange)]
    assert [(e.panic, e.available, e.inservice) for e in panics] == [(True, 1, 3), (False, 2, 3)]


# --- the queue (max_connecting) --------------------------------------------------------------


def queued_farm(**farm: Any) -> CountingFarm:
    return make_farm(n=1, farm={"max_connecting": 1, "queue_timeout": 10.0, **farm})


def test_a_connection_waits_while_the_real_has_max_connecting_attempts() -> None:
    farm = queued_farm()
    [real] = farm.reals
    first, second = plan_for(farm), ConnectPlan(farm, "192.0.2.9", 1.0, 0.2, 5.0, 10.0)
    assert first.start(0.0) == [Connect(1, real)]
    assert second.start(0.0) == [Queued()]
    assert second.deadline == 10.0 and farm.queue[0] is second
    assert farm.next_waiter(0.1) is None  # the slot is still taken
    first.on_connected(1, 0.1)
    assert first.on_response(1, 0.2) == [Commit(1, real)]
    assert farm.next_waiter(0.2) is second and not farm.queue
    assert second.on_wake(0.2) == [Connect(1, real)]
    assert real.pending == 1 and real.active == 1


def test_a_queued_connection_gives_up_at_queue_timeout() -> None:
    farm = queued_farm()
    first, second = plan_for(farm), ConnectPlan(farm, "192.0.2.9", 1.0, 0.2, 5.0, 10.0)
    first.start(0.0)
    second.start(0.0)
    assert second.on_timer(9.9) == []
    [give_up] = second.on_timer(10.0)
    assert isinstance(give_up, GiveUp) and "busy" in give_up.reason
    assert not farm.queue and farm.queue_timeouts == 1 and farm.queued_total == 1


def test_a_full_queue_refuses_at_once() -> None:
    farm = queued_farm(queue_length=1)
    plans = [ConnectPlan(farm, f"192.0.2.{i}", 1.0, 0.2, 5.0, 10.0) for i in range(3)]
    assert [type(p.start(0.0)[0]).__name__ for p in plans[:2]] == ["Connect", "Queued"]
    assert plans[2].start(0.0) == [GiveUp(QUEUE_FULL)]


def test_a_client_that_leaves_the_queue_is_forgotten() -> None:
    farm = queued_farm()
    first, second = plan_for(farm), ConnectPlan(farm, "192.0.2.9", 1.0, 0.2, 5.0, 10.0)
    first.start(0.0)
    second.start(0.0)
    assert second.cancel(1.0) == [] and not farm.queue
    first.cancel(1.0)
    assert farm.next_waiter(1.0) is None and settled(farm)


def test_a_hedge_never_goes_to_a_real_at_its_limit() -> None:
    farm = make_farm(n=2, farm={"max_connecting": 1})
    a, b = farm.reals
    other = ConnectPlan(farm, "192.0.2.9", 1.0, None, 5.0)
    assert other.start(0.0) == [Connect(1, a)]  # takes a's only slot
    plan = plan_for(farm)
    assert plan.start(0.0) == [Connect(1, b)]
    assert plan.on_timer(0.2) == []  # a is busy: no hedge, b runs on


def test_a_hedge_loser_keeps_its_slot_until_its_verdict() -> None:
    """The detached SYN still occupies the real's accept queue: it counts in max_connecting."""
    farm = make_farm(n=2, farm={"max_connecting": 1})
    a, _ = farm.reals
    plan = plan_for(farm)
    plan.start(0.0)
    plan.on_timer(0.2)
    [verdict] = detached(plan.on_connected(2, 0.3))
    assert a.connecting == 1
    assert ConnectPlan(farm, "192.0.2.9", 1.0, None, 5.0).start(0.3) == [Queued()]
    verdict.on_connected(0.5)
    assert a.connecting == 0 and farm.next_waiter(0.5) is not None


def test_seed_reassign_4_tries_every_in_service_real() -> None:
    """The seed: 3 reals in service, reassign 4: all three are tried, the spare never."""
    farm = make_farm(n=4, reassign=4)
    farm.set_inservice(farm.reals[3], False, 0.0)
    plan = plan_for(farm, hedge_delay=None)
    tried = connects(plan.start(0.0))
    tried += connects(plan.on_failed(1, 0.1, "refused"))
    tried += connects(plan.on_failed(2, 0.2, "refused"))
    assert plan.on_failed(3, 0.3, "refused") == [GiveUp(EVERY_REAL_FAILED)]
    assert tried == farm.reals[:3]


def test_no_real_in_service() -> None:
    farm = make_farm(n=1, inservice=False)
    plan = plan_for(farm)
    assert plan.start(0.0) == [GiveUp(NO_REAL)]
    assert plan.done and plan.deadline is None


def test_cancel_abandons_every_attempt_without_blaming_reals() -> None:
    farm = make_farm()
    plan = plan_for(farm)
    plan.start(0.0)
    plan.on_timer(0.2)
    assert plan.cancel(0.3) == [Abort(1), Abort(2)]
    assert settled(farm) and all(r.failed_attempts == 0 for r in farm.reals)
    assert plan.on_timer(10.0) == [] and plan.deadline is None


def test_hedging_disabled_waits_for_connect_timeout() -> None:
    farm = make_farm()
    plan = plan_for(farm, hedge_delay=None)
    plan.start(0.0)
    assert plan.deadline == 1.0
    assert plan.on_timer(1.0) == [Abort(1), Connect(2, farm.reals[1])]


def run(plan: ConnectPlan, now: float, dead: set[Real]) -> float:
    """Drive a plan to its end: reals in `dead` never answer, the others answer at once.
    A detached attempt on a dead real is then found out at its own deadline."""
    actions = plan.start(now)
    verdicts: list[DetachedAttempt] = []
    while not plan.done:
        live = [a for a in plan.attempts if a.phase is Phase.CONNECTING and a.real not in dead]
        if live:
            now += 0.001
            verdicts += detached(plan.on_connected(live[0].id, now))
            plan.on_response(live[0].id, now)
        else:
            assert plan.deadline is not None, actions
            now = plan.deadline
            actions = plan.on_timer(now)
    for verdict in verdicts:
        verdict.on_timer(verdict.deadline)
    if plan.winner is not None:
        plan.farm.closed(plan.winner.real, now)
    return now


def test_a_black_holed_real_is_failed_by_faildetect_and_then_skipped() -> None:
    """numconns 3: three clients hedged around the dead real fail it (each detached attempt
    at its own connect_timeout); then it is not tried."""
    farm = make_farm(faildetect=Faildetect(numconns=3, numclients=100))
    dead = farm.reals[0]
    now, costs = 0.0, []
    while farm.state(dead, now) is RealState.OPERATIONAL:
        start = now
        now = run(plan_for(farm), now, {dead}) + 2.0
        costs.append(now - 2.0 - start)
        assert len(costs) <= 20
    assert dead.failed_attempts == 3 and dead.reassigns == 3
    assert max(costs) < 0.21  # each client lost about hedge_delay, not connect_timeout
    for _ in range(20):
        plan = plan_for(farm)
        run(plan, now, {dead})
        assert plan.attempts[0].real is not dead
    assert settled(farm)


def test_for_farm_uses_the_farm_settings() -> None:
    farm = make_farm()
    plan = ConnectPlan.for_farm(farm, CLIENT)
    assert (plan.connect_timeout, plan.hedge_delay, plan.response_timeout) == (1.0, 0.2, 5.0)


# --- invariant: every attempt is reported to the farm exactly once -----------------------------

EVENT = st.tuples(st.sampled_from(["connected", "response", "failed", "timer", "cancel"]),
                  st.integers(1, 6), st.floats(0.0, 0.7))


@settings(max_examples=300, deadline=None)
@given(events=st.lists(EVENT, max_size=30), n=st.integers(1, 4), reassign=st.integers(1, 4),
       hedge=st.sampled_from([None, 0.2]))
def test_random_event_orders_keep_the_farm_exact(
        events: list[tuple[str, int, float]], n: int, reassign: int,
        hedge: float | None) -> None:
    farm = make_farm(n=n, reassign=reassign)
    plan = plan_for(farm, hedge_delay=hedge)
    now = 0.0
    started = len(connects(plan.start(now)))
    verdicts: list[DetachedAttempt] = []
    for kind, attempt_id, step in events:
        now += step
        if kind == "connected":
            actions = plan.on_connected(attempt_id, now)
        elif kind == "response":
            actions = plan.on_response(attempt_id, now)
        elif kind == "failed":
            actions = plan.on_failed(attempt_id, now, "refused")
        elif kind == "timer":
            actions = plan.on_timer(now)
        else:
            actions = plan.cancel(now)
        started += len(connects(actions))
        verdicts += detached(actions)
        assert len({a.real for a in plan.attempts}) == len(plan.attempts)  # each real once
        assert sum(isinstance(a, Commit) for a in actions) <= 1
        racing = [a for a in plan.attempts if a.phase is Phase.CONNECTING]
        assert len(racing) <= reassign + 1  # reassign bounds the reals raced at once
    assert started == len(plan.attempts)
    plan.cancel(now + 100)
    for verdict in verdicts:
        verdict.on_timer(now + 100)
    if plan.winner is not None:
        farm.closed(plan.winner.real, now + 100)
    assert settled(farm)
    assert all(r.active == 0 for r in farm.reals)
    assert farm.outcomes == started  # connected, failed or abandoned: exactly once each
    assert sum(r.total for r in farm.reals) == (1 if plan.winner else 0)
