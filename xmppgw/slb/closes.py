"""Closes by the real's side within a sliding window: evidence that a real is going away.

`ejabberdctl stop` (and any orderly shutdown of a server) closes every client session at
once, while the server's listener still accepts connections for a few seconds. The clients
reconnect at once, and leastconns sends them to the real that was just emptied. A burst of
closes that come from the real (its FIN or RST reaches the gateway before the client's) is
the earliest sign of that, seconds before a probe can see it. Pure: the clock is passed in.
"""

from __future__ import annotations

from collections import deque


class CloseBurst:
    """The times (seconds, the caller's clock) of one real's recent server-side closes."""

    __slots__ = ("_times",)

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def note(self, now: float, window: float) -> int:
        """One more close at `now`; returns how many fell within the last `window` seconds
        (this one included). Older ones are forgotten, so memory stays bounded by the
        burst itself."""
        self._times.append(now)
        return self.count(now, window)

    def count(self, now: float, window: float) -> int:
        """Closes within the last `window` seconds of `now`."""
        times = self._times
        while times and times[0] <= now - window:
            times.popleft()
        return len(times)

    def clear(self) -> None:
        """Forget the burst (it has been acted on)."""
        self._times.clear()

    def __len__(self) -> int:
        return len(self._times)


def is_mass_close(closes: int, still_open: int, streams: int, share: int) -> bool:
    """Do `closes` server-side closes within the window, with `still_open` streams left on
    the real, make a mass close? At least `streams` of them (0: never), and at least `share`
    percent of what the real held (the ones still open plus the ones it closed)."""
    if streams <= 0 or closes < streams:
        return False
    return closes * 100 >= share * (closes + still_open)
