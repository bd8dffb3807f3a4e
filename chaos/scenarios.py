"""The chaos suite's scenarios, each with asserted outcomes (chaos/run.py plays them in this
order). Each takes the running `Lab` and fills in its `Result`; every fault goes through
toxiproxy-python or the harness's node control, and is undone before the scenario returns.

Order matters: the latency scenario needs a population spread evenly over the reals (as the
first logins leave it, leastconns); the kill comes last because the killed node's clients
crowd the others afterwards.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from chaos.run import Lab, Result, wait_for
from tests.harness.ejabberd import beam_pids

DOWN_STATES = ("FAILED", "PROBE_FAILED")
RESET_REAL = 0  # ej1
KILLED_REAL = 1  # ej2: not ej1, the node the others joined
RELOGIN_P99_LIMIT = 10.0  # "cut sessions back within a few seconds"


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
    since, mark = time.time(), lab.mark()
    lab.toxics.add(slow, type="latency", name="chaos_latency", stream="downstream",
                   attributes={"latency": 500, "jitter": 0})
    try:
        time.sleep(lab.sizes.window)
    finally:
        lab.toxics.remove(slow, "chaos_latency")
    after, after_total = shares(mark)
    time.sleep(lab.sizes.settle)
    lab.fill(result, since, mark)
    share_before = before[slow.address] / max(1, before_total)
    share_after = after[slow.address] / max(1, after_total)
    result.details |= {"slow_real": slow.address, "new_connections_before": before,
                       "new_connections_with_latency": after}
    result.check(before_total >= 5 and after_total >= 10,
                 f"enough new connections to judge: {before_total} before (>= 5), "
                 f"{after_total} with the toxic (>= 10)")
    result.check(share_after * 2 < share_before,
                 f"the slow real {slow.address}'s share of new connections fell to under half:"
                 f" {share_before:.0%} before ({before}), {share_after:.0%} with 500 ms latency "
                 f"({after})")
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


def kill(lab: Lab, result: Result) -> None:
    """kill -9 of one ejabberd node: 0 failed new logins, cut sessions back within seconds."""
    servers = lab.servers
    victim = lab.reals[KILLED_REAL]
    since, mark = time.time(), lab.mark()
    servers.ejabberd.kill_node(KILLED_REAL)
    try:
        wait_for(lambda: lab.records("down", since), 30, "the killed node's clients cut")
        wait_for(lambda: lab.figures.all_up()
                 and set(lab.real_states(victim, mark)) & set(DOWN_STATES), 60,
                 "every client back and the killed node's real down")
        time.sleep(lab.sizes.settle)  # new logins (churn) while the node is down
        lab.fill(result, since, mark)
        result.details["states"] = lab.real_states(victim, mark)
    finally:
        restart(lab, KILLED_REAL)
    result.check(result.sessions_cut > 0, f"sessions cut: {result.sessions_cut} (> 0)")
    result.check(result.failed == 0, f"failed logins: {result.failed} (0) "
                 f"{result.details.get('failed_reasons') or ''}".rstrip())
    p99 = result.relogin_p99_s
    result.check(p99 is not None and p99 <= RELOGIN_P99_LIMIT,
                 f"cut sessions back: median {result.relogin_median_s} s, p99 {p99} s "
                 f"(<= {RELOGIN_P99_LIMIT:g} s)")
    result.check(lab.operational(), "the restarted node's real OPERATIONAL again: "
                 + " -> ".join(lab.real_states(victim, mark)))


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


SCENARIOS: dict[str, Callable[[Lab, Result], None]] = {
    "latency": latency,
    "reset_peer": reset_peer,
    "kill": kill,
}
