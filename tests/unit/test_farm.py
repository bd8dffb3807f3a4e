"""Serverfarm engine: every IOS rule as a timeline on a fake clock, plus invariants (hypothesis)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from xmppgw import config
from xmppgw.addresses import client_ip
from xmppgw.config import Address, Faildetect, RealConfig, ServerfarmConfig
from xmppgw.slb.farm import DoubleReport, Real, RealState, Serverfarm, StateChange

ROOT = Path(__file__).resolve().parents[2]


def make_farm(*weights: int, predictor: str = "roundrobin", now: float = 0.0,
              slowstart: float = 0.0, **real: Any) -> Serverfarm:
    reals = tuple(RealConfig(Address(f"10.0.0.{i + 1}", None), weight=w, **real)
                  for i, w in enumerate(weights))
    farm = ServerfarmConfig("F", predictor=predictor, slowstart=slowstart, reals=reals,
                            max_connecting=None)
    return Serverfarm(farm, now)


def open_conn(farm: Serverfarm, client: str, now: float,
              tried: frozenset[Real] = frozenset()) -> Real | None:
    """pick + connected: one successful connection."""
    real = farm.pick(client, now, tried)
    if real is not None:
        farm.connected(real, now)
    return real


def changes(farm: Serverfarm, real: Real) -> list[StateChange]:
    """`real`'s recorded state changes not drained yet, oldest first (what gets logged)."""
    return [c for c in farm.drain_events() if isinstance(c, StateChange) and c.real == real.name]


def fail_on(farm: Serverfarm, real: Real, client: str, now: float) -> None:
    """An attempt on `real` (whatever the predictor would say) that fails."""
    real.pending += 1  # as if picked
    farm.failed(real, client, now, "refused")


# --- the seed --------------------------------------------------------------------------------


def test_seed_setup_never_picks_the_spare_and_balances_the_others() -> None:
    """4 reals weight 5, leastconns, the 4th `no inservice`: show ip slb serverfarms detail."""
    cfg = config.load(ROOT / "conf" / "seed.toml").farm("XMPP")
    farm = Serverfarm(cfg, 0.0)
    spare = farm.reals[3]
    assert [r.config.reassign for r in farm.reals] == [4] * 4
    assert farm.state(spare, 0.0) is RealState.OUTOFSERVICE
    owned: list[Real] = []
    for i in range(1245):
        real = open_conn(farm, f"198.51.100.{i % 250}", i * 0.01)
        assert real is not None and real is not spare
        owned.append(real)
    assert sorted(r.active for r in farm.reals[:3]) == [415, 415, 415]
    assert spare.active == 0 and spare.total == 0
    assert sum(r.active for r in farm.reals) == 1245


