"""Admission control on a fake clock: timelines for each limit, pruning, memory under a flood
from many sources, and invariants over random timelines (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xmppgw.config import Limits
from xmppgw.slb.limits import ADMITTED, Admission, Verdict, source_key

A, B = "192.0.2.1", "192.0.2.2"


def admit_n(adm: Admission, ip: str, n: int, now: float = 0.0) -> list[Verdict]:
    return [adm.admit(ip, now) for _ in range(n)]


# --------------------------------------------------------------------------- sources


def test_source_keys() -> None:
    assert source_key("192.0.2.1") == "192.0.2.1"
    assert source_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert source_key("2001:db8::1") == source_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert source_key("2001:db8:0:1::1") == "2001:db8:0:1::/64"
    assert source_key("2001:db8::1", 128) == "2001:db8::1"
    assert source_key("2001:db8::1", 48) == "2001:db8::/48"
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key("not-an-ip:x") == "not-an-ip:x"


def test_ipv6_counts_per_64() -> None:
    adm = Admission(Limits(maxconns_per_ip=2))
    assert adm.admit("2001:db8::1", 0).ok and adm.admit("2001:db8::2", 0).ok
    assert adm.admit("2001:db8::3", 0) == Verdict(False, "maxconns_per_ip", "2001:db8::/64")
    assert adm.admit("2001:db8:0:1::1", 0).ok
    per_address = Admission(Limits(maxconns_per_ip=1), ipv6_prefix=128)
    assert per_address.admit("2001:db8::1", 0).ok and per_address.admit("2001:db8::2", 0).ok
    assert adm.release("2001:db8::99")  # any address of the /64 releases its slot
    assert adm.admit("2001:db8::3", 0).ok


def test_v4_mapped_counts_as_v4() -> None:
    adm = Admission(Limits(maxconns_per_ip=1))
    assert adm.admit("::ffff:192.0.2.1", 0).ok
    assert adm.admit(A, 0).reason == "maxconns_per_ip"


# --------------------------------------------------------------------------- timelines


def test_no_limits_admits_everything_and_keeps_no_per_source_state() -> None:
    adm = Admission(Limits())
    assert all(v is ADMITTED for v in admit_n(adm, A, 1000))
    assert adm.total == 1000 and adm.tracked == 0
    assert all(adm.release(A) for _ in range(1000))
    assert adm.total == 0 and not adm.release(A)


def test_maxconns_counts_all_sources_together() -> None:
    adm = Admission(Limits(maxconns=3))
    assert [v.ok for v in admit_n(adm, A, 2) + admit_n(adm, B, 2)] == [True, True, True, False]
    assert adm.admit(B, 0) == Verdict(False, "maxconns", B)
    assert adm.total == 3  # refused attempts took no slot
    adm.release(A)
    assert adm.admit(B, 1).ok and not adm.admit(A, 1).ok


def test_maxconns_per_ip() -> None:
    adm = Admission(Limits(maxconns_per_ip=2))
    assert [v.ok for v in admit_n(adm, A, 3)] == [True, True, False]
    assert adm.admit(B, 0).ok
    assert adm.open(A) == 2 and adm.total == 3
    adm.release(A)
    assert adm.admit(A, 5).ok and not adm.admit(A, 5).ok


def test_a_connection_counts_from_accept_until_release() -> None:
    """Half-open (header never sent) is the caller's business: the slot is held regardless."""
    adm = Admission(Limits(maxconns_per_ip=1))
    assert adm.admit(A, 0).ok
    assert adm.admit(A, 3600).reason == "maxconns_per_ip"  # no time ever frees a slot
    adm.release(A, 3600)
    assert adm.admit(A, 3600).ok


def test_rate_bucket_burst_then_refill() -> None:
    adm = Admission(Limits(rate_per_ip=2, burst_per_ip=3))
    assert [v.ok for v in admit_n(adm, A, 4)] == [True, True, True, False]
    assert adm.admit(A, 0.1) == Verdict(False, "rate_per_ip", A)
    assert adm.admit(A, 0.5).ok          # one token after 0.5 s at 2/s
    assert not adm.admit(A, 0.6).ok
    assert adm.tokens(A, 0.6) == pytest.approx(0.2)
    assert [v.ok for v in admit_n(adm, A, 4, now=10.0)] == [True, True, True, False]  # capped
    assert adm.admit(B, 0.0).ok  # another source has its own bucket


