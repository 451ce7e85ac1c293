"""Redis adapter: applies usage events to the sliding windows with one
EVALSHA per chunk of events (script registered once; redis-py falls back to
EVAL + caching when the server lost its script cache, e.g. after a restart).

Where amounts go is the contract of ``llmgw_common.windows``: the bucket of the
event's second, or of its reservation's ``at_s`` (so a reconciliation lands
where admission reserved), in every window whose readers still sum that bucket
(``Window.expire_at`` later than now), with that expiry; ``domain.live_buckets``
computes it and tests/service/test_windows.py holds the two to the same arithmetic."""

from __future__ import annotations

from typing import Sequence

from llmgw_common import redis_keys
from llmgw_common.messages import UsageEvent

from . import domain

# keeps one script run short, so it never stalls Redis for the router
CHUNK = 2000


class WindowWriter:
    def __init__(self, redis, budget_tz: str = "UTC"):
        self._script = redis.register_script(redis_keys.lua(domain.APPLY_EVENTS_LUA))
        self.budget_tz = budget_tz  # keys' calendar months (config keys.budget_timezone)

    async def apply(self, events: Sequence[domain.IngestEvent | UsageEvent], now_s: int, rebuild: bool = False) -> int:
        """Apply events not applied before; returns how many were new.

        ``rebuild``: the windows are being rebuilt from the log (replay), so
        admission reservations no longer exist and full amounts are applied.
        """
        applied = 0
        for i in range(0, len(events), CHUNK):
            args = domain.window_script_args(events[i : i + CHUNK], now_s, rebuild, self.budget_tz)
            if args is None:  # nothing with a scope in this chunk
                continue
            applied += int(await self._script(keys=[], args=args))
        return applied