def test_client_ip_ignores_the_port() -> None:
    assert client_ip("127.0.0.1") == "127.0.0.1"
    assert client_ip("::1") == "::1"
    assert client_ip("2001:db8::1") == "2001:db8::1"
    assert client_ip("?") == "?"
    assert client_ip("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_ip("2001:DB8::1") == "2001:db8::1"


# --- faildetect ---------------------------------------------------------------------------------


def test_faildetect_numconns_exact() -> None:
    """numconns 5 (numclients out of reach): FAILED at the 5th consecutive failure, not before."""
    farm = make_farm(8, 8, faildetect=Faildetect(numconns=5, numclients=100))
    a = farm.reals[0]
    for n in range(1, 5):
        fail_on(farm, a, "192.0.2.1", float(n))
        assert farm.state(a, float(n)) is RealState.OPERATIONAL
    fail_on(farm, a, "192.0.2.1", 5.0)
    assert farm.state(a, 5.0) is RealState.FAILED
    assert a.failed_attempts == 5
    [change] = farm.drain_events()
    assert (change.time, change.old, change.new) == (5.0, RealState.OPERATIONAL, RealState.FAILED)
    assert "numconns 5" in change.reason


def test_faildetect_success_resets_the_consecutive_count() -> None:
    farm = make_farm(8, faildetect=Faildetect(numconns=3, numclients=100))
    a = farm.reals[0]
    fail_on(farm, a, "192.0.2.1", 1.0)
    fail_on(farm, a, "192.0.2.2", 2.0)
    assert open_conn(farm, "192.0.2.3", 3.0) is a
    fail_on(farm, a, "192.0.2.4", 4.0)
    fail_on(farm, a, "192.0.2.5", 5.0)
    assert farm.state(a, 5.0) is RealState.OPERATIONAL
    fail_on(farm, a, "192.0.2.6", 6.0)
    assert farm.state(a, 6.0) is RealState.FAILED


def test_faildetect_numclients_exact_and_a_client_counts_once() -> None:
    """numclients 3: one client failing ten times counts once; the third client fails it."""
    farm = make_farm(8, 8, faildetect=Faildetect(numconns=100, numclients=3))
    a = farm.reals[0]
    for _ in range(10):
        fail_on(farm, a, "192.0.2.1", 1.0)
    fail_on(farm, a, "192.0.2.2", 2.0)
    assert farm.state(a, 2.0) is RealState.OPERATIONAL
    fail_on(farm, a, "2001:db8::3", 3.0)
    assert farm.state(a, 3.0) is RealState.FAILED
    assert "numclients 3" in changes(farm, a)[-1].reason


def test_faildetect_success_resets_the_client_set() -> None:
    farm = make_farm(8, faildetect=Faildetect(numconns=100, numclients=2))
    a = farm.reals[0]
    fail_on(farm, a, "192.0.2.1", 1.0)
    open_conn(farm, "192.0.2.9", 2.0)
    fail_on(farm, a, "192.0.2.2", 3.0)
    assert farm.state(a, 3.0) is RealState.OPERATIONAL


# --- retry: FAILED -> TESTING -> OPERATIONAL or FAILED --------------------------------------


def failed_farm(retry: float = 30.0) -> tuple[Serverfarm, Real, Real]:
    """Two reals; the first FAILED at t=10 (numconns 1)."""
    farm = make_farm(8, 8, retry=retry, faildetect=Faildetect(numconns=1, numclients=1))
    a, b = farm.reals
    fail_on(farm, a, "192.0.2.1", 10.0)
    return farm, a, b


def test_failed_real_gets_nothing_until_retry_then_one_test_connection() -> None:
    farm, a, b = failed_farm()
    for i in range(50):
        now = 10.0 + i * 0.5  # up to 34.5 s
        assert farm.pick(f"198.51.100.{i}", now) is b
    assert farm.state(a, 39.999) is RealState.FAILED
    assert farm.state(a, 40.0) is RealState.TESTING
    test = farm.pick("198.51.100.200", 41.0)
    assert test is a  # the next connection for which it qualifies
    assert farm.pick("198.51.100.201", 41.1) is b  # one test at a time
    farm.connected(a, 41.2)
    assert farm.state(a, 41.2) is RealState.OPERATIONAL
    assert [(c.time, c.new) for c in changes(farm, a)] == [
        (10.0, RealState.FAILED), (40.0, RealState.TESTING), (41.2, RealState.OPERATIONAL)]


def test_failed_test_connection_fails_the_real_for_another_retry() -> None:
    farm, a, b = failed_farm()
    assert farm.pick("198.51.100.1", 40.0) is a
    farm.failed(a, "198.51.100.1", 40.5, "timeout")
    assert farm.state(a, 40.5) is RealState.FAILED
    assert a.retry_at == 70.5
    assert all(farm.pick(f"198.51.100.{i}", 70.0) is b for i in range(20))
    assert farm.state(a, 70.5) is RealState.TESTING
    assert "test connection failed: timeout" in changes(farm, a)[-2].reason


def test_refresh_records_testing_without_traffic() -> None:
    farm, _, _ = failed_farm(retry=5.0)
    farm.drain_events()
    assert farm.refresh(14.0) == []
    [change] = farm.refresh(100.0)
    assert (change.time, change.new) == (15.0, RealState.TESTING)
    assert farm.drain_events() == [change]


def test_abandoned_test_connection_lets_the_next_one_test() -> None:
    farm, a, _ = failed_farm()
    assert farm.pick("198.51.100.1", 40.0) is a
    farm.abandoned(a, 40.1)
    assert farm.pick("198.51.100.2", 40.2) is a


# --- maxconns ---------------------------------------------------------------------------------


def test_maxconns_skips_the_real_shows_maxconns_and_recovers_on_close() -> None:
    farm = make_farm(8, 8, maxconns=2)
    a, b = farm.reals
    picks = [farm.pick(f"198.51.100.{i}", 1.0) for i in range(4)]
    assert sorted(r.name for r in picks if r) == [a.name, a.name, b.name, b.name]
    owned = [r for r in picks if r is not None]
    assert farm.state(a, 1.0) is RealState.MAXCONNS  # in-flight attempts count
    assert farm.pick("198.51.100.9", 1.0) is None
    for real in owned:
        farm.connected(real, 1.0)
    assert farm.state(b, 2.0) is RealState.MAXCONNS
    farm.closed(b, 3.0)
    assert farm.state(b, 3.0) is RealState.OPERATIONAL
    assert farm.pick("198.51.100.10", 3.0) is b
    assert all(c.new is not RealState.MAXCONNS for c in farm.drain_events())


# --- standby -----------------------------------------------------------------------------------


def standby_farm() -> Serverfarm:
    reals = tuple(RealConfig(Address(f"10.0.0.{i}", None), standby=i == 3) for i in (1, 2, 3))
    cfg = ServerfarmConfig("F", predictor="leastconns", slowstart=0, reals=reals)
    return Serverfarm(cfg, 0.0)


def test_standby_is_used_only_when_no_other_real_can_take_it() -> None:
    farm = standby_farm()
    a, b, spare = farm.reals
    assert spare.standby
    assert all(open_conn(farm, f"198.51.100.{i}", 1.0) is not spare for i in range(100))
    assert farm.pick("198.51.100.200", 1.0, frozenset({a})) is b
    assert farm.pick("198.51.100.201", 1.0, frozenset({a, b})) is spare  # reassign
    farm.set_inservice(a, False, 2.0)
    fail_on(farm, b, "192.0.2.1", 2.0)
    fail_on(farm, b, "192.0.2.2", 2.0)  # numclients 2: FAILED
    assert farm.state(b, 2.0) is RealState.FAILED
    assert farm.pick("198.51.100.202", 3.0) is spare
    farm.set_inservice(a, True, 4.0)
    assert farm.pick("198.51.100.203", 4.0) is a


# --- inservice / drain ---------------------------------------------------------------------------


def test_outofservice_takes_nothing_new_and_drains_at_the_deadline() -> None:
    farm = make_farm(8, 8)
    a, b = farm.reals
    for i in range(10):
        open_conn(farm, f"198.51.100.{i}", 1.0)
    assert a.active == 5
    change = farm.set_inservice(a, False, 2.0, drain_timeout=60.0)
    assert change is not None and change.new is RealState.OUTOFSERVICE
    assert "drain 60 s" in change.reason
    assert all(open_conn(farm, f"198.51.100.{i}", 3.0) is b for i in range(20))
    farm.closed(a, 10.0)  # existing connections close normally
    assert a.active == 4
    assert farm.reals_to_drain(61.9) == []
    assert farm.reals_to_drain(62.0) == [a]
    for _ in range(4):
        farm.closed(a, 62.1)
    assert farm.reals_to_drain(63.0) == []
    farm.set_inservice(a, True, 70.0)
    assert a.drain_deadline is None and farm.state(a, 70.0) is RealState.OPERATIONAL
    # A drain that went through the admin table (wall clock -> loop time) is said as typed.
    change = farm.set_inservice(a, False, 71.0, drain_timeout=599.9887)
    assert change is not None and "(drain 600 s)" in change.reason


def test_inservice_again_forgets_a_passive_failure() -> None:
    farm, a, _ = failed_farm()
    farm.set_inservice(a, False, 11.0)
    farm.set_inservice(a, True, 12.0)
    assert farm.state(a, 12.0) is RealState.OPERATIONAL
    assert [c.new for c in changes(farm, a)] == [
        RealState.FAILED, RealState.OUTOFSERVICE, RealState.OPERATIONAL]


# --- probes ------------------------------------------------------------------------------------


def test_probe_failed_takes_nothing_and_comes_back_with_slow_start() -> None:
    farm = make_farm(8, 8, slowstart=10.0)
    a, b = farm.reals
    assert farm.effective_weight(a, 0.0) == 8  # no slow start at gateway start
    farm.probe_result(a, False, 1.0)
    assert farm.state(a, 1.0) is RealState.PROBE_FAILED
    assert all(farm.pick(f"198.51.100.{i}", 2.0) is b for i in range(10))
    change = farm.probe_result(a, True, 5.0)
    assert change is not None and change.new is RealState.OPERATIONAL
    assert farm.effective_weight(a, 5.0) == 8 * 0.05
    assert farm.effective_weight(a, 10.0) == 4.0
    assert farm.effective_weight(a, 15.0) == 8


# --- slow start --------------------------------------------------------------------------------


def test_slowstart_keeps_leastconns_from_sending_every_login_to_the_returning_real() -> None:
    cfg = ServerfarmConfig("F", predictor="leastconns", slowstart=30.0, reals=tuple(
        RealConfig(Address(f"10.0.0.{i}", None), inservice=i != 3) for i in (1, 2, 3)))
    farm = Serverfarm(cfg, 0.0)
    a, b, c = farm.reals
    for i in range(200):
        open_conn(farm, f"198.51.100.{i % 200}", 1.0)
    assert (a.active, b.active) == (100, 100)
    farm.set_inservice(c, True, 100.0)
    burst = [open_conn(farm, f"203.0.113.{i}", 100.0) for i in range(50)]
    got = burst.count(c)
    assert 1 <= got <= 7  # 5% of its weight: about 100 * 0.05 connections, not all 50
    # half-way through the ramp it holds about half the others' per-weight load
    for i in range(100):
        open_conn(farm, f"203.0.113.{i}", 115.0)
    assert abs(c.active - (a.active + b.active) / 2 * 0.5) <= 2
    for i in range(100):
        open_conn(farm, f"203.0.113.{i}", 130.0)
    assert abs(c.active - (a.active + b.active) / 2) <= 1


def test_slowstart_zero_disables_it() -> None:
    farm = make_farm(8, 8, slowstart=0)
    a = farm.reals[0]
    farm.set_inservice(a, False, 1.0)
    farm.set_inservice(a, True, 2.0)
    assert farm.effective_weight(a, 2.0) == 8


# --- counters ----------------------------------------------------------------------------------


def test_counters_and_events() -> None:
    farm = make_farm(8)
    a = farm.reals[0]
    real = farm.pick("198.51.100.1", 1.0)
    assert real is a and (a.pending, a.active) == (1, 0)
    farm.connected(a, 1.1)
    assert (a.pending, a.active, a.total) == (0, 1, 1)
    farm.closed(a, 2.0)
    with pytest.raises(DoubleReport):  # a second report is a caller's bug: caught, not clamped
        farm.closed(a, 2.0)
    for report in (lambda: farm.connected(a, 2.0), lambda: farm.abandoned(a, 2.0),
                   lambda: farm.failed(a, "198.51.100.1", 2.0, "refused")):
        with pytest.raises(DoubleReport):  # no attempt in flight
            report()
    assert (a.pending, a.active, a.total, a.failed_attempts) == (0, 0, 1, 0)
    farm.reassigned(a, 3.0)
    assert a.reassigns == 1
    farm.set_inservice(a, False, 4.0)
    assert [c.new for c in farm.drain_events()] == [RealState.OUTOFSERVICE]
    assert farm.drain_events() == []
    assert farm.find("10.0.0.1") is a and farm.find("10.9.9.9") is None


# --- invariants ----------------------------------------------------------------------------------

PREDICTOR = st.sampled_from(["roundrobin", "leastconns", "sourcehash"])
NOT_PICKABLE = {RealState.OUTOFSERVICE, RealState.FAILED, RealState.PROBE_FAILED,
                RealState.MAXCONNS}
PANIC_UNPICKABLE = {RealState.OUTOFSERVICE, RealState.MAXCONNS}


class FarmMachine(RuleBasedStateMachine):
    """Random operations; the engine must never pick what it must not, and counts add up."""

    attempts = Bundle("attempts")
    conns = Bundle("conns")

    def __init__(self) -> None:
        super().__init__()
        self.farm: Serverfarm | None = None
        self.now = 0.0
        self.connected_calls = 0
        self.closed_calls = 0
        self.failed_calls = 0

    @precondition(lambda self: self.farm is None)
    @rule(predictor=PREDICTOR, weights=st.lists(st.integers(1, 10), min_size=1, max_size=5),
          maxconns=st.none() | st.integers(1, 4), standby=st.booleans(),
          numconns=st.integers(1, 4), numclients=st.integers(1, 3),
          retry=st.floats(1.0, 30.0), slowstart=st.sampled_from([0.0, 10.0]))
    def setup(self, predictor: str, weights: list[int], maxconns: int | None, standby: bool,
              numconns: int, numclients: int, retry: float, slowstart: float) -> None:
        reals = tuple(RealConfig(Address(f"10.0.0.{i + 1}", None), weight=w, retry=retry,
                                 maxconns=maxconns, inservice=i != 0 or len(weights) == 1,
                                 faildetect=Faildetect(numconns, numclients),
                                 standby=standby and i == 1)  # the 2nd real
                      for i, w in enumerate(weights))
        cfg = ServerfarmConfig("F", predictor=predictor, slowstart=slowstart, reals=reals,
                            max_connecting=None)
        self.farm = Serverfarm(cfg, 0.0)

    @property
    def f(self) -> Serverfarm:
        assert self.farm is not None
        return self.farm

    def reals(self) -> list[Real]:
        return self.f.reals

    @precondition(lambda self: self.farm is not None)
    @rule(target=attempts, client=st.integers(0, 6), tried=st.sets(st.integers(0, 4)))
    def pick(self, client: int, tried: set[int]) -> Any:
        farm = self.f
        reals = self.reals()
        excluded = frozenset(reals[i] for i in tried if i < len(reals))
        states = {r: farm.state(r, self.now) for r in reals}
        pending = {r: r.pending for r in reals}
        room = {r: r.has_room() for r in reals}  # (shown MAXCONNS only when OPERATIONAL)
        real = farm.pick(f"192.0.2.{client}", self.now, excluded)
        if real is None:
            return None
        assert real not in excluded
        # In panic mode FAILED and PROBE_FAILED reals in service are pickable too.
        unpickable = PANIC_UNPICKABLE if farm.panic else NOT_PICKABLE
        assert states[real] not in unpickable, states[real]
        if states[real] is RealState.TESTING:
            assert pending[real] == 0
        if real.standby:
            for other in reals:
                if not other.standby and other not in excluded:
                    assert states[other] in unpickable or not room[other] or (
                        states[other] is RealState.TESTING and pending[other] > 0)
        return (real, client)

    @rule(target=conns, attempt=consumes(attempts))
    def connect(self, attempt: Any) -> Any:
        if attempt is None:
            return None
        real, _client = attempt
        self.f.connected(real, self.now)
        self.connected_calls += 1
        return real

    @rule(attempt=consumes(attempts))
    def fail(self, attempt: Any) -> None:
        if attempt is not None:
            real, client = attempt
            self.f.failed(real, f"192.0.2.{client}", self.now, "refused")
            self.failed_calls += 1

    @rule(attempt=consumes(attempts))
    def abandon(self, attempt: Any) -> None:
        if attempt is not None:
            self.f.abandoned(attempt[0], self.now)

    @rule(real=consumes(conns))
    def close(self, real: Any) -> None:
        if real is not None:
            self.f.closed(real, self.now)
            self.closed_calls += 1

    @precondition(lambda self: self.farm is not None)
    @rule(index=st.integers(0, 4), inservice=st.booleans(),
          drain=st.none() | st.floats(0.0, 10.0))
    def set_inservice(self, index: int, inservice: bool, drain: float | None) -> None:
        reals = self.reals()
        real = reals[index % len(reals)]
        self.f.set_inservice(real, inservice, self.now, drain)

    @precondition(lambda self: self.farm is not None)
    @rule(index=st.integers(0, 4), ok=st.booleans())
    def probe(self, index: int, ok: bool) -> None:
        reals = self.reals()
        self.f.probe_result(reals[index % len(reals)], ok, self.now)

    @rule(seconds=st.floats(0.0, 20.0))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @invariant()
    def counters_add_up(self) -> None:
        if self.farm is None:
            return
        reals = self.reals()
        assert all(r.active >= 0 and r.pending >= 0 for r in reals)
        assert sum(r.total for r in reals) == self.connected_calls
        assert sum(r.active for r in reals) == self.connected_calls - self.closed_calls
        assert sum(r.failed_attempts for r in reals) == self.failed_calls
        for r in reals:
            if self.farm.state(r, self.now) is RealState.OUTOFSERVICE:
                assert not r.inservice
        available, inservice = self.farm.availability()
        assert self.farm.panic == (available * 100 < 50 * inservice)


TestFarmMachine = FarmMachine.TestCase
TestFarmMachine.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)


