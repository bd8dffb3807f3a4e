"""The operator's drains (xmppgw/net/operator.py): a drain's end is held on the wall clock
and turned into loop time at each look; a new `no-inservice --drain S` on a real already
draining replaces the old end, the same end looked at again does not."""

from __future__ import annotations

from xmppgw.net.operator import ADMIN_TICK, drain_left, drain_until, same_deadline


def test_the_same_drain_looked_at_again_is_not_a_new_one() -> None:
    until = drain_until(False, 600, wall=1000.0)
    at_first = 50.0 + drain_left(until, 1000.0)  # loop time 50 at wall 1000
    again = 80.01 + drain_left(until, 1030.0)  # 30 s later, the clocks 10 ms apart
    assert same_deadline(at_first, again)


def test_a_shorter_drain_replaces_a_longer_one() -> None:
    assert not same_deadline(50.0 + 600, 60.0 + 1)
    assert not same_deadline(None, 51.0) and not same_deadline(51.0, None)
    assert same_deadline(None, None)
    assert not same_deadline(100.0, 100.0 + ADMIN_TICK)
