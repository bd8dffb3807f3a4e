"""Per-vserver admission control: total and per-source connection caps, per-source rate.

IOS SLB guards a vserver with ``synguard`` (half-open SYNs) and ``maxconns``; HAProxy uses
stick tables (``sc_conn_cur``, ``sc_conn_rate``). xmppgw applies ``[vserver.limits]`` at
accept, before a single byte is read, so a client cannot hold a slot just by being slow:
a connection counts from accept until it closes, whether or not its header ever came
(the kernel already absorbs half-open TCP with SYN cookies; what is left to guard is the
accepted-but-silent connection, the gateway's own "half-open").

Pure and clock-free like the rest of ``slb``: ``admit(ip, now)`` answers a ``Verdict`` and
``release(ip)`` is called once for every admitted connection when it closes. The asyncio
layer calls both; the tests drive them with a fake clock.

Rules:

- **Which limit speaks first.** ``maxconns_per_ip``, then ``rate_per_ip``, then
  ``maxconns``: when a source is over its own allowance the log should name that source's
  fault, not the shared capacity it happens to be exhausting.
- **A refused attempt costs nothing**: no concurrent slot, no token, and no state for a
  source that has none yet. A flood of refused connections therefore cannot grow memory.
- **Rate** is a token bucket per source: ``burst`` tokens (``Limits.burst``), refilled at
  ``rate_per_ip`` per second, one token per admitted connection.
- **Sources.** An IPv4 address counts alone, as in IOS and HAProxy. IPv6 sources are
  counted per /64 (``ipv6_prefix``): a /64 is what one subscriber gets (one per PDP context
  on mobile networks, one per LAN at home), SLAAC privacy addresses rotate within it, and a
  single host can pick any of its 2^64 addresses at will, so per-address limits would not
  limit an IPv6 client at all. A v4-mapped IPv6 address (``::ffff:192.0.2.1``, what a
  dual-stack listener reports) counts as the IPv4 address it is.
- **Memory.** A source's state is dropped as soon as it has no open connection and its
  bucket would be full again: it is then indistinguishable from a source never seen.
  Without a rate limit that happens at its last ``release``. With one, idle sources wait
  in a FIFO and each call prunes up to two of the oldest that are full again (amortised
  O(1)). At most ``max_idle`` idle sources are kept: past that the oldest is forgotten
  early, which can only grant it a fresh burst sooner. Memory is thus bounded by the open
  connections plus ``max_idle``, however many addresses a flood comes from.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xmppgw.addresses import unmapped

if TYPE_CHECKING:
    from xmppgw.config import Limits

__all__ = ["ADMITTED", "Admission", "Verdict", "source_key"]

MAXCONNS = "maxconns"
MAXCONNS_PER_IP = "maxconns_per_ip"
RATE_PER_IP = "rate_per_ip"
_PRUNE_PER_CALL = 2  # a call makes at most one source idle: pruning two keeps pace


@dataclass(frozen=True, slots=True)
class Verdict:
    """Admit, or refuse with the limit that refused (for the log line and the counters)."""

    ok: bool
    reason: str | None = None
    """None when admitted; else "maxconns", "maxconns_per_ip" or "rate_per_ip"."""
    source: str | None = None
    """The key the source was counted under (an IPv4 address, or an IPv6 /64)."""


ADMITTED = Verdict(True)


def source_key(ip: str, ipv6_prefix: int = 64) -> str:
    """What a source is counted as: the IPv4 address, or its IPv6 prefix as ``net/len``.

    A text that is not an address (a Unix socket peer, say) is its own key, so such peers
    are still limited, together.
    """
    if ":" not in ip:
        return ip
    try:
        addr = ipaddress.IPv6Address(ip.partition("%")[0])
    except ValueError:
        return ip
    if isinstance(v4 := unmapped(addr), ipaddress.IPv4Address):
        return str(v4)
    if ipv6_prefix >= 128:
        return str(addr)
    net = ipaddress.IPv6Network((int(addr) >> (128 - ipv6_prefix) << (128 - ipv6_prefix),
                                 ipv6_prefix))
    return str(net)


class _Source:
    """One source's open connections and token bucket (tokens as of `stamp`)."""

    __slots__ = ("conns", "stamp", "tokens")

    def __init__(self, tokens: float, now: float) -> None:
        self.conns = 0
        self.tokens = tokens
        self.stamp = now


