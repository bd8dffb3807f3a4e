"""A real that closes most of its streams from its own side at once is taken out at once.

`ejabberdctl stop` closes every session of the node while its listener still accepts for a
few seconds; leastconns would hand the reconnecting clients to the emptied node. Timelines
on a fake clock: the detector (`CloseBurst`, `is_mass_close`), the engine's rule
(`Serverfarm.closed(..., by_real=True)`), the connection machine's verdict on which side
closed first, and the config keys.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests.unit.test_connection import (
    PROCEED,
    STARTTLS,
    World,
    farm_config,
    relaying,
)
from xmppgw import config
from xmppgw.config import Address, ConfigError, RealConfig, ServerfarmConfig
from xmppgw.connection import REPLY_TIME, SETTLED_TIME, Log
from xmppgw.slb.closes import CloseBurst, is_mass_close
from xmppgw.slb.farm import MassClose, Real, RealState, Serverfarm, StateChange


def make_farm(n: int = 3, retry: float = 30.0, **farm: Any) -> Serverfarm:
    reals = tuple(RealConfig(Address(f"10.0.0.{i + 1}", None), retry=retry) for i in range(n))
    settings: dict[str, Any] = {"predictor": "leastconns", "slowstart": 0.0,
                                "max_connecting": None, **farm}
    return Serverfarm(ServerfarmConfig("F", reals=reals, **settings), 0.0)


def hold(farm: Serverfarm, real: Real, streams: int, now: float = 0.0) -> None:
    """`streams` established connections on `real`."""
    for _ in range(streams):
        real.pending += 1  # as if picked
        farm.connected(real, now)


def close_many(farm: Serverfarm, real: Real, times: list[float],
               by_real: bool = True) -> list[MassClose]:
    return [b for t in times if (b := farm.closed(real, t, by_real)) is not None]


def failed_changes(farm: Serverfarm) -> list[StateChange]:
    return [c for c in farm.drain_events()
            if isinstance(c, StateChange) and c.new is RealState.FAILED]


# --- the detector ------------------------------------------------------------------------------


def test_close_burst_counts_a_sliding_window_and_keeps_its_peak() -> None:
    burst = CloseBurst()
    # held before each close: 20, 19, then 25 (reconnects landed on it), 24
    assert [burst.note(t, 2.0, held) for t, held in ((0.0, 20), (0.5, 19), (1.0, 25),
                                                      (1.9, 24))] == [
        (1, 20), (2, 20), (3, 25), (4, 25)]
    assert burst.note(2.5, 2.0, 23) == (3, 25)  # 0.0 and 0.5 have left the window
    assert burst.note(3.1, 2.0, 22) == (3, 24)  # so has 1.0, the peak: the next one leads
    assert burst.count(10.0, 2.0) == 0 and len(burst) == 0  # forgotten: memory stays bounded
    assert burst.peak(10.0, 2.0) == 0
    burst.note(11.0, 2.0, 5)
    burst.clear()
    assert burst.count(11.0, 2.0) == 0 and burst.peak(11.0, 2.0) == 0


@pytest.mark.parametrize("closes, held, streams, share, verdict", [
    (10, 20, 10, 50, True),    # exactly the count and exactly half
    (9, 9, 10, 50, False),     # every stream, but too few of them
    (10, 21, 10, 50, False),   # enough, but under half of what it held
    (30, 300, 10, 10, True),   # a share of 10%
    (100, 100, 0, 50, False),  # 0 turns it off
])
def test_is_mass_close(closes: int, held: int, streams: int, share: int,
                       verdict: bool) -> None:
    assert is_mass_close(closes, held, streams, share) is verdict


# --- the engine ------------------------------------------------------------------------------


def test_a_burst_of_closes_by_the_real_takes_it_out_at_once() -> None:
    farm = make_farm(mass_close_streams=10, mass_close_share=50, mass_close_window=2.0)
    a, b, c = farm.reals
    for real in (a, b, c):
        hold(farm, real, 20)
    farm.drain_events()
    # ejabberdctl stop on a: its sessions end within 0.1 s, each by the real's side
    bursts = close_many(farm, a, [5.0 + i * 0.01 for i in range(10)])
    assert bursts == [MassClose(5.09, "F", a.name, 10, 20, 10, 2.0, True)]
    assert farm.state(a, 5.1) is RealState.FAILED and a.retry_at == pytest.approx(35.09)
    [change] = failed_changes(farm)
    assert change.real == a.name and "mass close" in change.reason
    # the cut clients reconnect: leastconns would pick the emptied a; it gets none of them
    picks = [farm.pick(f"192.0.2.{i}", 5.2) for i in range(30)]
    assert a not in picks and None not in picks
    # the rest of its closes change nothing more
    assert close_many(farm, a, [5.1 + i * 0.01 for i in range(10)]) == []
    assert failed_changes(farm) == []


def test_reconnects_sent_back_meanwhile_do_not_dilute_the_burst() -> None:
    """ejabberd closes its sessions over a second; leastconns hands some of the reconnecting
    clients back to the emptied real before it is out: the share is of what it held before."""
    farm = make_farm(mass_close_streams=10, mass_close_share=50, mass_close_window=2.0)
    a, b, c = farm.reals
    for real in (a, b, c):
        hold(farm, real, 20)
    bursts: list[MassClose] = []
    for i in range(10):
        now = 1.0 + i * 0.1
        bursts += close_many(farm, a, [now])
        if farm.pick(f"192.0.2.{i}", now) is a:  # the cut client came straight back to a
            farm.connected(a, now)
    assert bursts and bursts[0].closes == 10 and bursts[0].held == 20
    assert a.active == 19  # 9 came back before the 10th close took it out
    assert farm.state(a, 2.0) is RealState.FAILED


def test_the_same_closes_spread_over_time_take_nothing_out() -> None:
    farm = make_farm(mass_close_streams=10, mass_close_share=50, mass_close_window=2.0)
    a = farm.reals[0]
    hold(farm, a, 20)
    # users logging out one by one (ejabberd closes after the client's </stream:stream>)
    assert close_many(farm, a, [10.0 + i * 0.5 for i in range(20)]) == []
    assert farm.state(a, 30.0) is RealState.OPERATIONAL
    assert failed_changes(farm) == []


def test_a_few_closes_of_a_busy_real_take_nothing_out() -> None:
    """Enough closes in the window, but a small share of what the real holds."""
    farm = make_farm(mass_close_streams=10, mass_close_share=50, mass_close_window=2.0)
    a = farm.reals[0]
    hold(farm, a, 100)
    assert close_many(farm, a, [1.0 + i * 0.01 for i in range(30)]) == []
    assert farm.state(a, 2.0) is RealState.OPERATIONAL


def test_closes_by_clients_never_count_against_the_real() -> None:
    farm = make_farm(mass_close_streams=10, mass_close_share=50, mass_close_window=2.0)
    a = farm.reals[0]
    hold(farm, a, 40)
    # a network fault between the clients and the gateway cuts them all at once
    assert close_many(farm, a, [3.0 + i * 0.001 for i in range(40)], by_real=False) == []
    assert farm.state(a, 3.1) is RealState.OPERATIONAL and a.active == 0
    assert failed_changes(farm) == []


def test_the_last_available_real_is_never_taken_out() -> None:
    farm = make_farm(2, mass_close_streams=5, mass_close_share=50, mass_close_window=2.0,
                     panic_threshold=0)
    a, b = farm.reals
    farm.probe_result(b, False, 0.0)  # b is PROBE_FAILED: a is the last available
    hold(farm, a, 10)
    farm.drain_events()
    bursts = close_many(farm, a, [1.0 + i * 0.01 for i in range(10)])
    assert bursts and not any(x.failed for x in bursts)
    assert farm.state(a, 1.2) is RealState.OPERATIONAL
    assert failed_changes(farm) == []
    assert farm.pick("192.0.2.1", 1.3) is a


def test_a_real_already_out_is_left_to_its_rules() -> None:
    farm = make_farm(mass_close_streams=5, mass_close_share=50, mass_close_window=2.0)
    a = farm.reals[0]
    hold(farm, a, 10)
    farm.set_inservice(a, False, 0.5)  # the operator took it out: its streams may end
    assert close_many(farm, a, [1.0 + i * 0.01 for i in range(10)]) == []
    assert farm.state(a, 1.2) is RealState.OUTOFSERVICE


def test_off_with_zero_streams_and_back_after_retry() -> None:
    farm = make_farm(mass_close_streams=0)
    a = farm.reals[0]
    hold(farm, a, 20)
    assert close_many(farm, a, [1.0] * 20) == []
    # on: out for `retry`, then the next connection tests it, and a success brings it back
    farm = make_farm(retry=5.0, mass_close_streams=5)
    a = farm.reals[0]
    hold(farm, a, 5)
    assert close_many(farm, a, [1.0] * 5)
    assert farm.state(a, 5.9) is RealState.FAILED
    assert farm.state(a, 6.0) is RealState.TESTING
    real = farm.pick("192.0.2.9", 6.1)
    assert real is a  # the test connection
    farm.connected(a, 6.2)
    assert farm.state(a, 6.2) is RealState.OPERATIONAL


# --- the connection machine: which side closed first -------------------------------------------


def mass_world() -> World:
    """Real 10.0.0.1 and a standby; two real-side closes out of two streams make a mass
    close (the standby is available, so 10.0.0.1 is not the last)."""
    cfg = farm_config(2, mass_close_streams=2, mass_close_share=50, mass_close_window=2.0)
    a, b = cfg.reals
    return World(farm=replace(cfg, reals=(a, replace(b, standby=True))))


def mass_logs(out: list[Any]) -> list[Log]:
    return [c for c in out if isinstance(c, Log) and c.event == "real_mass_close"]


def opaque(world: World) -> Any:
    conn = relaying(world)
    conn.client_data(STARTTLS, 0.4)
    conn.real_data(PROCEED, 0.5)
    return conn


def test_the_real_closing_first_counts_and_is_logged() -> None:
    world = mass_world()
    first, second = opaque(world), opaque(world)
    assert world.real(0).active == 2
    # copy relay: the real's FIN, passed on; the client answers; the legs go
    first.real_eof(3.0)
    first.client_eof(3.01)
    out = first.real_lost(3.02) + first.client_lost(3.03)
    assert first.real_first and mass_logs(out) == []
    # spliced: the relay says the real's socket ended first (the client last spoke at 1.5)
    second.handed_to_splice()
    out = second.splice_ended(10, 20, 3.1, real_first=True, client_at=1.5)
    [log] = mass_logs(out)
    assert log.level == "warning" and log.fields == {
        "farm": "F", "real": "10.0.0.1", "closes": 2, "held": 2, "still_open": 0,
        "window": 2.0, "action": "failed"}
    assert world.farm.state(world.real(0), 3.2) is RealState.FAILED


def test_a_reset_from_the_real_counts() -> None:
    world = mass_world()
    conns = [opaque(world), opaque(world)]
    outs = [c.real_lost(3.0 + i / 100) for i, c in enumerate(conns)]  # RST: no FIN first
    assert all(c.real_first for c in conns)
    assert [log.fields["closes"] for log in mass_logs(outs[1])] == [2]


def test_a_close_right_after_the_client_spoke_is_a_reply_not_counted() -> None:
    """A logout: the client's `</stream:stream>` (opaque bytes), then the real's FIN within
    REPLY_TIME (ejabberd closes after answering). Users logging out together never make a
    mass close."""
    world = mass_world()
    conns = [opaque(world) for _ in range(4)]
    out: list[Any] = []
    for i, conn in enumerate(conns[:2]):  # copy relay
        now = 5.0 + i / 100
        conn.client_data(b"\x17\x03\x03logout", now - 0.05)
        out += conn.real_eof(now) + conn.client_eof(now) + conn.real_lost(now)
    for i, conn in enumerate(conns[2:]):  # spliced
        now = 5.1 + i / 100
        conn.handed_to_splice()
        out += conn.splice_ended(1, 1, now, real_first=True, client_at=now - REPLY_TIME / 2)
    assert not any(c.real_first for c in conns)
    assert mass_logs(out) == []
    assert world.farm.state(world.real(0), 6.0) is RealState.OPERATIONAL


def test_a_shutdown_the_client_answers_still_counts() -> None:
    """`ejabberdctl stop`: the real speaks first (`<system-shutdown/>`), the client answers
    with its `</stream:stream>`, then the real closes. Copy relay and splice relay."""
    world = mass_world()
    first, second = opaque(world), opaque(world)
    first.real_data(b"\x17\x03\x03shutdown", 5.0)
    first.client_data(b"\x17\x03\x03bye", 5.02)
    out = first.real_eof(5.03) + first.client_eof(5.04) + first.real_lost(5.04)
    assert first.real_first and mass_logs(out) == []
    second.handed_to_splice()
    out = second.splice_ended(1, 1, 5.05, real_first=True, client_at=5.03, client_prior=5.01)
    assert second.real_first
    assert [log.fields["closes"] for log in mass_logs(out)] == [2]


def test_streams_closed_young_never_count() -> None:
    """Logins the real refuses or ends at once (a churn of short sessions) are no burst."""
    world = mass_world()
    conns = [opaque(world) for _ in range(4)]  # accepted at 0.0
    out: list[Any] = []
    for i, conn in enumerate(conns):
        out += conn.real_lost(SETTLED_TIME - 0.1 + i / 100)
    assert not any(c.real_first for c in conns)
    assert mass_logs(out) == []


@pytest.mark.parametrize("client_side", ["fin", "lost", "splice", "gateway"])
def test_closes_by_the_client_or_the_gateway_never_count(client_side: str) -> None:
    world = mass_world()
    conns = [opaque(world), opaque(world), opaque(world)]
    out: list[Any] = []
    for i, conn in enumerate(conns):
        now = 3.0 + i / 100
        if client_side == "fin":  # the client's FIN first; the real answers with its own
            out += conn.client_eof(now) + conn.real_eof(now) + conn.real_lost(now)
        elif client_side == "lost":  # the client's connection reset (a network fault)
            out += conn.client_lost(now) + conn.real_lost(now)
        elif client_side == "splice":  # the relay saw the client's socket end first
            conn.handed_to_splice()
            out += conn.splice_ended(1, 1, now, real_first=False)
        else:  # a drain or a shutdown: the gateway closes, then the real's leg goes
            out += conn.drain(now) + conn.real_lost(now)
        assert not conn.real_first
    assert mass_logs(out) == []
    assert world.real(0).active == 0
    assert world.farm.state(world.real(0), 2.0) is RealState.OPERATIONAL


# --- the config keys -----------------------------------------------------------------------------


FARM = """
[gateway]
[[vserver]]
name = "V"
virtual = "127.0.0.1:5222"
serverfarm = "F"

[[serverfarm]]
name = "F"
{farm}
[[serverfarm.real]]
address = "10.0.0.1"
"""


def test_config_defaults_and_overrides() -> None:
    farm = config.loads(FARM.format(farm=""), "t.toml").farm("F")
    assert (farm.mass_close_streams, farm.mass_close_share, farm.mass_close_window) == (
        0, 25, 2.0)  # off unless asked for
    farm = config.loads(FARM.format(farm="mass_close_streams = 10\nmass_close_share = 80\n"
                                         "mass_close_window = 0.5"), "t.toml").farm("F")
    assert (farm.mass_close_streams, farm.mass_close_share, farm.mass_close_window) == (
        10, 80, 0.5)


@pytest.mark.parametrize("line, message", [
    ("mass_close_streams = -1", "serverfarm[0] (F).mass_close_streams: must be at least 0"),
    ("mass_close_share = 101", "serverfarm[0] (F).mass_close_share: must be a percentage"),
    ("mass_close_window = 0", "serverfarm[0] (F).mass_close_window: must be greater than 0"),
])
def test_config_bad_values(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.loads(FARM.format(farm=line), "t.toml")
    assert any(message in p for p in info.value.problems), info.value.problems

