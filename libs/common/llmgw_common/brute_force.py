"""Slowing down guessing: failed credential checks per client address in a sliding window.

The edge (gateway keys) and ui-api (admin tokens) each keep one; memory is bounded (the oldest
addresses are forgotten first).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque

FAILURES_ALLOWED = 20  # failed checks per address per window before it is refused outright
FAILURE_WINDOW_S = 60.0
MAX_TRACKED_ADDRESSES = 10_000


class FailureLimiter:
    """Failed credential checks per client address in a sliding window; bounded memory."""

    def __init__(self, allowed: int = FAILURES_ALLOWED, window_s: float = FAILURE_WINDOW_S):
        self.allowed = allowed
        self.window_s = window_s
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.get(address)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def blocked_for(self, address: str, now: float | None = None) -> float:
        """Seconds this address must wait before it may try again (0: it may)."""
        now = time.monotonic() if now is None else now
        times = self._recent(address, now)
        if len(times) < self.allowed:
            return 0.0
        return max(0.0, times[0] + self.window_s - now)

    def failed(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        times = self._recent(address, now)
        times.append(now)
        self._failures[address] = times
        self._failures.move_to_end(address)
        while len(self._failures) > MAX_TRACKED_ADDRESSES:
            self._failures.popitem(last=False)
