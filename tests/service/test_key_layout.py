"""The upgrade to the {state} hash tag keeps the live state: keys of the untagged layout are renamed to
their tagged names (values and expiries kept) when a usage service starts (llmgw_usage.key_layout)."""

from __future__ import annotations

import pytest

from llmgw_common import redis_keys
from llmgw_common.redis_conn import connect_redis
from llmgw_usage.key_layout import move_untagged_state

pytestmark = pytest.mark.integration

OLD = redis_keys.ROOT  # the untagged layout: every name right after the root


@pytest.fixture
async def redis(infra):
    r = connect_redis(infra.redis_url)
    await r.delete(redis_keys.LAYOUT_MOVED)
    yield r
    keys = [k async for k in r.scan_iter("*layouttest*", count=1000)]
    if keys:
        await r.delete(*keys)
    await r.delete(redis_keys.LAYOUT_MOVED)
    await r.aclose()


async def test_windows_months_leases_and_health_move_under_the_tag_with_their_expiry(redis):
    window = "w:p:layouttest:5:1796774400"
    await redis.hset(OLD + window, mapping={"req": 7, "tin": 70})
    await redis.expire(OLD + window, 3600)
    await redis.hset(OLD + "cal:k:layouttest:month:2031-01", "cost", 123)
    await redis.set(OLD + "cool:layouttest", "1", px=60_000)
    await redis.hset(redis_keys.STATE + "w:p:layouttest:5:1796774405", "req", 1)  # written by the new version
    await redis.hset(OLD + "w:p:layouttest:5:1796774405", "req", 9)  # ...and by an old one: the new wins
    await redis.set(redis_keys.AUTH_FAILURES_PREFIX + "key:layouttest", 3)  # never moves: no script groups it

    assert await move_untagged_state(redis) >= 3
    assert await redis.hgetall(redis_keys.WINDOW_PREFIX + "p:layouttest:5:1796774400") == {"req": "7", "tin": "70"}
    assert 3500 < await redis.ttl(redis_keys.WINDOW_PREFIX + "p:layouttest:5:1796774400") <= 3600
    assert await redis.hget(redis_keys.CALENDAR_PREFIX + "k:layouttest:month:2031-01", "cost") == "123"
    assert await redis.pttl(redis_keys.COOLDOWN_PREFIX + "layouttest") > 0
    assert await redis.hget(redis_keys.STATE + "w:p:layouttest:5:1796774405", "req") == "1"
    assert not await redis.exists(OLD + window, OLD + "cal:k:layouttest:month:2031-01")
    assert await redis.get(redis_keys.AUTH_FAILURES_PREFIX + "key:layouttest") == "3"


async def test_the_move_runs_once(redis):
    assert await move_untagged_state(redis) >= 0
    await redis.hset(OLD + "w:p:layouttest:5:1796774410", "req", 1)  # an old replica still running, later
    assert await move_untagged_state(redis) == 0
    assert await redis.exists(OLD + "w:p:layouttest:5:1796774410")
