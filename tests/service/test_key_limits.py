"""Gateway keys' limits and budgets, enforced in the router's atomic admission (real Redis, real scripts):
windows and calendar months, exact under concurrency across two router replicas, reset at the month's
start (a moved clock), given back when an attempt fails, reconciled with the real usage, providers
narrowed to the key's list.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from llmgw_common.config import BreakerConfig, Limits, parse_config
from llmgw_common.keys import KeyLimits, KeyRecord, new_key_id
from llmgw_common.messages import AttemptOutcome, Candidate, RouteRequest, UsageEvent
from llmgw_common.redis_conn import connect_redis
from llmgw_common.windows import CALENDAR_PREFIX, KEY_PREFIX, WindowReader, key_scope, month_key
from llmgw_router.outcomes import retry_after_s
from llmgw_router.policy import PlannedCandidate
from llmgw_router.store import RoutingStore
from two_routers import TwoRouters
from llmgw_usage.windows_writer import WindowWriter

pytestmark = pytest.mark.integration

NEW_YEAR = int(datetime(2031, 1, 1, tzinfo=timezone.utc).timestamp())  # ahead of the real clock: no past expiries


def _key(**limits) -> KeyRecord:
    return KeyRecord(id=new_key_id(), name="team-a", hash="0" * 64, prefix="llmgw-…",
                     created_at=datetime.now(timezone.utc), limits=KeyLimits(**limits))


def _planned(provider: str, cost: str = "0.01") -> PlannedCandidate:
    return PlannedCandidate(candidate=Candidate(provider=provider, model="m", upstream_model="m"),
                            limits=[("provider", Limits()), ("model", Limits())], est_tokens_in=10,
                            est_tokens_out=20, est_cost=Decimal(cost))


@pytest.fixture
async def redis(infra):
    r = connect_redis(infra.redis_url)
    yield r
    for pattern in (f"{KEY_PREFIX}*keytest-*", f"{KEY_PREFIX}k:*", f"{CALENDAR_PREFIX}*"):
        keys = [k async for k in r.scan_iter(pattern, count=1000)]
        if keys:
            await r.delete(*keys)
    await r.aclose()


def _provider() -> str:
    return f"keytest-{uuid.uuid4().hex[:8]}"


async def test_a_monthly_request_budget_resets_at_the_calendar_month(redis):
    store, provider, key = RoutingStore(redis), _provider(), _key(requests_per_month=3)
    last_second = (NEW_YEAR - 10) * 1000  # 2030-12-31 23:59:50 UTC
    for _ in range(3):
        assert (await store.admit([_planned(provider)], "r", last_second, key)).index == 0
    refused = await store.admit([_planned(provider)], "r", last_second + 5_000, key)
    assert refused.index is None
    reason = refused.reasons[0]
    assert "requests_per_month reached on key team-a (3/3)" in reason
    assert retry_after_s([reason]) == 5  # until midnight, when the month resets
    admitted = await store.admit([_planned(provider)], "r", NEW_YEAR * 1000, key)
    assert admitted.index == 0 and admitted.reservation.key_id == key.id


async def test_the_month_follows_the_configured_time_zone(redis):
    store, provider, key = RoutingStore(redis), _provider(), _key(requests_per_month=1)
    # 2031-01-01 00:30 UTC is still December in New York
    t = (NEW_YEAR + 1800) * 1000
    assert (await store.admit([_planned(provider)], "r", t, key, "America/New_York")).index == 0
    assert (await store.admit([_planned(provider)], "r", t + 1000, key, "America/New_York")).index is None
    assert (await store.admit([_planned(provider)], "r", t + 1000, key, "UTC")).index == 0  # January in UTC


async def test_a_key_window_limit_says_when_it_frees_up(redis):
    store, provider, key = RoutingStore(redis), _provider(), _key(requests_per_minute=2)
    t = NEW_YEAR * 1000 + 86400_000
    for offset in (0, 20_000):
        assert (await store.admit([_planned(provider)], "r", t + offset, key)).index == 0
    refused = await store.admit([_planned(provider)], "r", t + 30_000, key)
    reason = refused.reasons[0]
    assert reason.startswith("requests_per_minute reached on key team-a (2/2)")
    # the first request's 5-s bucket leaves the minute 65 s after its start: 35 s from now
    assert retry_after_s([reason]) == 35
    assert (await store.admit([_planned(provider)], "r", t + 65_000, key)).index == 0


async def test_a_failed_attempt_gives_back_the_keys_reservation(redis):
    store, provider, key = RoutingStore(redis), _provider(), _key(requests_per_month=1, requests_per_minute=1)
    t = (NEW_YEAR + 2 * 86400) * 1000
    admitted = await store.admit([_planned(provider)], "r1", t, key)
    assert (await store.admit([_planned(provider)], "r2", t + 1000, key)).index is None
    outcome = AttemptOutcome(request_id="r1", provider=provider, model="m", ok=False, status=503, latency_ms=3,
                             reservation=admitted.reservation, kind="overloaded")
    await store.record_outcome(outcome, "failure", 0, BreakerConfig(), t + 2000)
    assert (await store.admit([_planned(provider)], "r3", t + 3000, key)).index == 0


async def test_usage_reconciles_the_key_windows_and_month(redis):
    store, provider, key = RoutingStore(redis), _provider(), _key(cost_per_month=Decimal("1"))
    t = (NEW_YEAR + 3 * 86400) * 1000
    r = (await store.admit([_planned(provider, cost="0.5")], "r", t, key)).reservation
    event = UsageEvent(ts=datetime.fromtimestamp(r.at_s + 1, timezone.utc), request_id="r", provider=provider,
                       model="m", key_id=key.id, tokens_in=12, tokens_out=3, cost_usd=Decimal("0.02"), status=200,
                       reservation=r)
    assert await WindowWriter(redis).apply([event], now_s=r.at_s + 2) == 1
    month, _ = month_key(key_scope(key.id), r.at_s)
    assert await redis.hgetall(month) == {"req": "1", "tin": "12", "tout": "3", "cost": "20000000"}
    minute = (await WindowReader(redis).read([key_scope(key.id)], r.at_s + 2))[key_scope(key.id)]["minute"]
    assert minute == {"req": 1, "tin": 12, "tout": 3, "cost": 20_000_000}
    # the real cost, not the estimate, counts against the budget: 0.98 USD is left, so 0.5 fits again
    assert (await store.admit([_planned(provider, cost="0.5")], "r", t + 5000, key)).index == 0


async def test_a_monthly_budget_is_exact_across_two_router_replicas_under_concurrency(infra, redis):
    provider = _provider()
    config = parse_config({"providers": [{"id": provider, "base_url": "http://127.0.0.1:9/v1", "models": [
        {"name": "m", "price": {"per_request": "0.01"}}]}]})
    routers = TwoRouters(infra.redis_url, config, key=_key(cost_per_month=Decimal("0.50")))  # 50 at 0.01 USD
    try:
        assert await routers.admitted_of(400) == 50
    finally:
        await routers.aclose()


def test_a_keys_provider_list_narrows_the_candidates():
    from llmgw_router.policy import RoutingState, plan

    config = parse_config({"providers": [
        {"id": "cheap", "base_url": "http://127.0.0.1:9/v1", "models": [{"name": "m"}]},
        {"id": "other", "base_url": "http://127.0.0.1:9/v1", "models": [{"name": "m"}]}]})
    key = _key()
    key.providers = ["other"]
    p = plan(config, {}, RouteRequest(request_id="r", model="m", key_id=key.id), RoutingState(), key=key)
    assert [pc.candidate.provider for pc in p.ordered] == ["other"]
    assert p.skipped[0].provider == "cheap" and "not allowed for key" in p.skipped[0].reason
