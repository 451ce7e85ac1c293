"""Routing questions the edge gave up on (llmgw_router.store.GIVE_UP_LUA): whether the give-up comes before
the question or after its admission, nothing stays reserved in any window or month and no lease is left for
the reaper to bill. Real Redis, the real scripts."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from llmgw_common import redis_keys
from llmgw_common.config import Limits
from llmgw_common.keys import KeyLimits, KeyRecord, new_key_id
from llmgw_common.leases import LEASES_KEY, lease_key, lease_member
from llmgw_common.messages import Candidate, UsageEvent
from llmgw_common.redis_conn import connect_redis
from llmgw_common.windows import WindowReader, key_scope, model_scope, month_key, provider_scope
from llmgw_router.policy import PlannedCandidate
from llmgw_router.store import Leases, RoutingStore
from llmgw_usage.windows_writer import WindowWriter

pytestmark = pytest.mark.integration

T0 = (int(time.time()) // 86400 + 3) * 86400 * 1000  # ahead of the real clock: no expiry in Redis's past


def _rid() -> str:
    return f"giveup-{uuid.uuid4().hex[:12]}"  # the answer keys and marks are shared: a fresh request each test


def _planned(provider: str) -> PlannedCandidate:
    return PlannedCandidate(candidate=Candidate(provider=provider, model="m", upstream_model="up"),
                            limits=[("provider", Limits(requests_per_minute=3)), ("model", Limits())],
                            est_tokens_in=40, est_tokens_out=60, est_cost=Decimal("0.01"))


def _key() -> KeyRecord:
    return KeyRecord(id=new_key_id(), name="giveup", hash="0" * 64, prefix="llmgw-…",
                     created_at=datetime.now(timezone.utc), limits=KeyLimits(cost_per_month=Decimal("0.30")))


@pytest.fixture
async def redis(infra):
    r = connect_redis(infra.redis_url)
    yield r
    await r.delete(LEASES_KEY)
    await r.aclose()


async def _reserved(redis, provider: str, key: KeyRecord, now_ms: int) -> dict[str, int]:
    """Requests reserved for the provider, its model and the key in the minute window, and the key's month
    cost (nano-USD)."""
    scopes = [provider_scope(provider), model_scope(provider, "m"), key_scope(key.id)]
    windows = await WindowReader(redis).read(scopes, now_ms // 1000)
    month = await redis.hget(month_key(key_scope(key.id), now_ms / 1000, "UTC")[0], "cost")
    return {"provider": windows[scopes[0]]["minute"]["req"], "model": windows[scopes[1]]["minute"]["req"],
            "key": windows[scopes[2]]["minute"]["req"], "month_cost": int(month or 0)}


async def test_a_give_up_after_the_admission_releases_it_everywhere_and_leaves_nothing_to_bill(redis):
    store, provider, key, rid = RoutingStore(redis), f"gu-{uuid.uuid4().hex[:8]}", _key(), _rid()
    admitted = await store.admit([_planned(provider)], rid, T0, key=key, event_id=rid, lease_s=30)
    assert admitted.index == 0
    assert await _reserved(redis, provider, key, T0) == {"provider": 1, "model": 1, "key": 1,
                                                         "month_cost": 10_000_000}

    assert await store.give_up([(rid, 0)], T0 + 500, 30) == 1  # the reply was lost: the edge gave up
    assert await _reserved(redis, provider, key, T0 + 500) == {"provider": 0, "model": 0, "key": 0, "month_cost": 0}
    member = lease_member(rid, provider)
    assert await redis.zscore(LEASES_KEY, member) is None and not await redis.exists(lease_key(member))
    assert await Leases(redis).take_expired(T0 + 3_600_000) == []  # the reaper bills nothing
    assert await redis.zscore(f"{redis_keys.INFLIGHT_PREFIX}{provider}", rid) is None
    # the question asked again (a copy still in flight) is refused, and reserves nothing
    again = await store.admit([_planned(provider)], rid, T0 + 600, key=key, event_id=rid, lease_s=30)
    assert again.index is None and again.given_up
    assert await store.give_up([(rid, 0)], T0 + 700, 30) == 0  # given up twice: released once
    assert (await _reserved(redis, provider, key, T0 + 700))["provider"] == 0


async def test_a_question_arriving_after_its_give_up_is_never_admitted(redis):
    store, provider, key, rid = RoutingStore(redis), f"gu-{uuid.uuid4().hex[:8]}", _key(), _rid()
    assert await store.give_up([(rid, 0)], T0, 30) == 0  # nothing admitted yet: only the mark
    late = await store.admit([_planned(provider)], rid, T0 + 100, key=key, event_id=rid, lease_s=30)
    assert late.index is None and late.given_up and late.reservation is None
    assert await _reserved(redis, provider, key, T0 + 100) == {"provider": 0, "model": 0, "key": 0, "month_cost": 0}
    # the next attempt of the same request is another question: admitted as usual
    nxt = await store.admit([_planned(provider)], rid, T0 + 200, key=key, event_id=rid, lease_s=30,
                            attempt=1)
    assert nxt.index == 0 and (await _reserved(redis, provider, key, T0 + 200))["provider"] == 1


async def test_a_give_up_after_the_request_was_settled_changes_nothing(redis):
    store, provider, key, rid = RoutingStore(redis), f"gu-{uuid.uuid4().hex[:8]}", _key(), _rid()
    r = (await store.admit([_planned(provider)], rid, T0, key=key, event_id=rid, lease_s=30)).reservation
    done = UsageEvent(id=rid, request_id=rid, provider=provider, model="m", key_id=key.id, tokens_in=40,
                      tokens_out=60, cost_usd=Decimal("0.01"), status=200, reservation=r)
    await WindowWriter(redis).apply([done], T0 // 1000 + 1)
    assert await store.give_up([(rid, 0)], T0 + 1500, 30) == 0
    assert (await _reserved(redis, provider, key, T0 + 1500))["provider"] == 1  # the served request counts


async def test_give_ups_sent_together_are_each_released_in_one_round_trip(redis):
    store, provider, key = RoutingStore(redis), f"gu-{uuid.uuid4().hex[:8]}", _key()
    admitted, never_asked = [_rid() for _ in range(3)], _rid()
    for rid in admitted:
        assert (await store.admit([_planned(provider)], rid, T0, key=key, event_id=rid, lease_s=30)).index == 0
    assert (await _reserved(redis, provider, key, T0))["provider"] == 3  # the provider's limit, 3, reached
    questions = [(rid, 0) for rid in admitted] + [(never_asked, 0)]
    assert await store.give_up(questions, T0 + 100, 30) == 3
    assert await _reserved(redis, provider, key, T0 + 100) == {"provider": 0, "model": 0, "key": 0, "month_cost": 0}
    late = await store.admit([_planned(provider)], never_asked, T0 + 200, key=key, event_id=never_asked, lease_s=30)
    assert late.given_up and late.index is None
