"""Slowing down guessing: failed credential checks per client address.

``SharedFailureLimiter`` counts them in Redis (``llmgw:authfail:<realm>:<address>``, a fixed window that
starts at the address's first failure), so the limit holds across every replica: 20 failures per address
per minute behind two edges, not 40. The edge counts gateway keys (realm ``key``), ui-api admin tokens
(realm ``admin``).

Only a failure costs a Redis round trip. Whether an address is blocked is answered from memory (a check
on every request must stay free): a replica learns an address is blocked from the count its own failure
brought back. So a replica that has not seen the address fail since the limit was reached elsewhere
checks one more credential from it (its failure comes back past the limit: refused as blocked, and
remembered): at most ``allowed`` + one per replica credentials are checked per address and window.

With Redis unreachable, failures are counted in the process (``FailureLimiter``, a sliding window): the
limit then holds per replica again, neither locking everyone out nor letting guessing run unbounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque

from redis.exceptions import RedisError

from . import redis_keys

log = logging.getLogger(__name__)

FAILURES_ALLOWED = 20  # failed checks per address per window before it is refused outright
FAILURE_WINDOW_S = 60.0
MAX_TRACKED_ADDRESSES = 10_000
REDIS_TIMEOUT_S = 1.0  # a Redis that does not answer: count locally rather than hold the refusal longer

KEY_REALM = "key"  # gateway API keys, checked by the edge
ADMIN_REALM = "admin"  # admin API tokens, checked by ui-api

# one failure more, and the window's end: the window starts with the first failure (INCR and PEXPIRE in one
# step, so no count is ever left without an expiry)
COUNT_FAILURE_LUA = """
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""


def failures_key(realm: str, address: str) -> str:
    return f"{redis_keys.AUTH_FAILURES_PREFIX}{realm}:{address}"


class FailureLimiter:
    """Failed credential checks per client address in a sliding window, in this process; bounded memory."""

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


class SharedFailureLimiter:
    """Failed credential checks of one realm per client address, counted in Redis across replicas; a local
    count while Redis is unreachable (or not given: ``redis`` None)."""

    def __init__(self, realm: str, redis=None, allowed: int = FAILURES_ALLOWED,
                 window_s: float = FAILURE_WINDOW_S):
        self.realm = realm
        self.allowed = allowed
        self.window_s = window_s
        self.local = FailureLimiter(allowed, window_s)  # the fallback count
        self._script = redis.register_script(COUNT_FAILURE_LUA) if redis is not None else None
        self._blocked: OrderedDict[str, float] = OrderedDict()  # address -> end of its block (monotonic)
        self._redis_down = False

    def blocked_for(self, address: str) -> float:
        """Seconds this address must wait before it may try again (0: it may); from memory, no I/O."""
        now = time.monotonic()
        wait = 0.0
        until = self._blocked.get(address)
        if until is not None:
            if until > now:
                wait = until - now
            else:
                del self._blocked[address]
        return max(wait, self.local.blocked_for(address, now))

    async def failed(self, address: str) -> float:
        """Counts one failed check. Returns the seconds to wait when this failure came past the limit (the
        address was blocked on another replica: answer it as blocked), else 0."""
        now = time.monotonic()
        if self._script is not None:
            try:
                count, ttl_ms = await asyncio.wait_for(
                    self._script(keys=[failures_key(self.realm, address)], args=[int(self.window_s * 1000)]),
                    REDIS_TIMEOUT_S)
            except (RedisError, OSError, TimeoutError) as exc:
                if not self._redis_down:
                    log.warning("failed credential checks are counted in this process only while Redis does "
                                "not answer (%s)", type(exc).__name__)
                self._redis_down = True
            else:
                if self._redis_down:
                    log.info("failed credential checks are counted in Redis again")
                self._redis_down = False
                wait = int(ttl_ms) / 1000
                if int(count) >= self.allowed:
                    self._block(address, now + wait)
                return wait if int(count) > self.allowed else 0.0
        self.local.failed(address, now)
        return 0.0

    def _block(self, address: str, until: float) -> None:
        self._blocked[address] = until
        self._blocked.move_to_end(address)
        while len(self._blocked) > MAX_TRACKED_ADDRESSES:
            self._blocked.popitem(last=False)