# --- reload ----------------------------------------------------------------------------------


def test_reconfigure_keeps_live_reals_adds_new_and_retires_removed() -> None:
    """A reload never drops a connection: kept reals keep their counters and state, a
    removed real leaves the picks but its connections stay counted on it until they end."""
    farm = make_farm(1, 1, predictor="leastconns")
    a, b = farm.reals
    open_conn(farm, "1.1.1.1", 0.0)
    open_conn(farm, "1.1.1.2", 0.0)
    assert (a.active, b.active) == (1, 1)
    for _ in range(a.config.faildetect.numconns):
        fail_on(farm, b, "9.9.9.9", 1.0)
    assert farm.state(b, 1.0) is RealState.FAILED
    new = ServerfarmConfig("F", predictor="roundrobin", slowstart=10.0, reals=(
        RealConfig(Address("10.0.0.2", None), weight=3),
        RealConfig(Address("10.0.0.9", None), weight=1)))
    retired = farm.reconfigure(new, 2.0)
    assert retired == [a] and a.active == 1  # still counted; the session will close it
    b2, c = farm.reals
    assert b2 is b and b.weight == 3 and farm.state(b, 2.0) is RealState.FAILED
    assert c.name == "10.0.0.9" and farm.state(c, 2.0) is RealState.OPERATIONAL
    assert farm.effective_weight(c, 2.0) < c.weight  # a new real ramps up (slow start)
    picks = {open_conn(farm, f"2.2.2.{i}", 3.0) for i in range(5)}
    assert picks == {c}  # a is gone from the picks, b is still FAILED
    farm.closed(a, 4.0)
    assert a.active == 0


