"""The chaos suite's scenarios, each with asserted outcomes (chaos/run.py plays them in this
order). Each takes the running `Lab` and fills in its `Result` (and may return extra rows: a
measurement side by side, e.g. SRV-only clients without the gateway); every fault goes
through toxiproxy-python, the harness's node control, a signal, nftables or the gateway's
operator command, and is undone before the scenario returns.

Order matters: the latency scenario needs a population spread evenly over the reals (as the
first logins leave it, leastconns); the kill comes last because the killed node's clients
crowd the others afterwards.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from chaos.direct import Login, srv_logins, srv_records
from chaos.faults import blackhole as nft_blackhole
from chaos.faults import stopped
from chaos.messaging import Link, Messaging
from chaos.run import Lab, Result, percentile, wait_for
from chaos.topology import PORTS
from tests.harness.ejabberd import beam_pids
from tests.harness.servers import DEFAULT_BACKLOG_C2S_PORT

DOWN_STATES = ("FAILED", "PROBE_FAILED")
RESET_REAL = 0  # ej1
DRAINED_REAL = 2  # ej3
# SIGSTOP, ejabberdctl stop and kill -9 hit whichever of these has the most sessions then
# (a drained or restarted node is empty until clients are cut elsewhere): not ej1, the node
# the others joined
NODE_FAULT_REALS = (1, 2)
BLACKHOLED_REAL = 0  # ej1: its SYNs dropped (the Erlang cluster's own traffic is untouched)
SPARE_REAL = 3
LATENCY_TRANSIENT_S = 5.0  # see latency(): how long the slow real's count takes to rise
RELOGIN_P99_LIMIT = 10.0  # "cut sessions back within a few seconds"
FARM = "XMPP"


def latency(lab: Lab, result: Result) -> None:
    """500 ms latency toxic on one real: leastconns moves new load away from it."""
    core = lab.reals[:3]

    def shares(mark: int) -> tuple[dict[str, int], int]:
        new = Counter(r.get("real") for r in lab.gateway_since(mark, "connected"))
        counts = {r.address: new.get(r.address, 0) for r in core}
        return counts, sum(counts.values())

    # The control window, no toxic: the real leastconns feeds most (the population's logins
    # need not have spread evenly) is the one made slow, so that a drop means something.
    mark = lab.mark()
    time.sleep(lab.sizes.control)
    before, before_total = shares(mark)
    slow = max(core, key=lambda r: before[r.address])
    # leastconns sees the latency only through the slow real's connection count, which rises
    # as logins (a few round trips each: header, STARTTLS, TLS, SASL, bind) pile up there; so
    # the first seconds with the toxic are a transient where it still gets what it got before,
    # and the share is judged on the steady state after it
    transient = min(LATENCY_TRANSIENT_S, lab.sizes.window / 2)
    since, mark = time.time(), lab.mark()
    lab.toxics.add(slow, type="latency", name="chaos_latency", stream="downstream",
                   attributes={"latency": 500, "jitter": 0})
    try:
        time.sleep(transient)
        steady = lab.mark()
        time.sleep(lab.sizes.window - transient)
    finally:
        lab.toxics.remove(slow, "chaos_latency")
    whole, _ = shares(mark)
    after, after_total = shares(steady)
    time.sleep(lab.sizes.settle)
    lab.fill(result, since, mark)
    share_before = before[slow.address] / max(1, before_total)
    share_after = after[slow.address] / max(1, after_total)
    result.details |= {"slow_real": slow.address, "new_connections_before": before,
                       "new_connections_with_latency": after,
                       "new_connections_with_latency_incl_transient": whole,
                       "transient_s": transient}
    result.check(before_total >= 5 and after_total >= 10,
                 f"enough new connections to judge: {before_total} before (>= 5), "
                 f"{after_total} with the toxic (>= 10)")
    result.check(share_after * 2 < share_before,
                 f"the slow real {slow.address}'s share of new connections fell to under half:"
                 f" {share_before:.0%} before ({before}), {share_after:.0%} with 500 ms latency "
                 f"({after}, from {transient:g} s after the toxic; {whole} from its start)")
    result.check(result.failed == 0, f"failed logins: {result.failed} (0)")
    result.check(wait_for(lab.figures.all_up, 30, "every client up") is True,
                 "every client up at the end")


def reset_peer(lab: Lab, result: Result) -> None:
    """reset_peer toxic (upstream, toxicity 1, 50 ms after a link's first byte) on one real's
    links for a while: streams opening there are reset in the middle of STARTTLS (and the
    real's established sessions at their next ping); every client logs in again."""
    target = lab.reals[RESET_REAL]
    since, mark = time.time(), lab.mark()
    lab.toxics.add(target, type="reset_peer", name="chaos_reset", stream="upstream",
                   toxicity=1.0, attributes={"timeout": 50})
    try:
        time.sleep(lab.sizes.window / 2)
    finally:
        lab.toxics.remove(target, "chaos_reset")
    removed = time.time()
    try:
        wait_for(lab.figures.all_up, 60, "every client logged in again")
    except TimeoutError:
        pass
    back = time.time() - removed
    time.sleep(lab.sizes.settle)
    lab.fill(result, since, mark)
    latest = lab.figures.latest()
    left_out = lab.figures.total() - sum(1 for r in latest.values() if r["event"] == "up")
    to_target = [r for r in lab.gateway_since(mark, "connected") if r.get("real") == target.address]
    attempts = Counter(str(r.get("reason"))[:80] for r in lab.gateway_since(mark, "real_attempt_failed")
                       if r.get("real") == target.address)
    result.details |= {"left_out": left_out, "all_back_s_after_removal": round(back, 2),
                       "states": lab.real_states(target, mark),
                       "streams_committed_to_target": len(to_target),
                       "attempts_failed_on_target": dict(attempts)}
    result.check(result.sessions_cut + result.failed > 0,
                 f"the fault hit: {result.sessions_cut} sessions cut, {result.failed} failed "
                 "attempts")
    result.check(left_out == 0, f"clients left out at the end: {left_out} (0); all back "
                 f"{back:.1f} s after the toxic went")


def restart(lab: Lab, index: int) -> None:
    """Start a killed node again and wait until its real is back in the farm."""
    servers = lab.servers
    if not beam_pids(servers.ejabberd.nodes[index].name):
        servers.ejabberd.start_node(index)
    real = lab.reals[index]
    try:
        wait_for(lambda: lab.real_states(real)[-1:] == ["OPERATIONAL"]
                 and lab.watch.state(real.address) == "OPERATIONAL", 60,
                 f"{real.address} OPERATIONAL again")
    except TimeoutError:
        pass  # the scenario's check says so


def busiest(lab: Lab, indices: Sequence[int] = NODE_FAULT_REALS) -> int:
    """The index of the real among `indices` with the most connections now."""
    return max(indices, key=lambda i: lab.conns(lab.reals[i]))


def _since_state(lab: Lab, real: Any, mark: int, states: Sequence[str]) -> float | None:
    """Wall-clock time the gateway logged `real` entering one of `states` after `mark`."""
    for r in lab.gateway_since(mark, "real_state"):
        if r.get("real") == real.address and r.get("new") in states:
            return record_time(r)
    return None


def record_time(record: dict[str, Any]) -> float:
    """A gateway log record's time (its ISO `timestamp`), or now if it has none."""
    import datetime

    stamp = record.get("timestamp")
    if isinstance(stamp, str):
        try:
            return datetime.datetime.fromisoformat(stamp).timestamp()
        except ValueError:
            pass
    return time.time()


def _wait_operational(lab: Lab, real: Any, timeout: float = 60.0) -> bool:
    try:
        wait_for(lambda: lab.watch.state(real.address) == "OPERATIONAL", timeout,
                 f"{real.address} OPERATIONAL")
        return True
    except TimeoutError:
        return False


def _back(lab: Lab, timeout: float = 60.0) -> bool:
    try:
        return bool(wait_for(lab.figures.all_up, timeout, "every client up"))
    except TimeoutError:
        return False


def drain(lab: Lab, result: Result) -> None:
    """Planned drain (`xmppgw real XMPP <real> no-inservice --drain N`): no session cut before
    the deadline, none of the drained real's sessions left out after it."""
    target = lab.reals[DRAINED_REAL]
    deadline_s = lab.sizes.drain
    since, mark = time.time(), lab.mark()
    lab.ctl("real", FARM, target.address, "no-inservice", "--drain", str(deadline_s))
    deadline = since + deadline_s
    try:
        # the gateway logs `drained` at the deadline if it closed anything there
        try:
            wait_for(lambda: lab.gateway_since(mark, "drained"), deadline_s + 10,
                     "the drain's deadline")
        except TimeoutError:
            pass
        drained = (lab.gateway_since(mark, "drained") or [{}])[-1]
        back = _back(lab)
        time.sleep(lab.sizes.settle)
        lab.fill(result, since, mark)
        early = [r for r in lab.records("down", since) if r["t"] < deadline - 0.5]
        new_there = [r for r in lab.gateway_since(mark, "connected")
                     if r.get("real") == target.address and record_time(r) > since + 0.5]
    finally:
        lab.ctl("real", FARM, target.address, "inservice")
    operational = _wait_operational(lab, target)
    result.details |= {"drained_real": target.address, "deadline_s": deadline_s,
                       "closed_at_deadline": drained.get("closed"),
                       "states": lab.real_states(target, mark)}
    result.check(not early, f"sessions cut before the {deadline_s} s deadline: {len(early)} (0)")
    result.check(not new_there, f"new streams to the draining real: {len(new_there)} (0)")
    result.check(int(drained.get("closed") or 0) > 0,
                 f"the drained real's sessions closed at the deadline: {drained.get('closed')}"
                 " (> 0)")
    result.check(result.failed == 0, f"failed logins: {result.failed} (0)")
    p99 = result.relogin_p99_s
    result.check(back and p99 is not None and p99 <= RELOGIN_P99_LIMIT,
                 f"every closed session back: median {result.relogin_median_s} s, p99 {p99} s "
                 f"(<= {RELOGIN_P99_LIMIT:g} s)")
    result.check(operational, "in service again: " + " -> ".join(lab.real_states(target, mark)))


def spare(lab: Lab, result: Result) -> None:
    """The spare put in service (`xmppgw real XMPP <spare> inservice`): it takes new logins,
    none fails; then out of service again (`no-inservice --drain 2`) for what follows."""
    real = lab.reals[SPARE_REAL]
    thread = lab.spare.get("thread")
    if thread is not None:
        thread.join(120)
    if not lab.spare.get("up"):
        result.check(False, f"the spare node is up ({lab.spare.get('error')})")
        return
    since, mark = time.time(), lab.mark()
    lab.ctl("real", FARM, real.address, "inservice")

    def taken() -> list[dict[str, Any]]:
        return [r for r in lab.gateway_since(mark, "connected") if r.get("real") == real.address]

    try:
        try:
            wait_for(taken, 30, "a stream on the spare")
        except TimeoutError:
            pass
        time.sleep(lab.sizes.window / 2)
        lab.fill(result, since, mark)
        streams = len(taken())
        total = len(lab.gateway_since(mark, "connected"))
        states = lab.real_states(real, mark)
    finally:
        lab.ctl("real", FARM, real.address, "no-inservice", "--drain", "2")
        time.sleep(3)  # past the deadline: what was still open there is closed
        _back(lab)
    result.details |= {"spare": real.address, "new_streams_on_spare": streams,
                       "new_streams": total, "states": states}
    result.check(streams > 0, f"new streams on the spare: {streams} of {total} (> 0); states "
                 + " -> ".join(states))
    result.check(result.failed == 0, f"failed logins: {result.failed} (0) "
                 f"{result.details.get('failed_reasons') or ''}".rstrip())


def sigstop(lab: Lab, result: Result) -> None:
    """SIGSTOP of one node (hung: its sockets open, nothing answers): probes detect it, no
    new login fails after that; then SIGCONT and it comes back."""
    hung = busiest(lab)
    real = lab.reals[hung]
    sessions = lab.conns(real)
    since, mark = time.time(), lab.mark()
    pid = lab.servers.ejabberd.pid_of(hung)
    detected: float | None = None
    with stopped(pid):
        try:
            wait_for(lambda: _since_state(lab, real, mark, DOWN_STATES), 30,
                     "probes detect the hung node")
            detected = _since_state(lab, real, mark, DOWN_STATES)
        except TimeoutError:
            pass
        time.sleep(lab.sizes.window)
        lab.fill(result, since, mark)
    continued = time.time()
    operational = _wait_operational(lab, real)
    back = _back(lab)
    after = lab.failures_begun_after(detected) if detected is not None else []
    pings = [r for r in lab.figures.records("ping") if since <= r["t"] <= continued]
    result.details |= {"hung_real": real.address, "its_connections": sessions,
                       "states": lab.real_states(real, mark),
                       "detected_after_s": None if detected is None
                       else round(detected - since, 2),
                       "failed_after_detection": after[:10],
                       "pings_failed_while_hung": sum(1 for r in pings if not r["ok"]),
                       "pings_ok_while_hung": sum(1 for r in pings if r["ok"])}
    result.check(detected is not None,
                 "probes detected the hung node: "
                 + (f"{detected - since:.1f} s after SIGSTOP" if detected else "not in 30 s"))
    result.check(not after, f"failed logins begun after detection: {len(after)} (0) "
                 f"{after[:3] or ''}".rstrip())
    result.check(operational and back, "after SIGCONT: OPERATIONAL again ("
                 + " -> ".join(lab.real_states(real, mark)) + f"), every client up: {back}")


def ctl_stop(lab: Lab, result: Result) -> None:
    """`ejabberdctl stop` of one node: its sessions closed, no failed new login, the cut
    sessions back within seconds."""
    stopped_real = busiest(lab)
    real = lab.reals[stopped_real]
    result.details["its_connections"] = lab.conns(real)
    since, mark = time.time(), lab.mark()
    lab.servers.ejabberd.stop_node(stopped_real)
    try:
        wait_for(lambda: lab.records("down", since), 30, "the stopped node's clients cut")
        back = _back(lab)
        time.sleep(lab.sizes.settle)
        lab.fill(result, since, mark)
        result.details["states"] = lab.real_states(real, mark)
        out = _since_state(lab, real, mark, DOWN_STATES)
        cut_at = min((r["t"] for r in lab.records("down", since)), default=None)
        # streams the gateway sent to the stopping node after its sessions were cut: leastconns
        # sees it emptied while ejabberd's listener still accepts during the shutdown
        sent_back = [r for r in lab.gateway_since(mark, "connection")
                     if r.get("real") == real.address and cut_at is not None
                     and record_time(r) - float(r.get("duration") or 0) >= cut_at]
    finally:
        restart(lab, stopped_real)
    result.details |= {
        "out_of_farm_after_s": None if out is None else round(out - since, 2),
        "first_cut_after_s": None if cut_at is None else round(cut_at - since, 2),
        "streams_to_the_stopping_node_after_the_cut": len(sent_back),
        "of_them_closed_within_5_s": sum(1 for r in sent_back
                                         if float(r.get("duration") or 0) < 5)}
    result.check(result.sessions_cut > 0, f"sessions cut: {result.sessions_cut} (> 0)")
    result.check(result.failed == 0, f"failed logins: {result.failed} (0) "
                 f"{result.details.get('failed_reasons') or ''}; the gateway sent "
                 f"{len(sent_back)} streams to the stopping node after its sessions were cut "
                 f"(taken out {result.details['out_of_farm_after_s']} s after the stop)")
    p99 = result.relogin_p99_s
    result.check(back and p99 is not None and p99 <= RELOGIN_P99_LIMIT,
                 f"cut sessions back: median {result.relogin_median_s} s, p99 {p99} s "
                 f"(<= {RELOGIN_P99_LIMIT:g} s)")
    result.check(lab.operational(), "the restarted node's real OPERATIONAL again: "
                 + " -> ".join(lab.real_states(real, mark)))


def _srv_row(lab: Lab, name: str, logins: list[Login], bound: float, fault: str) -> Result:
    """The SRV-only clients' row: no gateway, the faulty node's record first."""
    row = Result(name, gateway_errors=None, asserted=False)
    row.logins_tried = len(logins)
    row.failed = sum(1 for x in logins if not x.ok)
    times = [x.seconds for x in logins]
    if times:
        row.login_median_s = round(statistics.median(times), 3)
        row.login_p99_s = round(percentile(times, 0.99) or 0.0, 3)
    row.details |= {"bound_s": bound, "reasons": sorted({x.reason for x in logins if x.reason}),
                    "times_s": times}
    # a measurement, not an outcome the suite wants: it holds whatever the figures
    row.check(bool(logins), f"measured: {len(logins) - row.failed} of {len(logins)} SRV-only "
              f"clients logged in within the {bound:g} s bound with {fault} (time to log in "
              f"counted at the bound for those that did not)")
    return row


def _srv_targets(lab: Lab, first: int) -> list[tuple[str, int]]:
    order = [first] + [i for i in range(3) if i != first]
    return [(lab.reals[i].node, DEFAULT_BACKLOG_C2S_PORT) for i in order]


def _srv_jids(lab: Lab) -> list[str]:
    return [lab.servers.jid(f"user{100 + i}") + f"/srv{i}" for i in range(lab.sizes.srv_clients)]


def blackhole(lab: Lab, result: Result) -> list[Result]:
    """SYN blackhole (nftables) of one real: no failed login through the gateway; beside it,
    clients with no gateway resolving SRV records whose first names the same node."""
    real = lab.reals[BLACKHOLED_REAL]
    since, mark = time.time(), lab.mark()
    bound = lab.sizes.srv_timeout
    servers = lab.servers
    with srv_records(servers.dns, servers.ejabberd_domain, _srv_targets(lab, BLACKHOLED_REAL)):
        targets = [(real.address, list(PORTS)), (real.node, [DEFAULT_BACKLOG_C2S_PORT])]
        with nft_blackhole(targets):
            logins = srv_logins(_srv_jids(lab), servers.password, servers.dns_address, bound)
            rest = lab.sizes.window - (time.time() - since)
            if rest > 0:
                time.sleep(rest)
            lab.fill(result, since, mark)
            detected = _since_state(lab, real, mark, DOWN_STATES)
    operational = _wait_operational(lab, real)
    result.details |= {"blackholed_real": real.address, "node": real.node,
                       "states": lab.real_states(real, mark),
                       "detected_after_s": None if detected is None
                       else round(detected - since, 2)}
    result.check(result.failed == 0, f"failed logins through the gateway: {result.failed} (0) "
                 f"{result.details.get('failed_reasons') or ''}".rstrip())
    result.check(detected is not None, "the black-holed real taken out: "
                 + " -> ".join(lab.real_states(real, mark)))
    result.check(operational, "OPERATIONAL again once the SYNs pass")
    return [_srv_row(lab, "blackhole: SRV only, no gateway", logins, bound,
                     f"the first SRV target ({real.node}) black-holed")]


def _messages(lab: Lab, result: Result, toxics: list[dict[str, Any]]) -> None:
    """Message pairs (slixmpp and aioxmpp, XEP-0198 on) through the client links carrying
    `toxics` (each added to both streams): every message intact, none lost, duplicates only
    where a stream was resumed."""
    since, mark = time.time(), lab.mark()
    for toxic in toxics:
        lab.toxics.add_client(**toxic)
    try:
        messaging = Messaging(lab.servers.jid, lab.servers.password,
                              Link(*lab.toxics.client_link(5222)),
                              Link(*lab.toxics.client_link(5223)),
                              pairs=lab.sizes.pairs, interval=lab.sizes.message_interval)
        tally = messaging.run(lab.sizes.window)
    finally:
        for toxic in toxics:
            lab.toxics.remove_client(str(toxic["name"]))
    lab.fill(result, since, mark)
    clients = 2 * lab.sizes.pairs
    result.logins_tried += clients
    result.failed += len(tally.login_failures)
    result.messages_sent = len(tally.sent)
    result.messages_lost = tally.lost()
    result.messages_duplicated = tally.duplicated()
    result.details |= {"toxics": toxics, "implementations": dict(messaging.impls),
                       "corrupted": tally.corrupted, "message_streams_cut": tally.cuts,
                       "resumed": tally.resumed, "sm_enabled": tally.sm_enabled,
                       "message_logins": tally.logins,
                       "login_failures": tally.login_failures[:5]}
    result.check(not tally.login_failures, f"every message client logged in: {clients - len(tally.login_failures)} "
                 f"of {clients} ({dict(messaging.impls)} pairs) {tally.login_failures[:2] or ''}".rstrip())
    result.check(tally.sm_enabled >= tally.logins > 0,
                 f"XEP-0198 enabled on every stream: {tally.sm_enabled} of {tally.logins}")
    result.check(len(tally.sent) > 0 and tally.lost() == 0 and tally.corrupted == 0,
                 f"every message arrived intact: {len(tally.sent)} sent, {tally.lost()} lost, "
                 f"{tally.corrupted} failed the checksum")
    allowed = "none" if tally.resumed == 0 else f"only on the {tally.resumed} resumed streams"
    result.check(tally.duplicated() == 0 or tally.resumed > 0,
                 f"duplicates: {tally.duplicated()} (XEP-0198 allows {allowed}; streams cut "
                 f"{tally.cuts}, resumed {tally.resumed})")
    result.check(result.failed == 0, f"failed logins: {result.failed} (0)")


def slicer(lab: Lab, result: Result) -> None:
    """slicer toxic on the client links (both ways: 64 +- 48 byte slices, 200 us apart):
    numbered, checksummed messages between client pairs all arrive intact, once."""
    _messages(lab, result, [
        {"type": "slicer", "name": f"chaos_slicer_{stream}", "stream": stream,
         "attributes": {"average_size": 64, "size_variation": 48, "delay": 200}}
        for stream in ("upstream", "downstream")])


def bandwidth(lab: Lab, result: Result) -> None:
    """bandwidth toxic on the client links (both ways, 6 KB/s: under what a sender offers):
    numbered, checksummed messages between client pairs all arrive intact, once."""
    _messages(lab, result, [
        {"type": "bandwidth", "name": f"chaos_bandwidth_{stream}", "stream": stream,
         "attributes": {"rate": 6}} for stream in ("upstream", "downstream")])


def kill(lab: Lab, result: Result) -> list[Result]:
    """kill -9 of one ejabberd node: 0 failed new logins, cut sessions back within seconds;
    the reconnect storm that follows leaves every healthy real OPERATIONAL; beside it,
    SRV-only clients whose first record names the killed node."""
    servers = lab.servers
    killed = busiest(lab)
    victim = lab.reals[killed]
    result.details["its_connections"] = lab.conns(victim)
    healthy = [r for r in lab.reals[:3] if r is not victim]
    storm = Result("kill: reconnect storm")
    since, mark = time.time(), lab.mark()
    with srv_records(servers.dns, servers.ejabberd_domain, _srv_targets(lab, killed)):
        servers.ejabberd.kill_node(killed)
        try:
            logins = srv_logins(_srv_jids(lab), servers.password, servers.dns_address,
                                lab.sizes.srv_timeout)
            wait_for(lambda: lab.records("down", since), 30, "the killed node's clients cut")
            wait_for(lambda: lab.figures.all_up()
                     and set(lab.real_states(victim, mark)) & set(DOWN_STATES), 60,
                     "every client back and the killed node's real down")
            time.sleep(lab.sizes.settle)  # new logins (churn) while the node is down
            lab.fill(result, since, mark)
            result.details["states"] = lab.real_states(victim, mark)
            storm_states = {r.address: lab.real_states(r, mark) for r in healthy}
            panics = lab.gateway_since(mark, "farm_panic")
            with lab.watch.lock:
                storm.details["show_reals"] = lab.watch.reals_text
            now_states = {r.address: lab.watch.state(r.address) for r in healthy}
        finally:
            restart(lab, killed)
    result.check(result.sessions_cut > 0, f"sessions cut: {result.sessions_cut} (> 0)")
    result.check(result.failed == 0, f"failed logins: {result.failed} (0) "
                 f"{result.details.get('failed_reasons') or ''}".rstrip())
    p99 = result.relogin_p99_s
    result.check(p99 is not None and p99 <= RELOGIN_P99_LIMIT,
                 f"cut sessions back: median {result.relogin_median_s} s, p99 {p99} s "
                 f"(<= {RELOGIN_P99_LIMIT:g} s)")
    result.check(lab.operational(), "the restarted node's real OPERATIONAL again: "
                 + " -> ".join(lab.real_states(victim, mark)))
    # the storm: the killed node's clients all log in again at once, on the other reals
    storm.logins_tried = len([r for r in lab.records("up", since) if r["t"] <= time.time()])
    storm.failed = len(lab.records("fail", since))
    storm.sessions_cut = result.sessions_cut
    storm.relogin_median_s, storm.relogin_p99_s = result.relogin_median_s, result.relogin_p99_s
    storm.gateway_errors = result.gateway_errors
    storm.details |= {"healthy_reals_state_changes": storm_states,
                      "healthy_reals_after": now_states, "farm_panic": len(panics)}
    went_down = {a: s for a, s in storm_states.items() if set(s) & set(DOWN_STATES)}
    storm.check(not went_down, f"no healthy real FAILED in the storm: {went_down or 'none'}")
    storm.check(all(s == "OPERATIONAL" for s in now_states.values()),
                f"the healthy reals in `show reals` after it: {now_states}")
    storm.check(not panics, f"farm_panic: {len(panics)} (0)")
    storm.check(storm.failed == 0, f"failed re-logins: {storm.failed} (0)")
    return [storm, _srv_row(lab, "kill: SRV only, no gateway", logins, lab.sizes.srv_timeout,
                            f"the first SRV target ({victim.node}) killed")]


SCENARIOS: dict[str, Callable[[Lab, Result], Any]] = {
    "latency": latency,
    "reset_peer": reset_peer,
    "drain": drain,
    "spare": spare,
    "sigstop": sigstop,
    "ctl_stop": ctl_stop,
    "blackhole": blackhole,
    "slicer": slicer,
    "bandwidth": bandwidth,
    "kill": kill,
}
# the quick set (CI: tests/integration/test_chaos.py): the cheap ones; the spare (a fourth
# ejabberd node to start) and ejabberdctl stop (a node restart) only in the full run
QUICK = ("latency", "reset_peer", "drain", "sigstop", "blackhole", "slicer", "kill")
