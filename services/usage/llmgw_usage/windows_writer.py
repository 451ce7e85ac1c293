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
from llmgw_common.ids import id_time_ms
from llmgw_common.messages import UsageEvent
from llmgw_common.windows import seen_set

from . import domain

# keeps one script run short, so it never stalls Redis for the router
CHUNK = 2000


class WindowWriter:
    def __init__(self, redis, budget_tz: str = "UTC"):
        self._redis = redis
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

    async def count_applied(self, events: Sequence[domain.IngestEvent | UsageEvent], now_s: int) -> int:
        """How many of these events (ids unique) were applied already: in their seen set, or with a key of
        their own (an id not a ULID, or one applied before seen sets)."""
        by_set: dict[str, list[str]] = {}
        own_keys: list[str] = []
        for ev in events:
            made_ms = id_time_ms(ev.id)
            if made_ms is None:
                own_keys.append(ev.id)
            else:
                by_set.setdefault(seen_set(made_ms, now_s)[0], []).append(ev.id)
        applied = 0
        for key, ids in by_set.items():
            flags = await self._redis.smismember(key, ids)
            applied += sum(1 for flag in flags if flag)
            own_keys += [i for i, flag in zip(ids, flags) if not flag]
        if own_keys:
            applied += int(await self._redis.exists(*[domain.seen_key(i) for i in own_keys]))
        return applied
