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
    """One real's recent server-side closes: how many fell within a sliding window, and the
    most streams the real held just before any of them (the burst's size is judged against
    that, so streams sent to the real while it is closing them do not dilute it)."""

    __slots__ = ("_peaks", "_times")

    def __init__(self) -> None:
        self._times: deque[float] = deque()
        # (time, streams held before that close), held strictly decreasing from the front:
        # the front is the window's peak (a monotonic queue, O(1) amortised per close).
        self._peaks: deque[tuple[float, int]] = deque()

    def note(self, now: float, window: float, held: int) -> tuple[int, int]:
        """One more close at `now` (seconds, the caller's clock) of a real that held `held`
        streams just before it. Returns (closes within the last `window` seconds, this one
        included; the most streams the real held before any of them). Older closes are
        forgotten, so memory stays bounded by the burst itself."""
        self._times.append(now)
        peaks = self._peaks
        while peaks and peaks[-1][1] <= held:
            peaks.pop()
        peaks.append((now, held))
        return self.count(now, window), self.peak(now, window)

    def count(self, now: float, window: float) -> int:
        """Closes within the last `window` seconds of `now`."""
        times = self._times
        while times and times[0] <= now - window:
            times.popleft()
        return len(times)

    def peak(self, now: float, window: float) -> int:
        """The most streams held before a close within the window (0 without one)."""
        peaks = self._peaks
        while peaks and peaks[0][0] <= now - window:
            peaks.popleft()
        return peaks[0][1] if peaks else 0

    def clear(self) -> None:
        """Forget the burst (it has been acted on)."""
        self._times.clear()
        self._peaks.clear()

    def __len__(self) -> int:
        return len(self._times)


def is_mass_close(closes: int, held: int, streams: int, share: int) -> bool:
    """Do `closes` server-side closes within the window, of a real that held at most `held`
    streams before them, make a mass close? At least `streams` of them (0: never), and at
    least `share` percent of `held`."""
    if streams <= 0 or closes < streams:
        return False
    return closes * 100 >= share * held