def test_reconfigure_follows_a_changed_inservice_and_keeps_an_unchanged_one() -> None:
    farm = make_farm(1, 1)
    a, b = farm.reals
    farm.set_inservice(a, False, 0.0)  # an operator's `no inservice`
    same = ServerfarmConfig("F", reals=(RealConfig(Address("10.0.0.1", None)),
                                        RealConfig(Address("10.0.0.2", None), inservice=False)))
    farm.reconfigure(same, 1.0)
    assert farm.state(a, 1.0) is RealState.OUTOFSERVICE  # the file did not change: held
    assert farm.state(b, 1.0) is RealState.OUTOFSERVICE  # the file changed: followed
    back = ServerfarmConfig("F", reals=(RealConfig(Address("10.0.0.1", None)),
                                        RealConfig(Address("10.0.0.2", None))))
    farm.reconfigure(back, 2.0)
    assert farm.state(b, 2.0) is RealState.OPERATIONAL


# --- overload: only evidence about the real condemns it ---------------------------------------


def time_out_on(farm: Serverfarm, real: Real, client: str, now: float) -> None:
    real.pending += 1  # as if picked
    farm.failed(real, client, now, "timeout", silent=True)


def test_timeouts_never_fail_the_last_available_real() -> None:
    """Two reals, one FAILED (refusing): the other one's SYNs are dropped by a full accept
    queue; sixteen timeouts are counted but it stays in: silence is no proof of death."""
    farm = make_farm(5, 5, faildetect=Faildetect(numconns=2, numclients=100))
    a, b = farm.reals
    fail_on(farm, a, "192.0.2.1", 0.0)
    fail_on(farm, a, "192.0.2.1", 0.0)
    assert farm.state(a, 0.0) is RealState.FAILED
    for i in range(16):
        time_out_on(farm, b, f"192.0.2.{i}", 1.0)
    assert farm.state(b, 1.0) is RealState.OPERATIONAL
    assert b.failed_attempts == 16
    fail_on(farm, b, "192.0.2.1", 1.0)  # a refusal is evidence: it counts as ever
    assert farm.state(b, 1.0) is RealState.FAILED


