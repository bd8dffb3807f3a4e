"""`show` formatting: the seed's `show ip slb serverfarms detail`, line by line."""

from __future__ import annotations

import re
from pathlib import Path

from xmppgw import config
from xmppgw.control import show
from xmppgw.slb.farm import Serverfarm

ROOT = Path(__file__).resolve().parents[2]
SEED_ARTICLE = ROOT / "tests" / "data" / "seed-article.txt"  # the seed article, as published

REAL_LINE = (r"[0-9.:\[\]a-f]+, weight = \d+, "
             r"(OPERATIONAL|OUTOFSERVICE|FAILED|TESTING|MAXCONNS|PROBE_FAILED), conns = \d+")
# The seed's block, numbers and names abstracted; "nat =SERVER" and the empty interface list
# are the article's, ours reads "nat = SERVER, interface(s) = <none>".
LAYOUT = [
    r"(\S+) predictor = (ROUNDROBIN|LEASTCONNS|SOURCEHASH), nat = ?SERVER, interface\(s\) =.*",
    r"virtuals inservice: \d+, reals = \d+, bind id = 0",
    r"Real servers:",
    *[REAL_LINE] * 4,
    r"Total connections = \d+",
]


def seed_snapshot() -> dict:
    cfg = config.load(ROOT / "conf" / "seed.toml")
    farm = Serverfarm(cfg.farm("XMPP"), 0.0)
    for i in range(1245):
        real = farm.pick(f"198.51.100.{i % 250}", 0.0)
        farm.connected(real, 0.0)
    return {"vservers": [], "serverfarms": [{
        "name": farm.name, "predictor": farm.config.predictor, "nat": farm.config.nat,
        "virtuals_inservice": 3,
        "reals": [{"address": r.name, "weight": r.config.weight, "state": str(farm.state(r, 0)),
                   "conns": r.active, "total": r.total, "failed_attempts": 0, "reassigns": 0,
                   "state_age": 0.0} for r in farm.reals]}]}


def test_serverfarms_detail_has_the_seed_layout() -> None:
    out = show.serverfarms_detail(seed_snapshot()).splitlines()
    assert out == [
        "XMPP predictor = LEASTCONNS, nat = SERVER, interface(s) = <none>",
        "virtuals inservice: 3, reals = 4, bind id = 0",
        "Real servers:",
        "127.0.2.1, weight = 5, OPERATIONAL, conns = 415",
        "127.0.2.2, weight = 5, OPERATIONAL, conns = 415",
        "127.0.2.3, weight = 5, OPERATIONAL, conns = 415",
        "127.0.2.4, weight = 5, OUTOFSERVICE, conns = 0",
        "Total connections = 1245",
    ]
    assert all(re.fullmatch(p, line) for p, line in zip(LAYOUT, out, strict=True))


def test_the_layout_is_the_articles() -> None:
    """The patterns above really describe the seed's own output."""
    text = SEED_ARTICLE.read_text(errors="replace").splitlines()
    start = next(i for i, line in enumerate(text) if line.startswith("XMPP predictor"))
    block = [line.strip() for line in text[start:start + len(LAYOUT)]]
    assert all(re.fullmatch(p, line) for p, line in zip(LAYOUT, block, strict=True)), block


def test_tables() -> None:
    snap = seed_snapshot()
    assert show.serverfarms(snap).splitlines()[2].split() == ["XMPP", "LEASTCONNS", "S", "4", "0"]
    rows = show.reals(snap, detail=True).splitlines()
    assert rows[0].split()[:4] == ["real", "server", "farm", "weight"]
    assert rows[5].split()[:5] == ["127.0.2.4", "XMPP", "5", "OUTOFSERVICE", "0"]


def test_a_farm_in_panic_or_with_a_queue_says_so_and_a_quiet_one_does_not() -> None:
    snap = seed_snapshot()
    quiet = show.serverfarms_detail(snap)
    assert "PANIC" not in quiet and "queue" not in quiet and "PANIC" not in show.serverfarms(snap)
    snap["serverfarms"][0].update(panic=True, available=1, inservice=3, panic_threshold=50,
                                  queue=7, queued_total=40, queue_timeouts=2)
    detail = show.serverfarms_detail(snap).splitlines()
    assert detail[2] == ("PANIC: 1 of 3 reals in service available, under panic_threshold 50%:"
                         " balancing over all in service")
    assert detail[3] == ("queue = 7 waiting for a real with room (queued since start 40,"
                         " timed out 2)")
    assert detail[4] == "Real servers:"
    assert show.serverfarms(snap).splitlines()[-2].startswith("XMPP: PANIC: 1 of 3")


def test_reals_detail_shows_attempts_in_flight_against_max_connecting() -> None:
    snap = seed_snapshot()
    snap["serverfarms"][0]["reals"][0].update(connecting=3, max_connecting=8)
    rows = show.reals(snap, detail=True).splitlines()
    assert rows[0].split()[6] == "connecting"  # "server farm" is two words
    assert rows[2].split()[5] == "3/8"


def draining_snapshot() -> dict:
    snap = seed_snapshot()
    snap["serverfarms"][0]["reals"][3].update(drain_end="2026-11-29T23:59:00Z",
                                              drain_left=540.2, conns=4)
    return snap


def test_a_draining_real_shows_when_its_drain_ends() -> None:
    """`no-inservice --drain 600`: the detail views say when the streams are closed."""
    snap = draining_snapshot()
    assert ("127.0.2.4, weight = 5, OUTOFSERVICE, conns = 4, drain ends "
            "2026-11-29T23:59:00Z (in 540s)") in show.serverfarms_detail(snap).splitlines()
    out = show.reals(snap, detail=True)
    assert out.endswith("\ndraining:\n127.0.2.4 (XMPP): drain ends 2026-11-29T23:59:00Z "
                        "(in 540s)\n")
    assert "draining" not in show.reals(snap) and "drain" not in show.serverfarms(snap)
    snap["serverfarms"][0]["reals"][3]["drain_left"] = 0.0
    assert "drain ends 2026-11-29T23:59:00Z (ended)" in show.serverfarms_detail(snap)


def test_the_gateway_view_reads_the_engines_drain_deadline() -> None:
    """net/view.py turns the engine's deadline (loop clock) into the wall-clock end."""
    from xmppgw.net.view import _drain

    cfg = config.load(ROOT / "conf" / "seed.toml")
    farm = Serverfarm(cfg.farm("XMPP"), 0.0)
    real = farm.reals[0]
    assert _drain(real, 100.0, 1_800_000_000.0) == {}
    farm.set_inservice(real, False, 100.0, drain_timeout=600.0)
    assert _drain(real, 160.0, 1_800_000_000.0) == {"drain_end": "2027-01-15T08:09:00Z",
                                                     "drain_left": 540.0}
    assert _drain(real, 900.0, 1_800_000_000.0)["drain_left"] == 0.0
    farm.set_inservice(real, True, 1000.0)
    assert _drain(real, 1000.0, 1_800_000_000.0) == {}