def test_refused_attempts_take_no_token() -> None:
    adm = Admission(Limits(rate_per_ip=1, burst_per_ip=1))
    assert adm.admit(A, 0).ok
    for i in range(100):
        assert adm.admit(A, i / 101).reason == "rate_per_ip"
    assert adm.admit(A, 1.0).ok


def test_default_burst_is_twice_the_rate() -> None:
    adm = Admission(Limits(rate_per_ip=2.5))
    assert [v.ok for v in admit_n(adm, A, 6)] == [True] * 5 + [False]
    slow = Admission(Limits(rate_per_ip=0.1))  # burst max(1, 0.2) = 1
    assert [v.ok for v in admit_n(slow, A, 2)] == [True, False]
    assert slow.admit(A, 9.9).reason == "rate_per_ip" and slow.admit(A, 10.0).ok


def test_which_limit_is_named_first() -> None:
    """The source's own fault before the shared capacity: per-IP cap, then rate, then total."""
    adm = Admission(Limits(maxconns=2, maxconns_per_ip=1, rate_per_ip=1, burst_per_ip=1))
    c = "192.0.2.3"
    assert adm.admit(A, 0).ok
    assert adm.admit(A, 0).reason == "maxconns_per_ip"  # out of tokens as well
    assert adm.admit(B, 0).ok                              # the vserver is full now
    assert adm.admit(A, 0).reason == "maxconns_per_ip"
    assert adm.admit(c, 0).reason == "maxconns"
    adm.release(A)
    assert adm.admit(A, 0.5).reason == "rate_per_ip"     # not full: the rate speaks
    assert adm.admit(c, 0.5).ok                            # full again
    assert adm.admit(A, 0.6).reason == "rate_per_ip"     # full, and short of a token
    assert adm.admit(A, 1.0).reason == "maxconns"        # has its token: only full


def test_clock_stepping_back_refills_nothing() -> None:
    adm = Admission(Limits(rate_per_ip=1, burst_per_ip=1))
    assert adm.admit(A, 100).ok
    assert not adm.admit(A, 50).ok
    assert not adm.admit(A, 100.5).ok
    assert adm.admit(A, 101).ok


def test_release_without_admit_never_goes_negative() -> None:
    adm = Admission(Limits(maxconns_per_ip=1, maxconns=5))
    assert not adm.release(A)
    assert adm.admit(B, 0).ok
    assert not adm.release(A)  # B's connection is not A's to release
    assert adm.total == 1 and adm.open(A) == 0 and adm.open(B) == 1


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        Admission(Limits(), ipv6_prefix=0)
    with pytest.raises(ValueError):
        Admission(Limits(), max_idle=-1)


# --------------------------------------------------------------------------- memory


def test_state_dropped_at_last_release_without_rate() -> None:
    adm = Admission(Limits(maxconns_per_ip=3))
    admit_n(adm, A, 2)
    assert adm.tracked == 1
    adm.release(A)
    assert adm.tracked == 1
    adm.release(A)
    assert adm.tracked == 0 and adm.idle == 0


def test_idle_source_kept_until_its_bucket_is_full_again() -> None:
    adm = Admission(Limits(rate_per_ip=1, burst_per_ip=4))
    admit_n(adm, A, 2, now=0)  # 2 tokens left: full again at t=2
    adm.release(A, 0)
    adm.release(A, 0)
    assert (adm.tracked, adm.idle) == (1, 1)
    adm.admit(B, 1.9)
    assert adm.tracked == 2  # A not full yet: kept (else it would get a fresh burst)
    adm.admit(B, 2.0)
    assert adm.tracked == 1 and adm.open(A) == 0  # A pruned; B open