def test_timeouts_still_fail_a_real_while_others_are_available() -> None:
    farm = make_farm(5, 5, faildetect=Faildetect(numconns=2, numclients=100))
    a, _ = farm.reals
    time_out_on(farm, a, "192.0.2.1", 0.0)
    time_out_on(farm, a, "192.0.2.2", 0.0)
    assert farm.state(a, 0.0) is RealState.FAILED


def test_an_answer_from_a_failed_real_brings_it_back() -> None:
    """In panic mode a FAILED real gets connections; one that answers is OPERATIONAL again."""
    farm = make_farm(5, 5, 5, faildetect=Faildetect(numconns=1, numclients=100))
    a, b, c = farm.reals
    fail_on(farm, a, "192.0.2.1", 0.0)
    fail_on(farm, b, "192.0.2.1", 0.0)
    assert farm.panic  # one of three available
    picked = {farm.pick(f"192.0.2.{i}", 1.0) for i in range(3)}
    assert picked == {a, b, c}
    farm.connected(a, 1.0)
    assert farm.state(a, 1.0) is RealState.OPERATIONAL and not farm.panic
    assert farm.drain_events()[-2].reason == "a connection succeeded"


def test_max_connecting_counts_attempts_of_every_worker() -> None:
    cfg = ServerfarmConfig("F", reals=(RealConfig(Address("10.0.0.1", None)),),
                           max_connecting=2)
    farm = Serverfarm(cfg, 0.0)
    [real] = farm.reals
    farm.observe_peers(real, 1, 0, 0, 0.0, 1, 0.0)  # another worker dials it once
    assert farm.pick("192.0.2.1", 0.0) is real
    assert farm.pick("192.0.2.2", 0.0) is None and farm.busy()
    farm.abandoned(real, 0.0)
    assert not farm.busy() and farm.pick("192.0.2.2", 0.0) is real


