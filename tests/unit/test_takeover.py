"""`xmppgw run --takeover`, the pure part (xmppgw/net/handover.py): the handover message
read back as it was written, the listening sockets matched to the new config's vservers, and
each real's health carried into a new engine without a real looking healthy that was not;
and from xmppgw/net/takeover.py, the peer's pid as the kernel gives it and what a second
takeover is told while one is under way."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from xmppgw import config
from xmppgw.config import Address, Faildetect, RealConfig, ServerfarmConfig
from xmppgw.net import takeover
from xmppgw.net.handover import (
    Handover,
    HandoverError,
    RealHealth,
    Restored,
    address_key,
    farm_health,
    plan_sockets,
    restore_health,
)
from xmppgw.net.takeover import (
    Claim,
    Releaser,
    after_release,
    open_pidfd,
    peer_pid,
    pid_fields,
    process_gone,
    spawn_successor,
)
from xmppgw.slb.farm import PanicChange, RealState, Serverfarm

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


def farm(now: float = 0.0, count: int = 4) -> Serverfarm:
    reals = tuple(RealConfig(Address(f"10.0.0.{i}", None), retry=30.0,
                             faildetect=Faildetect(numconns=4, numclients=2))
                  for i in range(1, count + 1))
    return Serverfarm(ServerfarmConfig("F", reals=reals, max_connecting=None), now)


def test_health_carried_over_keeps_failed_and_probe_failed_reals_out() -> None:
    old = farm()
    r1, r2, r3, r4 = old.reals
    old.probe_result(r1, False, 1.0)  # probes down
    for client in ("10.9.0.1", "10.9.0.2", "10.9.0.1", "10.9.0.2"):  # faildetect: FAILED
        r2.pending += 1
        old.failed(r2, client, 10.0, "refused")
    r3.pending += 1
    old.failed(r3, "10.9.0.7", 10.0, "refused")  # one failure: counts only
    assert old.state(r2, 10.0) is RealState.FAILED
    sent = Handover(1, (), health=farm_health([old], 25.0))
    carried = Handover.decode(sent.encode()).health
    assert carried == sent.health
    assert {h.real for h in carried if h.has_counts()} == {r1.name, r2.name, r3.name}
    assert {h.real: (h.state, h.age) for h in carried} == {  # every real's state, and its age
        r1.name: (RealState.PROBE_FAILED, 24.0), r2.name: (RealState.FAILED, 15.0),
        r3.name: (RealState.OPERATIONAL, 25.0), r4.name: (RealState.OPERATIONAL, 25.0)}

    new = farm(now=1000.0)  # another process: another loop clock
    restored = restore_health({"F": new}, carried, 1000.0)
    n1, n2, n3, n4 = new.reals
    assert restored.probe_down == [("F", n1.name)]
    # taken over as they were: said once by the caller, no change for the log, ages kept
    assert restored.carried == [("F", n1.name, RealState.PROBE_FAILED, 24.0),
                                ("F", n2.name, RealState.FAILED, 15.0)]
    assert new.drain_events() == []
    assert (n1.last_change, n2.last_change, n4.last_change) == (976.0, 985.0, 975.0)
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
    assert restore_health({"F": new}, health, 0.0) == Restored()
    assert all(new.state(r, 0.0) is RealState.OPERATIONAL for r in new.reals)


def test_a_state_that_changed_on_the_way_is_recorded_as_a_change() -> None:
    """FAILED with its retry elapsed between the old process's word and the new engine:
    TESTING is a real change (logged as any), not a carried state."""
    new = farm(now=100.0)
    n1 = new.reals[0]
    health = (RealHealth("F", n1.name, retry_left=0.0, state=RealState.FAILED, age=30.0),)
    restored = restore_health({"F": new}, health, 100.0)
    assert restored.carried == []
    [change] = new.drain_events()
    assert (change.real, change.old, change.new) == (n1.name, RealState.FAILED,
                                                     RealState.TESTING)


def test_an_out_of_service_real_keeps_its_state_its_age_and_its_drain() -> None:
    """`no-inservice --drain 100` at 5 s in the old process, handed over at 25 s: the new
    engine holds the operator's word already (so applying the admin table changes nothing),
    with the drain's end where it was and OUTOFSERVICE 20 s old, and records no change."""
    old = farm()
    r1 = old.reals[0]
    old.set_inservice(r1, False, 5.0, drain_timeout=100.0)
    [h] = [h for h in farm_health([old], 25.0) if h.real == r1.name]
    assert (h.state, h.age) == (RealState.OUTOFSERVICE, 20.0)
    new = farm(now=1000.0)
    n1 = new.reals[0]
    restored = restore_health({"F": new}, (h,), 1000.0, {("F", n1.name): (False, 80.0)})
    assert restored.carried == [("F", n1.name, RealState.OUTOFSERVICE, 20.0)]
    assert new.drain_events() == []
    assert (n1.inservice, n1.drain_deadline, n1.last_change) == (False, 1080.0, 980.0)
    assert new.state(n1, 1000.0) is RealState.OUTOFSERVICE


