"""Predictors: weights honoured, smoothness, leastconns balance, sourcehash stickiness."""

from __future__ import annotations

import random
from collections import Counter
from itertools import pairwise
from typing import Any

import pytest

from xmppgw.addresses import client_ip
from xmppgw.config import Address, RealConfig, ServerfarmConfig
from xmppgw.slb.farm import Real, Serverfarm
from xmppgw.slb.predictors import LeastConns, RoundRobin, hrw_score
from xmppgw.slb.types import Candidate


def make_farm(*weights: int, predictor: str, slowstart: float = 0.0,
              **real: Any) -> Serverfarm:
    reals = tuple(RealConfig(Address(f"10.0.0.{i + 1}", None), weight=w, **real)
                  for i, w in enumerate(weights))
    cfg = ServerfarmConfig("F", predictor=predictor, slowstart=slowstart, reals=reals,
                            max_connecting=None)
    return Serverfarm(cfg, 0.0)


def picks(farm: Serverfarm, n: int, client: str = "198.51.100.7") -> list[int]:
    """n picks, each released at once (no load builds up), as real indexes."""
    out = []
    for _ in range(n):
        real = farm.pick(client, 0.0)
        assert real is not None
        farm.abandoned(real, 0.0)
        out.append(farm.reals.index(real))
    return out


def ips(n: int) -> list[str]:
    return [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(n)]


# --- roundrobin (smooth weighted) -----------------------------------------------------------


@pytest.mark.parametrize("weights", [(1, 1, 1), (5, 3, 2), (8, 1), (10, 7, 3, 1)])
def test_roundrobin_honours_weights(weights: tuple[int, ...]) -> None:
    counts = Counter(picks(make_farm(*weights, predictor="roundrobin"), 10_000))
    total = sum(weights)
    for i, w in enumerate(weights):
        assert abs(counts[i] / 10_000 - w / total) < 0.01


def test_roundrobin_equal_weights_never_twice_in_a_row() -> None:
    seq = picks(make_farm(5, 5, 5, 5, predictor="roundrobin"), 1000)
    assert all(a != b for a, b in pairwise(seq))
    assert seq[:8] == [0, 1, 2, 3, 0, 1, 2, 3]


def test_roundrobin_5_to_1_is_smooth() -> None:
    """nginx's example shape: a a a b a a, repeated; never five a then one b."""
    seq = picks(make_farm(5, 1, predictor="roundrobin"), 600)
    assert seq == [0, 0, 0, 1, 0, 0] * 100


def test_roundrobin_smooth_with_three_reals() -> None:
    """Weights 5:1:1 as in nginx's comment: a a b a c a a."""
    assert picks(make_farm(5, 1, 1, predictor="roundrobin"), 7) == [0, 0, 1, 0, 2, 0, 0]


def test_roundrobin_skips_tried_reals_without_losing_the_rotation() -> None:
    farm = make_farm(1, 1, 1, predictor="roundrobin")
    a, b, c = farm.reals
    assert farm.pick("c:1", 0.0) is a
    assert farm.pick("c:1", 0.0, frozenset({b})) is c
    assert farm.pick("c:1", 0.0) is b


# --- leastconns ------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [(1, 1, 1), (1, 2, 3), (5, 5, 5, 5)])
def test_leastconns_stays_balanced_under_churn(weights: tuple[int, ...]) -> None:
    """After every new connection, taking one off any real leaves it at or below the minimum
    load per weight: the loads are within one connection of their weighted share."""
    farm = make_farm(*weights, predictor="leastconns")
    rng = random.Random(5222)
    owned: list[Real] = []

    def balanced() -> bool:
        low = min(r.active / r.weight for r in farm.reals)
        return all((r.active - 1) / r.weight <= low + 1e-9 for r in farm.reals)

    for i in range(3000):
        if owned and (len(owned) > 60 or rng.random() < 0.5):
            real = owned.pop(rng.randrange(len(owned)))
            farm.closed(real, float(i))
            real = farm.pick(f"198.51.100.{i % 200}", float(i))
            assert real is not None
            farm.connected(real, float(i))
            owned.append(real)
            assert balanced()
        else:
            real = farm.pick(f"198.51.100.{i % 200}", float(i))
            assert real is not None
            farm.connected(real, float(i))
            owned.append(real)
            assert balanced()


