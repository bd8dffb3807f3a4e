"""Probe scheduling and rise/fall, on a fake clock: every rule as a timeline, no sleeping."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from xmppgw.config import Address, ProbeConfig, RealConfig, ServerfarmConfig
from xmppgw.health.state import (
    HealthSchedule,
    Outcome,
    ProbeChange,
    ProbeState,
    RealVerdict,
)
from xmppgw.slb.farm import RealState, Serverfarm

OK = Outcome(True, rtt=0.001)
FAIL = Outcome(False, "connecting: Connection refused")


def probe(rise: int = 2, fall: int = 3, interval: float = 2.0, timeout: float = 2.0,
          kind: str = "tcp") -> ProbeConfig:
    return ProbeConfig(kind, interval=interval, timeout=timeout, rise=rise, fall=fall)


def farm_config(*probes: ProbeConfig, reals: int = 1,
                own: dict[int, tuple[ProbeConfig, ...]] | None = None) -> ServerfarmConfig:
    own = own or {}
    return ServerfarmConfig("F", slowstart=0, probes=probes, reals=tuple(
        RealConfig(Address(f"10.0.0.{i + 1}", None), probes=own.get(i))
        for i in range(reals)))


def run(state: ProbeState, outcome: Outcome, now: float) -> ProbeChange | None:
    state.start(now)
    return state.finish(outcome, now)


# --- rise and fall ---------------------------------------------------------------------------


def test_fall_failures_in_a_row_take_a_probe_down() -> None:
    p = ProbeState(probe(fall=3), "F", "10.0.0.1", 5222, 0.0)
    assert run(p, FAIL, 0.0) is None
    assert run(p, FAIL, 2.0) is None
    assert p.up
    change = run(p, FAIL, 4.0)
    assert change == ProbeChange(4.0, "F", "10.0.0.1", "tcp", 5222, False,
                                 "connecting: Connection refused",
                                 "fall 3: 3 failed probes in a row")
    assert not p.up
    assert run(p, FAIL, 6.0) is None  # already down: nothing new to say


def test_a_success_clears_the_failure_streak() -> None:
    p = ProbeState(probe(fall=3), "F", "r", 5222, 0.0)
    for t, outcome in enumerate([FAIL, FAIL, OK, FAIL, FAIL]):
        assert run(p, outcome, float(t)) is None
    assert p.up  # never three in a row
    assert run(p, FAIL, 5.0) is not None


def test_rise_successes_bring_it_back_and_a_failure_restarts_the_count() -> None:
    p = ProbeState(probe(rise=2, fall=1), "F", "r", 5222, 0.0)
    assert run(p, FAIL, 0.0) is not None
    assert run(p, OK, 1.0) is None
    assert run(p, FAIL, 2.0) is None  # the streak of successes is broken
    assert run(p, OK, 3.0) is None
    change = run(p, OK, 4.0)
    assert change is not None and change.up and change.error is None
    assert change.reason == "rise 2: 2 successful probes in a row"
    assert (p.up, p.last_change) == (True, 4.0)


@settings(max_examples=200, deadline=None)
@given(results=st.lists(st.booleans(), max_size=60), rise=st.integers(1, 4),
       fall=st.integers(1, 4))
def test_the_verdict_is_the_last_run_of_rise_or_fall_equal_results(
        results: list[bool], rise: int, fall: int) -> None:
    """Against a model: the verdict flips exactly when the last `fall` (`rise`) results all
    disagree with it, counted since the previous flip."""
    p = ProbeState(probe(rise=rise, fall=fall), "F", "r", 5222, 0.0)
    up, streak = True, 0
    for t, ok in enumerate(results):
        change = run(p, OK if ok else FAIL, float(t))
        streak = 0 if ok is up else streak + 1
        flipped = streak == (rise if ok else fall) and ok is not up
        if flipped:
            up, streak = ok, 0
        assert (change is not None) is flipped
        assert p.up is up


# --- scheduling --------------------------------------------------------------------------------


def test_the_next_run_is_due_an_interval_after_the_last_one_started() -> None:
    p = ProbeState(probe(interval=2.0), "F", "r", 5222, 0.0)
    p.start(0.0)
    p.finish(OK, 0.3)  # a run that took 0.3 s does not shift the beat
    assert p.next_due == 2.0
    assert not p.due(1.99)
    assert p.due(2.0)


def test_a_slow_probe_never_piles_up() -> None:
    """A run that hangs is never started again, however late; the next starts at once when
    it ends, and only one."""
    schedule = HealthSchedule([farm_config(probe(interval=2.0, timeout=30.0))], 0.0)
    [p] = schedule.start_due(0.0)
    for now in (2.0, 4.0, 10.0, 29.9):
        assert schedule.start_due(now) == []
        assert schedule.next_wake() is None  # nothing idle: the runner waits for the end
    schedule.finish(p, Outcome(False, "timeout after 30 s waiting for the stream header"), 30.0)
    assert schedule.next_wake() == 30.0
    assert schedule.start_due(30.0) == [p]
    assert schedule.start_due(30.0) == []


def test_first_runs_are_spread_over_one_interval() -> None:
    schedule = HealthSchedule([farm_config(probe(interval=2.0), reals=4)], 100.0)
    assert [p.next_due for p in schedule.probes] == [100.0, 100.5, 101.0, 101.5]
    assert [p.real for p in schedule.start_due(100.6)] == ["10.0.0.1", "10.0.0.2"]


def test_a_reals_own_probes_replace_the_farms_and_an_empty_list_turns_them_off() -> None:
    own = {1: (probe(kind="xmpp-stream"),), 2: ()}
    schedule = HealthSchedule([farm_config(probe(), reals=3, own=own)], 0.0)
    assert [(r.real, [p.type for p in r.probes]) for r in schedule.reals] == [
        ("10.0.0.1", ["tcp"]), ("10.0.0.2", ["xmpp-stream"])]
    assert HealthSchedule([farm_config(reals=2)], 0.0).probes == []


def test_ports_follow_the_probe_then_the_real_then_the_kind() -> None:
    stream = ProbeConfig("xmpp-stream", domain="example.test")
    s2s = ProbeConfig("xmpp-stream", domain="example.test", kind="s2s")
    assert ProbeConfig("tcp").port_for(Address("10.0.0.1", None)) == 5222
    assert ProbeConfig("xmpp-ping").port_for(Address("10.0.0.1", None)) == 5222
    assert stream.port_for(Address("10.0.0.1", None)) == 5222
    assert s2s.port_for(Address("10.0.0.1", None)) == 5269
    assert s2s.port_for(Address("10.0.0.1", 5270)) == 5270  # the real's own port
    assert ProbeConfig("tcp", port=5280).port_for(Address("10.0.0.1", 5270)) == 5280


# --- the real's verdict --------------------------------------------------------------------------


def test_a_real_is_up_only_while_every_probe_is_up() -> None:
    schedule = HealthSchedule([farm_config(probe(fall=1, rise=1),
                                           probe(fall=1, rise=1, kind="xmpp-stream"))], 0.0)
    tcp, stream = schedule.probes
    for p in (tcp, stream):
        p.start(0.0)
    assert schedule.finish(tcp, OK, 0.1) == (None, None)
    change, verdict = schedule.finish(stream, FAIL, 0.1)
    assert change is not None and not change.up
    assert verdict == RealVerdict(0.1, "F", "10.0.0.1", False)
    for p in (tcp, stream):
        p.start(2.0)
    assert schedule.finish(tcp, FAIL, 2.1)[1] is None  # down already: no new verdict
    assert schedule.finish(stream, OK, 2.1)[1] is None  # tcp is still down
    tcp.start(4.0)
    assert schedule.finish(tcp, OK, 4.1)[1] == RealVerdict(4.1, "F", "10.0.0.1", True)


def test_the_verdict_drives_the_engine_also_for_a_spare_out_of_service() -> None:
    """Probes run for reals out of service too: the operator sees the spare's health, and a
    spare put in service while its probes fail is PROBE_FAILED, not OPERATIONAL."""
    cfg = ServerfarmConfig("F", slowstart=0, probes=(probe(fall=1),), reals=(
        RealConfig(Address("10.0.0.1", None)),
        RealConfig(Address("10.0.0.2", None), inservice=False)))
    farm, schedule = Serverfarm(cfg, 0.0), HealthSchedule([cfg], 0.0)
    spare_probe = schedule.probes[1]
    spare_probe.start(1.0)
    _, verdict = schedule.finish(spare_probe, FAIL, 1.0)
    assert verdict is not None
    spare = farm.find(verdict.real)
    assert spare is not None
    farm.probe_result(spare, verdict.ok, verdict.time)
    assert farm.state(spare, 1.0) is RealState.OUTOFSERVICE
    farm.set_inservice(spare, True, 2.0)
    assert farm.state(spare, 2.0) is RealState.PROBE_FAILED
    assert all(farm.pick(f"192.0.2.{i}", 2.0) is not spare for i in range(20))


def test_describe_carries_result_error_round_trip_and_last_change() -> None:
    p = ProbeState(probe(fall=1), "F", "10.0.0.1", 5222, 0.0)
    assert p.describe(0.0, 1_000_000.0) == {
        "type": "tcp", "implicit": False, "port": 5222, "verdict": "up", "last_result": None,
        "last_error": None,
        "last_rtt": None, "last_change": None, "last_change_age": None, "runs": 0}
    run(p, Outcome(True, rtt=0.0012345678), 1.0)
    run(p, FAIL, 3.0)
    assert p.describe(5.5, 1_764_000_000.0) == {
        "type": "tcp", "implicit": False, "port": 5222, "verdict": "down",
        "last_result": "failed",
        "last_error": "connecting: Connection refused", "last_rtt": 0.001235,
        "last_change": "2025-11-24T15:59:57.500Z", "last_change_age": 2.5, "runs": 2}


# --- a whole timeline: a node hangs, then comes back ---------------------------------------------


def simulate(schedule: HealthSchedule, healthy: Callable[[float], bool], until: float,
             run_time: float = 0.01) -> list[RealVerdict]:
    """The runner on a fake clock: a healthy real answers in `run_time`, a hung one lets
    each run hit its timeout. Returns the real verdicts in order."""
    finishing: list[tuple[float, int, ProbeState, Outcome]] = []
    order = itertools.count()
    verdicts: list[RealVerdict] = []
    now = 0.0
    while now <= until:
        for p in schedule.start_due(now):
            if healthy(now):
                heapq.heappush(finishing, (now + run_time, next(order), p, OK))
            else:
                heapq.heappush(finishing, (now + p.config.timeout, next(order), p,
                                           Outcome(False, "timeout")))
        wake = schedule.next_wake()
        now = min(wake if wake is not None else until + 1,
                  finishing[0][0] if finishing else until + 1)
        while finishing and finishing[0][0] <= now:
            _, _, p, outcome = heapq.heappop(finishing)
            _, verdict = schedule.finish(p, outcome, now)
            if verdict is not None:
                verdicts.append(verdict)
    return verdicts


def test_a_hung_node_is_out_within_fall_intervals_and_back_within_rise() -> None:
    config = probe(rise=2, fall=2, interval=2.0, timeout=2.0)
    schedule = HealthSchedule([farm_config(config)], 0.0)
    stop, cont = 10.05, 30.05  # SIGSTOP, SIGCONT
    verdicts = simulate(schedule, lambda t: not stop <= t < cont, until=60.0)
    assert [v.ok for v in verdicts] == [False, True]
    down, up = verdicts
    assert down.time - stop <= config.fall * config.interval + config.timeout
    assert up.time - cont <= config.rise * config.interval
    assert schedule.probes[0].runs == 31  # at 0, 2, ..., 60: one per interval, hung or not