# --- the engine's shape ------------------------------------------------------------------------


def test_administrative_and_operational_state_are_apart() -> None:
    """`inservice` is the operator's word, `oper_state` the engine's finding; the recorded
    state (what `real_state` lines say) is OUTOFSERVICE while out, whatever the health."""
    farm, a, _ = failed_farm()
    farm.set_inservice(a, False, 11.0)
    assert (a.inservice, a.oper_state, a.recorded_state) == (
        False, RealState.FAILED, RealState.OUTOFSERVICE)
    farm.probe_result(a, False, 12.0)  # health moves on while out: nothing is recorded
    assert a.oper_state is RealState.PROBE_FAILED
    assert farm.state(a, 12.0) is RealState.OUTOFSERVICE
    assert [c.new for c in changes(farm, a)] == [RealState.FAILED, RealState.OUTOFSERVICE]
    farm.set_inservice(a, True, 13.0)  # back in: the probes' verdict shows
    assert [(c.old, c.new) for c in changes(farm, a)] == [
        (RealState.OUTOFSERVICE, RealState.PROBE_FAILED)]


def test_farm_and_predictors_do_not_import_each_other() -> None:
    """The engine's types live apart (slb/types.py, as HAProxy's server-t.h): predictors
    and types import no farm, and types and predictors import no config at run time."""
    import ast

    slb = ROOT / "xmppgw" / "slb"

    def imports(name: str) -> set[str]:
        tree = ast.parse((slb / f"{name}.py").read_text())
        out = set()
        for node in tree.body:  # module level only: `if TYPE_CHECKING:` blocks are skipped
            if isinstance(node, ast.ImportFrom) and node.module:
                out.add(node.module)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
        return out

    assert "xmppgw.slb.farm" not in imports("predictors") | imports("types")
    assert not any(m.startswith("xmppgw.config") for m in imports("predictors") | imports("types"))