def test_a_message_without_states_restores_as_an_older_gateway_sent_it() -> None:
    """An older gateway sends health rows without `states`: its reals' states are worked out
    and recorded as changes ("carried over"), and nothing is said to be carried with an age;
    a state this version does not know is dropped the same way."""
    line = (b'{"version":1,"pid":7,"listeners":[],"real_admin":[],"vserver_admin":[],'
            b'"health":[["F","10.0.0.1",true,null,0,[]]],'
            b'"states":[["F","10.0.0.2","SLEEPING",3.0]]}\n')
    message = Handover.decode(line)
    assert message.health == (RealHealth("F", "10.0.0.1", probe_failed=True),)
    new = farm(now=50.0)
    restored = restore_health({"F": new}, message.health, 50.0)
    assert restored.carried == [] and restored.probe_down == [("F", "10.0.0.1")]
    [change] = new.drain_events()
    assert (change.new, change.reason) == (RealState.PROBE_FAILED, "carried over")
    assert new.reals[0].last_change == 50.0


# --- who is on the other end, and the claim (xmppgw/net/takeover.py) -------------------------


def test_the_peer_pid_is_the_kernels_word() -> None:
    """SO_PEERCRED on a real AF_UNIX connection names the process at the other end: here
    this one, whatever pid a message claims."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_pid(a) == peer_pid(b) == os.getpid()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        assert peer_pid(tcp) is None  # no credentials: None, never an exception


def test_a_claimed_pid_other_than_the_kernels_is_logged_beside_it() -> None:
    assert pid_fields("new", 4711, 4711) == {"new_pid": 4711}
    assert pid_fields("new", 4711, 1) == {"new_pid": 4711, "claimed_pid": 1}
    assert pid_fields("new", 4711, None) == {"new_pid": 4711, "claimed_pid": None}
    assert pid_fields("old", None, 42) == {"old_pid": 42}  # no word from the kernel


def test_a_second_takeover_is_told_who_holds_the_claim_and_until_when() -> None:
    since = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    claim = Claim(pid=4711, since=since, expires=since + 30)
    text = claim.refusal(released=False, now=since + 12.4)
    assert text.startswith("a takeover by pid 4711 is under way since 2027-01-15T08:00:00Z "
                           "(12 s ago)"), text
    assert "given up at 2027-01-15T08:00:30Z" in text and "connection ends" in text
    after = claim.refusal(released=True, now=since + 40)
    assert "taken over by pid 4711" in after and "under way" not in after


def test_a_panic_is_counted_once_every_real_is_restored_and_carried_if_it_was_on() -> None:
    """5 reals, 4 of them PROBE_FAILED (1 of 5 available, threshold 50%). Restored one by
    one, the farm would enter panic mode half way (2 of 5, the reals still to come counted
    as available) and say so with those numbers; it is counted once, at the end. A panic
    the old process was in already is carried over (no PanicChange: the caller logs
    `farm_panic_carried`); one it was not in is a change, with the right numbers."""
    health = tuple(RealHealth("F", f"10.0.0.{i}", probe_failed=True,
                              state=RealState.PROBE_FAILED, age=5.0) for i in (1, 2, 3, 4))
    fresh = farm(count=5)
    restored = restore_health({"F": fresh}, health, 10.0)
    panics = [e for e in fresh.drain_events() if isinstance(e, PanicChange)]
    assert [(e.panic, e.available, e.inservice) for e in panics] == [(True, 1, 5)]
    assert restored.panic_carried == []
    carried = farm(count=5)
    restored = restore_health({"F": carried}, health, 10.0, panic=("F",))
    assert carried.panic and carried.drain_events() == []
    assert restored.panic_carried == [("F", 1, 5, 50)]
    ended = farm(count=5)  # in panic in the old process, not by the states it handed over
    restored = restore_health({"F": ended}, health[:1], 10.0, panic=("F",))
    assert [(e.panic, e.available) for e in ended.drain_events()] == [(False, 4)]
    assert not ended.panic and restored.panic_carried == []
    message = Handover(1, (), health=health, panic=("F",))
    assert Handover.decode(message.encode()).panic == ("F",)


# --- never two gateways (xmppgw/net/takeover.py) ---------------------------------------------


def test_the_successor_serves_only_if_released_or_the_old_process_is_gone() -> None:
    assert after_release({"ok": True, "data": {}}, False, 7)[0] == "serve"
    verdict, why = after_release(None, True, 7)
    assert verdict == "alone" and "pid 7" in why and "has exited" in why
    for answer in (None, {"ok": False, "error": "the takeover was given up"}, {"x": 1}):
        verdict, why = after_release(answer, False, 7)
        assert verdict == "give_up" and "pid 7" in why and "still running" in why, why
    assert "the takeover was given up" in after_release(
        {"ok": False, "error": "the takeover was given up"}, False, 7)[1]


def test_a_process_is_gone_once_it_exited_even_before_it_is_reaped() -> None:
    """A real child: alive, then exited but not reaped (a zombie, as an old gateway whose
    parent has not waited yet): gone, by pidfd and by pid alike."""
    child = subprocess.Popen(["sleep", "30"])
    pidfd = open_pidfd(child.pid)
    try:
        assert not process_gone(child.pid) and not process_gone(child.pid, pidfd)
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not process_gone(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process_gone(child.pid)  # a zombie: not reaped yet
        assert pidfd is None or process_gone(child.pid, pidfd)
    finally:
        child.kill()
        child.wait()
        if pidfd is not None:
            os.close(pidfd)
    assert not process_gone(None)  # no pid: not known to be gone


class Log:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, object]]] = []

    def warning(self, event: str, **fields: object) -> None:
        self.records.append((event, fields))


def test_a_second_sigusr2_while_the_successor_runs_is_logged_not_obeyed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    running = subprocess.Popen(["sleep", "30"])
    try:
        monkeypatch.setattr(takeover, "_successor", [running])
        log = Log()
        assert spawn_successor(None, log) is None  # type: ignore[arg-type]
        [(event, fields)] = log.records
        assert event == "takeover_already_running" and fields["pid"] == running.pid
    finally:
        running.kill()
        running.wait()


class HeldGateway:
    control = None  # what the guard reads: only the claim


def test_operator_commands_are_refused_while_a_claim_is_held() -> None:
    releaser = Releaser(HeldGateway(), lambda: None)  # type: ignore[arg-type]
    assert releaser.guard({"command": "reload"}) is None  # no claim: answered
    since = time.time()
    releaser.claim = Claim(pid=4711, since=since, expires=since + 30)
    for command in ("real", "vserver", "reload"):
        text = releaser.guard({"command": command})
        assert text is not None and "a takeover by pid 4711 is under way" in text, text
        assert "would not be carried over" in text
    assert releaser.guard({"command": "show"}) is None
    assert releaser.guard({"command": "zone"}) is None
    releaser.released = True
    text = releaser.guard({"command": "real"})
    assert text is not None and "taken over by pid 4711" in text, text
