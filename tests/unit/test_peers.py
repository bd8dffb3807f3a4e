"""Workers share SLB state: two engines exchanging what the shared table would carry."""

from __future__ import annotations

from xmppgw.config import Address, Faildetect, RealConfig, ServerfarmConfig
from xmppgw.net.shared import Row, SharedTable
from xmppgw.slb.farm import RealState, Serverfarm


def farm(predictor: str = "leastconns", numconns: int = 3, numclients: int = 100) -> Serverfarm:
    reals = tuple(RealConfig(Address(f"10.0.0.{i}", None), retry=10,
                             faildetect=Faildetect(numconns, numclients)) for i in (1, 2, 3))
    return Serverfarm(ServerfarmConfig("F", predictor=predictor, slowstart=0, reals=reals), 0.0)


def exchange(table: SharedTable, workers: list[Serverfarm], now: float) -> None:
    """What the gateway does around each engine call: publish own rows, read the peers'."""
    for w, f in enumerate(workers):
        for i, r in enumerate(f.reals):
            table.publish(w, i, Row(load=r.active + r.pending, active=r.active,
                                    consecutive_failures=r.consecutive_failures,
                                    failed_clients=len(r.failed_clients),
                                    failed_until=r.retry_at or 0.0))
    for w, f in enumerate(workers):
        for i, r in enumerate(f.reals):
            f.observe_peers(r, *table.peers(w, i), now)


def test_leastconns_counts_every_workers_connections() -> None:
    a, b = farm(), farm()
    table = SharedTable(2, 3)
    for i in range(6):  # worker A alone opens 6 connections: 2 per real
        real = a.pick(f"198.51.100.{i}", 0.0)
        a.connected(real, 0.0)
    a.closed(a.reals[0], 0.0)
    a.closed(a.reals[0], 0.0)  # real 1 now has none in A
    exchange(table, [a, b], 0.0)
    # B has no connection of its own, yet it sends the next one where the gateway has fewest
    assert b.pick("203.0.113.1", 0.0) is b.reals[0]
    assert [r.load for r in b.reals] == [1, 2, 2]


def test_faildetect_counts_add_up_and_failed_is_shared() -> None:
    a, b = farm(numconns=3), farm(numconns=3)
    table = SharedTable(2, 3)
    dead_a, dead_b = a.reals[0], b.reals[0]
    for now in (1.0, 2.0):
        dead_a.pending += 1
        a.failed(dead_a, "198.51.100.1", now, "refused")
    exchange(table, [a, b], 2.0)
    assert b.state(dead_b, 2.0) is RealState.OPERATIONAL
    dead_b.pending += 1
    b.failed(dead_b, "198.51.100.1", 3.0, "refused")  # the third failure gateway-wide
    assert b.state(dead_b, 3.0) is RealState.FAILED
    exchange(table, [a, b], 3.0)
    assert a.state(dead_a, 3.0) is RealState.FAILED
    assert a.drain_events()[-1].reason == "marked FAILED by another worker"
    assert dead_a.consecutive_failures == 0  # spent by the failure B declared
    assert all(a.pick(f"198.51.100.{i}", 4.0) is not dead_a for i in range(20))
    # B's retry elapses: B tests the real; A sees it in service again
    exchange(table, [a, b], 13.0)
    assert b.state(dead_b, 13.0) is RealState.TESTING
    assert a.state(dead_a, 13.0) is RealState.OPERATIONAL


def test_one_worker_sees_no_peers() -> None:
    a = farm()
    table = SharedTable(1, 3)
    exchange(table, [a], 0.0)
    assert [r.peer_load for r in a.reals] == [0, 0, 0]


def test_a_reader_never_sees_a_row_half_written() -> None:
    """Another worker rewriting its row (same values) must never be read as zeros.

    `Struct.pack_into` zero-fills the record before writing it; read at that moment a
    PROBE_FAILED real looked healthy to the other workers (the two-worker probe test caught
    it flipping). 200,000 rewrites in a forked writer against reads here: not one torn."""
    import os

    table = SharedTable(2, 3)
    row = Row(load=5, active=5, total=9, probe_failed=1.0, failed_until=123.5)
    table.publish(0, 1, row)
    pid = os.fork()
    if pid == 0:  # the writer: another worker publishing its counters again and again
        try:
            for _ in range(200_000):
                table.publish(0, 1, row)
        finally:
            os._exit(0)
    torn = sum(1 for _ in range(200_000) if table.row(0, 1) != row)
    os.waitpid(pid, 0)
    assert torn == 0
