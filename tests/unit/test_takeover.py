"""`xmppgw run --takeover`, the pure part (xmppgw/net/handover.py): the handover message
read back as it was written, the listening sockets matched to the new config's vservers, and
each real's health carried into a new engine without a real looking healthy that was not."""

from __future__ import annotations

import pytest

from xmppgw import config
from xmppgw.config import Address, Faildetect, RealConfig, ServerfarmConfig
from xmppgw.net.handover import (
    Handover,
    HandoverError,
    RealHealth,
    address_key,
    farm_health,
    plan_sockets,
    restore_health,
)
from xmppgw.slb.farm import RealState, Serverfarm

CONFIG = """
[gateway]
domains = ["example.test"]

[[vserver]]
name = "P5222"
virtual = "127.0.0.1:5222"
serverfarm = "F"

[[vserver]]
name = "renamed"
virtual = "[::1]:5223"
serverfarm = "F"

[[vserver]]
name = "new"
virtual = "127.0.0.1:5269"
serverfarm = "F"

[[serverfarm]]
name = "F"
[[serverfarm.real]]
address = "127.0.2.1"
"""


def test_a_handover_message_reads_back_as_it_was_written() -> None:
    message = Handover(
        pid=4711, listeners=(("P5222", "127.0.0.1", 5222), ("P5223", "::1", 5223)),
        real_admin={("F", "127.0.2.1"): (False, 1_800_000_000.5), ("F", "127.0.2.2"): (True, None)},
        vserver_admin={"P5269": (False, None)},
        health=(RealHealth("F", "127.0.2.3", probe_failed=True),
                RealHealth("F", "127.0.2.4", retry_left=12.5, consecutive_failures=3,
                           failed_clients=("10.0.0.1", "10.0.0.2"))))
    line = message.encode()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert Handover.decode(line) == message


@pytest.mark.parametrize("line", [b"", b"[]", b'{"version": 99}', b'{"version": 1}',
                                  b'{"ok": false, "error": "no"}', b"\xff"])
def test_anything_else_is_refused_with_handover_error(line: bytes) -> None:
    with pytest.raises(HandoverError):
        Handover.decode(line)


def test_sockets_go_to_the_vserver_on_their_address_whatever_its_name() -> None:
    vservers = config.loads(CONFIG, "test.toml").vservers
    offered = [("127.0.0.1", 5222), ("0:0::1", 5223), ("127.0.0.1", 5280)]
    plan = plan_sockets(offered, vservers)
    assert plan.adopt == {"P5222": 0, "renamed": 1}
    assert plan.bind == ("new",)  # nothing received for it: it binds its own
    assert plan.close == (2,)  # no vserver of the new config listens there any more


def test_nothing_received_means_every_vserver_binds() -> None:
    vservers = config.loads(CONFIG, "test.toml").vservers
    plan = plan_sockets([], vservers)
    assert plan.adopt == {} and plan.close == ()
    assert plan.bind == ("P5222", "renamed", "new")


def test_addresses_compare_in_one_spelling() -> None:
    assert address_key("[::1]", 5222) == address_key("0:0:0:0:0:0:0:1", 5222) == ("::1", 5222)
    assert address_key("127.0.0.1", 5222) != address_key("127.0.0.2", 5222)


def farm(now: float = 0.0) -> Serverfarm:
    reals = tuple(RealConfig(Address(f"10.0.0.{i}", None), retry=30.0,
                             faildetect=Faildetect(numconns=4, numclients=2))
                  for i in (1, 2, 3, 4))
    return Serverfarm(ServerfarmConfig("F", reals=reals, max_connecting=None), now)


def test_health_carried_over_keeps_failed_and_probe_failed_reals_out() -> None:
    old = farm()
    r1, r2, r3, _r4 = old.reals
    old.probe_result(r1, False, 1.0)  # probes down
    for client in ("10.9.0.1", "10.9.0.2", "10.9.0.1", "10.9.0.2"):  # faildetect: FAILED
        r2.pending += 1
        old.failed(r2, client, 10.0, "refused")
    r3.pending += 1
    old.failed(r3, "10.9.0.7", 10.0, "refused")  # one failure: counts only
    assert old.state(r2, 10.0) is RealState.FAILED
    sent = Handover(1, (), health=farm_health([old], 25.0))
    carried = Handover.decode(sent.encode()).health
    assert {h.real for h in carried} == {r1.name, r2.name, r3.name}  # r4 has nothing to say

    new = farm(now=1000.0)  # another process: another loop clock
    down = restore_health({"F": new}, carried, 1000.0)
    n1, n2, n3, n4 = new.reals
    assert down == [("F", n1.name)]
    assert new.state(n1, 1000.0) is RealState.PROBE_FAILED
    assert new.state(n2, 1000.0) is RealState.FAILED
    assert new.state(n2, 1014.9) is RealState.FAILED  # 30 s retry, 15 s of it passed before
    assert new.state(n2, 1015.1) is RealState.TESTING
    assert n3.consecutive_failures == 1 and n3.failed_clients == {"10.9.0.7"}
    assert new.state(n3, 1000.0) is RealState.OPERATIONAL
    assert new.state(n4, 1000.0) is RealState.OPERATIONAL
    picked = {new.pick(f"10.8.0.{i}", 1000.0) for i in range(8)}
    assert picked <= {n3, n4}, picked  # new connections go only where the old ones went


def test_reals_gone_from_the_new_config_are_skipped() -> None:
    new = farm()
    health = (RealHealth("F", "10.0.0.99", probe_failed=True),
              RealHealth("OTHER", "10.0.0.1", retry_left=5.0))
    assert restore_health({"F": new}, health, 0.0) == []
    assert all(new.state(r, 0.0) is RealState.OPERATIONAL for r in new.reals)
