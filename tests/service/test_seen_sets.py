"""The usage windows stay idempotent with seen sets (one set per minute of a ULID id's time, checked once per
batch): a redelivery, the router's abandoned event for the same request stamped at another time, an id twice
in one batch, an event applied before seen sets existed: each counts once. And a batch of events from one
capacity lease costs a few commands, not several per event.

Real Redis and the usage service's real script (``WindowWriter``)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from ulid import ULID

from llmgw_cli.infra import RedisServer
from llmgw_common import redis_keys
from llmgw_common.messages import Reservation, UsageEvent
from llmgw_common.redis_conn import connect_redis
from llmgw_common.windows import WindowReader, model_scope
from llmgw_usage import domain
from llmgw_usage.windows_writer import WindowWriter

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(infra):
    r = connect_redis(infra.redis_url)
    yield r
    await r.aclose()


def _event(provider: str, event_id: str | None = None, ts: datetime | None = None, **kw) -> UsageEvent:
    return UsageEvent(id=event_id or str(ULID()), ts=ts or datetime.now(timezone.utc), request_id="r",
                      provider=provider, model="m", tokens_in=10, tokens_out=5, status=200, **kw)


async def _requests(redis, provider: str) -> int:
    totals = await WindowReader(redis).read([model_scope(provider, "m")], int(time.time()))
    return totals[model_scope(provider, "m")]["minute"]["req"]


async def test_every_copy_of_an_event_counts_once(redis):
    writer, provider, now = WindowWriter(redis), f"seen-{uuid.uuid4().hex[:8]}", int(time.time())
    first = _event(provider)
    twice = _event(provider)
    assert await writer.apply([first, twice, twice], now) == 2  # the same id twice in one batch: once
    assert await writer.apply([first], now) == 0  # a redelivery
    # the same id stamped 70 s later (another producer's copy): the id's minute finds it all the same
    assert await writer.apply([_event(provider, first.id, first.ts + timedelta(seconds=70))], now) == 0
    # an id applied before seen sets, under a key of its own
    old = _event(provider)
    await redis.set(domain.seen_key(old.id), "1", ex=60)
    assert await writer.apply([old], now) == 0
    # an id that is not a ULID has a key of its own
    other = _event(provider, f"evt-{uuid.uuid4().hex}")
    assert await writer.apply([other, other], now) == 1 and await writer.apply([other], now) == 0
    assert await _requests(redis, provider) == 3
    assert await writer.count_applied([first, twice, old, other, _event(provider)], now) == 4


async def test_events_from_one_lease_settle_it_in_a_few_commands(tmp_path):
    # a Redis of its own: its command counts are this test's alone
    server = RedisServer(tmp_path / "redis", log_file=tmp_path / "redis.log").start()
    redis = connect_redis(server.url)
    try:
        writer, provider, now = WindowWriter(redis), "leased", int(time.time())
        lease = f"{redis_keys.CAP_LEASE_PREFIX}L1"
        await redis.hset(lease, mapping={"state": "live"})
        reservation = Reservation(provider=provider, model="m", at_s=now, tokens_in=8, tokens_out=16,
                                  cost_nano=0, lease="L1")
        await writer.apply([_event(provider, reservation=reservation)], now)  # the script is loaded

        def calls(stats: dict) -> int:
            return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")

        counts = []
        for n in (10, 200):
            before = await redis.info("commandstats")
            assert await writer.apply([_event(provider, reservation=reservation) for _ in range(n)], now) == n
            counts.append(calls(await redis.info("commandstats")) - calls(before))
        assert counts[0] == counts[1] < 40  # the same few commands for 10 events as for 200
        lease_now = await redis.hgetall(lease)
        # the lease counts each event's estimate as settled (its reaper gives back only the rest); the windows
        # got each event's share (actual - estimate)
        assert lease_now == {"state": "live", "applied_n": "211", "applied_tin": str(211 * 8),
                             "applied_tout": str(211 * 16)}
        totals = await WindowReader(redis).read([model_scope(provider, "m")], now)
        assert totals[model_scope(provider, "m")]["minute"] == {"req": 0, "tin": 211 * 2, "tout": 211 * -11,
                                                                "cost": 0}
    finally:
        await redis.aclose()
        server.stop()