def test_prune_is_lazy_and_amortised() -> None:
    adm = Admission(Limits(rate_per_ip=10, burst_per_ip=10))
    for i in range(100):
        ip = f"10.0.{i // 256}.{i % 256}"
        adm.admit(ip, 0)
        adm.release(ip, 0)
    assert adm.idle == 100
    adm.admit(A, 5.0)
    assert adm.idle == 98  # two per call, not all at once
    for i in range(49):
        adm.admit(f"10.1.0.{i}", 5.0)
    assert adm.idle == 0 and adm.tracked == 50  # A and the 49 new ones, all open


def test_flood_from_many_sources_is_bounded_by_max_idle() -> None:
    adm = Admission(Limits(rate_per_ip=1, burst_per_ip=5), max_idle=1000)
    for i in range(50_000):
        ip = f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::1"  # a new /64 each time
        assert adm.admit(ip, i * 1e-5).ok
        adm.release(ip, i * 1e-5)
        assert adm.tracked <= 1000
    assert adm.total == 0


def test_refused_floods_create_no_state() -> None:
    adm = Admission(Limits(maxconns=1, maxconns_per_ip=1))
    assert adm.admit(A, 0).ok
    for i in range(10_000):
        assert not adm.admit(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 0).ok
    assert adm.tracked == 1


# --------------------------------------------------------------------------- invariants

IPS = [A, B, "2001:db8::1", "2001:db8::2", "::ffff:192.0.2.1"]
ops = st.lists(st.tuples(st.sampled_from(["admit", "release"]), st.sampled_from(IPS),
                         st.floats(0, 2, allow_nan=False)), max_size=120)
limits = st.builds(Limits,
                   maxconns=st.none() | st.integers(1, 6),
                   maxconns_per_ip=st.none() | st.integers(1, 3),
                   rate_per_ip=st.none() | st.floats(0.1, 10),
                   burst_per_ip=st.none() | st.integers(1, 5))


@settings(max_examples=300)
@given(limits, ops)
def test_invariants_over_random_timelines(lim: Limits, timeline: list[tuple[str, str, float]]
                                          ) -> None:
    adm = Admission(lim)
    per_source = lim.maxconns_per_ip is not None or lim.rate_per_ip is not None
    now = 0.0
    open_by_key: dict[str, int] = {}
    admits_by_key: dict[str, list[float]] = {}
    for op, ip, dt in timeline:
        now += dt
        key = source_key(ip)
        if op == "release":
            released = adm.release(ip, now)
            if not per_source:  # only the total is kept: any release closes one of them
                assert released == (adm.total + released > 0)
                key = next((k for k, n in open_by_key.items() if n), key)
            assert released == (open_by_key.get(key, 0) > 0)
            if released:
                open_by_key[key] -= 1
            continue
        verdict = adm.admit(ip, now)
        if verdict.ok:
            open_by_key[key] = open_by_key.get(key, 0) + 1
            admits_by_key.setdefault(key, []).append(now)
        elif verdict.reason == "maxconns_per_ip":
            assert open_by_key.get(key, 0) >= (lim.maxconns_per_ip or 0)
        elif verdict.reason == "maxconns":
            assert sum(open_by_key.values()) >= (lim.maxconns or 0)
        else:
            assert verdict.reason == "rate_per_ip" and lim.rate_per_ip
            assert admits_by_key.get(key)  # only a source that used its tokens is refused
        # counts agree with the model, are never negative, never above a limit
        assert adm.total == sum(open_by_key.values()) >= 0
        assert lim.maxconns is None or adm.total <= lim.maxconns
        for k, n in open_by_key.items():
            assert n >= 0 and (adm.open(k) == n or not per_source)
            assert lim.maxconns_per_ip is None or n <= lim.maxconns_per_ip
    if lim.rate_per_ip:  # token bucket: no window holds more than burst + rate * its length
        for times in admits_by_key.values():
            for i in range(len(times)):
                for j in range(i, len(times)):
                    allowed = lim.burst + lim.rate_per_ip * (times[j] - times[i])
                    assert j - i + 1 <= allowed + 1e-6