def test_leastconns_counts_attempts_in_flight() -> None:
    """A login storm: 300 picks before any handshake completes spread evenly."""
    farm = make_farm(5, 5, 5, predictor="leastconns")
    got: Counter[str] = Counter()
    for i in range(300):
        real = farm.pick(f"198.51.100.{i % 250}", 0.0)
        assert real is not None
        got[real.name] += 1
    assert sorted(got.values()) == [100, 100, 100]


def test_leastconns_ties_rotate() -> None:
    """Equal loads that do not change between picks still go round."""
    farm = make_farm(8, 8, 8, predictor="leastconns")
    predictor = LeastConns()
    candidates = [Candidate(r, r.weight, r.load) for r in farm.reals]
    chosen = [predictor.choose(candidates, "198.51.100.1") for _ in range(6)]
    assert chosen == farm.reals * 2


def test_predictors_choose_from_the_weight_and_load_they_are_given() -> None:
    """A predictor reads nothing of the farm: the weight and load handed in decide."""
    farm = make_farm(8, 8, predictor="leastconns")
    a, b = farm.reals
    assert LeastConns().choose([Candidate(a, 1.0, 0), Candidate(b, 8.0, 4)], "x") is a
    assert LeastConns().choose([Candidate(a, 1.0, 1), Candidate(b, 8.0, 4)], "x") is b
    rr = RoundRobin()
    got = [rr.choose([Candidate(a, 3.0, 0), Candidate(b, 1.0, 0)], "x") for _ in range(4)]
    assert Counter(got) == {a: 3, b: 1}


# --- sourcehash --------------------------------------------------------------------------------


def assignment(farm: Serverfarm, clients: list[str]) -> dict[str, str]:
    out = {}
    for ip in clients:
        real = farm.pick(ip, 0.0)
        assert real is not None
        farm.abandoned(real, 0.0)
        out[ip] = real.name
    return out


def test_sourcehash_same_client_same_real_on_every_reconnect() -> None:
    """The engine is handed the client's address (no port, which changes on every
    reconnect); a dual-stack listener's ::ffff:a.b.c.d is the same client."""
    farm = make_farm(8, 8, 8, 8, predictor="sourcehash")
    first = {ip: farm.pick(ip, 0.0) for ip in ips(200)}
    for _ in range(3):
        for ip in ips(200):
            assert farm.pick(ip, 1.0) is first[ip]
            assert farm.pick(client_ip(f"::ffff:{ip}"), 1.0) is first[ip]
    assert farm.pick("2001:db8::1", 0.0) is farm.pick(client_ip("2001:DB8:0::1"), 0.0)


def test_sourcehash_two_gateways_agree() -> None:
    one = make_farm(8, 4, 8, 2, predictor="sourcehash")
    two = make_farm(8, 4, 8, 2, predictor="sourcehash")
    assert assignment(one, ips(1000)) == assignment(two, ips(1000))


def test_sourcehash_removing_a_real_moves_only_its_clients() -> None:
    farm = make_farm(8, 8, 8, 8, predictor="sourcehash")
    clients = ips(1000)
    before = assignment(farm, clients)
    leaving = farm.reals[2]
    farm.set_inservice(leaving, False, 1.0)
    after = assignment(farm, clients)
    moved = {ip for ip in clients if before[ip] != after[ip]}
    assert moved == {ip for ip in clients if before[ip] == leaving.name}
    assert 150 < len(moved) < 350  # about a quarter
    farm.set_inservice(leaving, True, 2.0)  # and back: everyone returns home
    assert assignment(farm, clients) == before


def test_sourcehash_weighted_shares() -> None:
    farm = make_farm(1, 2, 3, 4, predictor="sourcehash")
    counts = Counter(assignment(farm, ips(20_000)).values())
    for real in farm.reals:
        assert abs(counts[real.name] / 20_000 - real.weight / 10) < 0.02


def test_sourcehash_skips_a_real_that_cannot_take_it() -> None:
    farm = make_farm(8, 8, predictor="sourcehash", maxconns=1)
    a = farm.pick("198.51.100.1", 0.0)
    b = farm.pick("198.51.100.1", 0.0)  # its real is at maxconns: next highest score
    assert {a, b} == set(farm.reals)


def test_hrw_score_is_stable_across_processes() -> None:
    """BLAKE2b, not hash(): a fixed value, so gateways and restarts agree."""
    assert hrw_score("192.0.2.1", "10.0.0.1", 1.0) == pytest.approx(1.6641478834, rel=1e-9)
    assert hrw_score("192.0.2.1", "10.0.0.1", 2.0) == 2 * hrw_score("192.0.2.1", "10.0.0.1", 1.0)
