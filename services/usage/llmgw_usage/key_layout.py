"""The upgrade to the ``{state}`` hash tag (``llmgw_common.redis_keys``): keys of the layout before it
(``llmgw:w:…``, ``llmgw:cal:…``, ``llmgw:leases``, …) are renamed to their tagged names once, when a usage
service starts, so windows, keys' monthly budgets, leases and health survive the upgrade.

What a replica of the old version writes after the move (a rolling upgrade) stays under the old names, which
nothing reads any more: at most its last seconds of reservations and usage, which ``llmgw replay --target
redis`` puts back in the windows from the stream (docs/scaling.md, "Redis").
"""

from __future__ import annotations

import logging

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from llmgw_common import redis_keys

log = logging.getLogger("llmgw.usage.key_layout")

# each tagged name's text after the tag: what the same key was called after the bare root before
_TAGGED = tuple(sorted(value.removeprefix(redis_keys.STATE) for name, value in vars(redis_keys).items()
                       if name.isupper() and isinstance(value, str) and value.startswith(redis_keys.STATE)
                       and value not in (redis_keys.STATE, redis_keys.LAYOUT_MOVED)))


async def move_untagged_state(redis) -> int:
    """Rename every key of the untagged layout to its tagged name (a key already there wins); how many."""
    if isinstance(redis, RedisCluster) or await redis.exists(redis_keys.LAYOUT_MOVED):
        return 0  # the untagged layout never ran on a cluster: its scripts could not
    moved = 0
    async for key in redis.scan_iter(match=redis_keys.ROOT + "*", count=1000):
        rest = key.removeprefix(redis_keys.ROOT)
        if key.startswith(redis_keys.STATE) or not rest.startswith(_TAGGED):
            continue
        try:
            moved += int(await redis.renamenx(key, redis_keys.STATE + rest))  # keeps its expiry
        except ResponseError:  # renamed meanwhile by another replica starting
            continue
    await redis.set(redis_keys.LAYOUT_MOVED, "1")
    if moved:
        log.info("moved %d Redis keys to the {state} hash tag (docs/scaling.md, \"Redis\")", moved)
    return moved
