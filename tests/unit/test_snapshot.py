"""The typed snapshot (`xmppgw.control.snapshot`): `to_json()` is the dict shape `show --json`
and the control socket have always carried, key for key, and `from_json()` reads it back."""

from __future__ import annotations

import json

from xmppgw.control.snapshot import (
    ConnSnapshot,
    FarmSnapshot,
    GatewaySnapshot,
    ProbeSnapshot,
    RealSnapshot,
    VserverSnapshot,
)

PROBE = {"type": "tcp", "implicit": False, "port": 5222, "verdict": "up", "last_result": "ok",
         "last_error": None, "last_rtt": 0.0003, "last_change": "2024-06-01T12:00:00Z",
         "last_change_age": 4.2, "runs": 7}
REAL = {"address": "127.0.2.1", "weight": 8, "state": "OPERATIONAL", "conns": 3,
        "connecting": 1, "max_connecting": 8, "total": 40, "failed_attempts": 2,
        "reassigns": 1, "state_age": 12.5, "drain_end": None, "drain_left": None,
        "probes": [PROBE]}
FARM = {"name": "XMPP", "predictor": "leastconns", "nat": "server", "virtuals_inservice": 2,
        "panic": False, "available": 1, "inservice": 1, "panic_threshold": 50, "queue": 0,
        "queued_total": 0, "queue_timeouts": 0, "reals": [REAL]}
VSERVER = {"name": "P5222", "virtual": "127.0.0.1:5222", "mode": "starttls",
           "serverfarm": "XMPP", "inservice": True, "conns": 3}
CONN = {"vserver": "P5222", "client": "127.0.0.1:40000", "real": "127.0.2.1", "kind": "c2s",
        "to": "example.test", "state": "relay", "age": 3.0}


def test_to_json_is_todays_shape_key_for_key_and_in_order() -> None:
    data = {"vservers": [VSERVER], "serverfarms": [FARM]}
    snap = GatewaySnapshot.from_json(data)
    assert snap.to_json() == data
    assert json.dumps(snap.to_json()) == json.dumps(data)  # the same key order too
    assert "conns" not in snap.to_json()  # only when `show conns` asked
    with_conns = {**data, "conns": [CONN], "conns_note": "worker 0 of 2: ..."}
    assert json.dumps(GatewaySnapshot.from_json(with_conns).to_json()) == json.dumps(with_conns)


def test_typed_fields() -> None:
    snap = GatewaySnapshot.from_json({"vservers": [VSERVER], "serverfarms": [FARM],
                                      "conns": [CONN]})
    [farm] = snap.serverfarms
    assert isinstance(farm, FarmSnapshot) and farm.conns == 3
    [(owner, real)] = snap.reals()
    assert owner is farm and isinstance(real, RealSnapshot)
    assert real.probes == (ProbeSnapshot("tcp", 5222, "up", "ok", None, 0.0003,
                                         "2024-06-01T12:00:00Z", 4.2, 7),)
    assert snap.vservers == (VserverSnapshot("P5222", "127.0.0.1:5222", "starttls", "XMPP",
                                             True, 3),)
    assert snap.conns == (ConnSnapshot("P5222", "127.0.0.1:40000", "127.0.2.1", "c2s",
                                       "example.test", "relay", 3.0),)


def test_from_json_fills_what_an_older_shape_leaves_out() -> None:
    real = {k: REAL[k] for k in ("address", "weight", "state", "conns")}
    farm = {k: FARM[k] for k in ("name", "predictor", "nat", "virtuals_inservice")}
    snap = GatewaySnapshot.from_json({"vservers": [], "serverfarms": [{**farm,
                                                                       "reals": [real]}]})
    [(farm_snap, real_snap)] = snap.reals()
    assert not farm_snap.panic and farm_snap.queue == 0
    assert real_snap.probes == () and real_snap.connecting == real_snap.max_connecting == 0


def test_a_draining_real_carries_its_drain_end_and_time_left() -> None:
    real = {**REAL, "state": "OUTOFSERVICE", "drain_end": "2026-11-29T23:59:00Z",
            "drain_left": 540.0}
    snap = RealSnapshot.from_json(real)
    assert (snap.drain_end, snap.drain_left) == ("2026-11-29T23:59:00Z", 540.0)
    assert json.dumps(snap.to_json()) == json.dumps(real)
    old = {k: v for k, v in REAL.items() if not k.startswith("drain")}  # an older gateway's
    assert RealSnapshot.from_json(old).drain_end is None
