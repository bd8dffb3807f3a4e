"""Predictors: which of the reals that can take a connection gets it.

The farm filters (states, maxconns, standby, tried) and passes the candidates, each with its
weight now (the configured weight, ramped during slow start) and its load; a predictor only
chooses. So every predictor honours slow start without knowing about it, and none reaches
back into the farm.

- `roundrobin`: smooth weighted round-robin, as nginx does it (ngx_http_upstream_round_robin.c,
  "smooth weighted round-robin balancing", nginx 1.3.1): weights 5:1 give a a a b a a (never
  five in a row then one), and equal weights give plain rotation.
- `leastconns`: fewest connections relative to weight (IOS "weighted least connections"),
  counting attempts in flight, ties spread by a rotating start.
- `sourcehash`: weighted rendezvous (highest random weight) hashing of the client IP, so a
  reconnecting client returns to the same real (XEP-0198 resumption), two gateways with the
  same config agree, and a real leaving moves only its own clients.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Protocol

from xmppgw.slb.types import Candidate, Real


class Predictor(Protocol):
    """`sticky` predictors let a TESTING real take only the clients that map to it."""

    sticky: bool

    def choose(self, candidates: Sequence[Candidate], client_ip: str) -> Real | None: ...


class RoundRobin:
    """nginx's smooth weighted round-robin.

    Each pick adds every candidate's weight to its running score, takes the highest, and
    takes the total off the winner. Over sum(weights) picks each real gets exactly its
    weight, interleaved: no burst to one real. Reals not among the candidates keep their
    score, so a reassign (which excludes tried reals) does not disturb the rotation.
    """

    sticky = False

    def __init__(self) -> None:
        self._current: dict[Real, float] = {}

    def choose(self, candidates: Sequence[Candidate], client_ip: str) -> Real | None:
        best: Real | None = None
        best_score = 0.0
        total = 0.0
        for real, weight, _load in candidates:
            score = self._current.get(real, 0) + weight
            self._current[real] = score
            total += weight
            if best is None or score > best_score:
                best, best_score = real, score
        if best is not None:
            self._current[best] = best_score - total
        return best


class LeastConns:
    """Fewest connections per unit of weight; load counts attempts in flight.

    Counting in-flight attempts matters at a login storm (every client of a failed node
    reconnecting at once): all picks happen before any handshake completes, and without them
    every pick would see the same loads and choose the same real. Ties are broken from a start
    index that moves on each pick, so equal reals share new connections in turn.
    """

    sticky = False

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, candidates: Sequence[Candidate], client_ip: str) -> Real | None:
        n = len(candidates)
        if n == 0:
            return None
        start = self._turn % n
        self._turn += 1
        best = candidates[start]
        for i in range(1, n):
            c = candidates[(start + i) % n]
            if c.load * best.weight < best.load * c.weight:  # load/weight < best's, no division
                best = c
        return best.real


class SourceHash:
    """Weighted rendezvous hashing of the client IP.

    Every (client IP, real) pair gets a stable pseudo-random h in (0, 1) from BLAKE2b (never
    Python's `hash()`, which is salted per process), and the real with the highest
    -weight / ln(h) wins. That is the weighted HRW formula: each real wins a share
    weight / sum(weights) of the clients, and removing a real moves exactly the clients that
    were on it, since every other pair's score is unchanged.
    """

    sticky = True

    def choose(self, candidates: Sequence[Candidate], client_ip: str) -> Real | None:
        best: Real | None = None
        best_key = (0.0, "")
        for real, weight, _load in candidates:
            key = (hrw_score(client_ip, real.name, weight), real.name)
            if best is None or key > best_key:
                best, best_key = real, key
        return best


def hrw_score(client_ip: str, real_name: str, weight: float) -> float:
    """-weight / ln(h), h uniform in (0, 1) from BLAKE2b of (client IP, real address)."""
    digest = hashlib.blake2b(f"{client_ip}|{real_name}".encode(), digest_size=8).digest()
    # 52 bits keep (x + 0.5) / 2**52 exact in a float and strictly inside (0, 1).
    h = ((int.from_bytes(digest, "big") >> 12) + 0.5) / 2**52
    return -weight / math.log(h)


PREDICTORS: dict[str, Callable[[], Predictor]] = {
    "roundrobin": RoundRobin,
    "leastconns": LeastConns,
    "sourcehash": SourceHash,
}


def make_predictor(name: str) -> Predictor:
    """The predictor a serverfarm's `predictor` key names (the config allows these names)."""
    return PREDICTORS[name]()