class Admission:
    """Admission control for one vserver. Not thread-safe: one per event loop (worker).

    With several workers each has its own, so per-source limits apply per worker; the
    kernel's SO_REUSEPORT hash spreads one source's connections over them.
    """

    def __init__(self, limits: Limits, *, ipv6_prefix: int = 64,
                 max_idle: int = 100_000) -> None:
        if not 1 <= ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be 1-128")
        if max_idle < 0:
            raise ValueError("max_idle must be 0 or more")
        self.limits = limits
        self.ipv6_prefix = ipv6_prefix
        self.max_idle = max_idle
        self.total = 0
        self._rate = limits.rate_per_ip
        self._burst = float(limits.burst) if self._rate else 0.0
        self._per_source = limits.maxconns_per_ip is not None or self._rate is not None
        self._sources: dict[str, _Source] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()

    # --- the two calls -------------------------------------------------------------

    def admit(self, ip: str, now: float) -> Verdict:
        """Count a new connection from `ip` accepted at `now`, or say which limit refuses it."""
        self._prune(now)
        if not self._per_source:
            if self._full():
                return Verdict(False, MAXCONNS, source_key(ip, self.ipv6_prefix))
            self.total += 1
            return ADMITTED
        key = source_key(ip, self.ipv6_prefix)
        source = self._sources.get(key)
        reason = self._refusal(source, now)
        if reason:
            return Verdict(False, reason, key)
        if source is None:
            source = self._sources[key] = _Source(self._burst, now)
        elif source.conns == 0:
            self._idle.pop(key, None)
        source.conns += 1
        if self._rate:
            source.tokens -= 1.0
        self.total += 1
        return ADMITTED

    def release(self, ip: str, now: float | None = None) -> bool:
        """One admitted connection from `ip` closed. False if none was open (a caller bug,
        tolerated so that no count ever goes negative)."""
        if self.total == 0:
            return False
        if not self._per_source:
            self.total -= 1
            return True
        key = source_key(ip, self.ipv6_prefix)
        source = self._sources.get(key)
        if source is None or source.conns == 0:
            return False
        source.conns -= 1
        self.total -= 1
        if source.conns == 0:
            self._went_idle(key, source)
        if now is not None:
            self._prune(now)
        return True

    # --- inspection (show, tests) -------------------------------------------------

    def open(self, ip: str) -> int:
        """Open connections counted for `ip`'s source (0 when no per-source limit is set:
        then only the total is kept, and `release` cannot tell sources apart)."""
        source = self._sources.get(source_key(ip, self.ipv6_prefix))
        return source.conns if source else 0

    def tokens(self, ip: str, now: float) -> float | None:
        """Tokens left for `ip`'s source at `now`; None without a rate limit."""
        if not self._rate:
            return None
        source = self._sources.get(source_key(ip, self.ipv6_prefix))
        return self._burst if source is None else self._refilled(source, now)

    @property
    def tracked(self) -> int:
        """Sources with state: those with open connections plus idle ones not yet pruned."""
        return len(self._sources)

    @property
    def idle(self) -> int:
        return len(self._idle)

    # --- internals ----------------------------------------------------------------

    def _full(self) -> bool:
        return self.limits.maxconns is not None and self.total >= self.limits.maxconns

    def _refusal(self, source: _Source | None, now: float) -> str | None:
        """The first limit that refuses one more connection from this source, if any."""
        cap = self.limits.maxconns_per_ip
        if cap is not None and source is not None and source.conns >= cap:
            return MAXCONNS_PER_IP
        if self._rate and source is not None:
            source.tokens, source.stamp = self._refilled(source, now), max(now, source.stamp)
            if source.tokens < 1.0:
                return RATE_PER_IP
        if self._full():
            return MAXCONNS
        return None

    def _refilled(self, source: _Source, now: float) -> float:
        """Tokens at `now`; a clock that steps back refills nothing (never negative time)."""
        elapsed = max(0.0, now - source.stamp)
        return min(self._burst, source.tokens + elapsed * (self._rate or 0.0))

    def _went_idle(self, key: str, source: _Source) -> None:
        if not self._rate:
            del self._sources[key]  # nothing left to remember about it
            return
        self._idle[key] = None
        self._idle.move_to_end(key)
        while len(self._idle) > self.max_idle:
            old, _ = self._idle.popitem(last=False)
            del self._sources[old]

    def _prune(self, now: float) -> None:
        """Forget up to two of the oldest idle sources whose bucket is full again."""
        for _ in range(_PRUNE_PER_CALL):
            if not self._idle:
                return
            key = next(iter(self._idle))
            if self._refilled(self._sources[key], now) < self._burst:
                return
            del self._idle[key]
            del self._sources[key]
