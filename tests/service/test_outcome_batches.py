"""A batch of attempt outcomes folded into one script run leaves Redis as the same outcomes applied one by
one: latency's moving average, in-flight marks, admission leases, the half-open breaker's probe, and the
failures and cooldowns of the outcomes that are not successes (kept in their place in the batch).

Real Redis (``infra.redis_url``) and the router's real scripts (``RoutingStore``)."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from llmgw_common import redis_keys
from llmgw_common.config import BreakerConfig, RoutingConfig
from llmgw_common.leases import LEASES_KEY, lease_key, lease_member
from llmgw_common.messages import AttemptOutcome, Reservation
from llmgw_common.redis_conn import connect_redis
from llmgw_cli.infra import RedisServer
from llmgw_router.outcomes import classify
from llmgw_router.store import RoutingStore

pytestmark = pytest.mark.integration

NOW_MS = 1_900_000_000_000
BREAKER = BreakerConfig(failures=2, window_s=30, open_s=60)


@pytest.fixture
async def redis(infra):
    r = connect_redis(infra.redis_url)
    yield r
    await r.aclose()


def _outcomes(a: str, b: str) -> list[AttemptOutcome]:
    """Successes on two providers (one of them a probe, one with a per-request reservation), a failure and a
    429 between them, more successes after."""
    reservation = Reservation(provider=a, model="m", at_s=NOW_MS // 1000, tokens_in=1, tokens_out=1, cost_nano=0)
    ok = [AttemptOutcome(request_id=f"r{k}", provider=a if k % 3 else b, model="m", ok=True, status=200,
                         latency_ms=10.0 + 7.3 * k) for k in range(12)]
    ok[4] = msgspec.structs.replace(ok[4], reservation=reservation)
    return [*ok[:6],
            AttemptOutcome(request_id="f1", provider=b, model="m", ok=False, status=500, latency_ms=3.0),
            AttemptOutcome(request_id="f2", provider=a, model="m", ok=False, status=429, latency_ms=2.0,
                           retry_after_s=30.0),
            *ok[6:]]


async def _prepare(redis, a: str, b: str) -> None:
    """In-flight marks for every request, a half-open breaker on ``a`` whose probe is r1, a latency on
    ``b`` already, the admission lease of r4."""
    for p in (a, b):
        await redis.delete(*(f"{prefix}{p}" for prefix in (
            redis_keys.INFLIGHT_PREFIX, redis_keys.PROBE_PREFIX, redis_keys.BREAKER_PREFIX,
            redis_keys.FAILURES_PREFIX, redis_keys.LATENCY_PREFIX, redis_keys.COOLDOWN_PREFIX)))
    for o in _outcomes(a, b):
        await redis.zadd(f"{redis_keys.INFLIGHT_PREFIX}{o.provider}", {o.request_id: NOW_MS})
    await redis.set(f"{redis_keys.PROBE_PREFIX}{a}", "r1")
    await redis.hset(f"{redis_keys.BREAKER_PREFIX}{a}", "open_until", NOW_MS - 1)
    await redis.zadd(f"{redis_keys.FAILURES_PREFIX}{a}", {"old": NOW_MS - 1000})
    await redis.set(f"{redis_keys.LATENCY_PREFIX}{b}", "40")
    member = lease_member("r4", a)
    await redis.zadd(LEASES_KEY, {member: NOW_MS + 60_000})
    await redis.hset(lease_key(member), mapping={"at": NOW_MS // 1000})


async def _state(redis, a: str, b: str) -> dict:
    state: dict = {"lease": (await redis.zscore(LEASES_KEY, lease_member("r4", a)),
                             await redis.exists(lease_key(lease_member("r4", a))))}
    for p in (a, b):
        state[p] = {
            "inflight": sorted(await redis.zrange(f"{redis_keys.INFLIGHT_PREFIX}{p}", 0, -1)),
            "probe": await redis.get(f"{redis_keys.PROBE_PREFIX}{p}"),
            "breaker": await redis.hgetall(f"{redis_keys.BREAKER_PREFIX}{p}"),
            "failures": sorted(await redis.zrange(f"{redis_keys.FAILURES_PREFIX}{p}", 0, -1)),
            "cooling": await redis.exists(f"{redis_keys.COOLDOWN_PREFIX}{p}"),
            "latency": float(await redis.get(f"{redis_keys.LATENCY_PREFIX}{p}") or "nan"),
        }
    return state


async def test_a_folded_batch_leaves_the_state_one_by_one_leaves(redis):
    store = RoutingStore(redis)
    a, b = f"batch-a-{uuid.uuid4().hex[:8]}", f"batch-b-{uuid.uuid4().hex[:8]}"
    items = [(o, *classify(o, RoutingConfig())) for o in _outcomes(a, b)]

    await _prepare(redis, a, b)
    for outcome, kind, cooldown_ms in items:
        await store.record_outcome(outcome, kind, cooldown_ms, BREAKER, NOW_MS)
    one_by_one = await _state(redis, a, b)

    await _prepare(redis, a, b)
    await store.record_outcomes(items, BREAKER, NOW_MS)
    folded = await _state(redis, a, b)

    for p in (a, b):  # one by one rounds the average to 14 digits at each step, folded once at the end
        assert folded[p].pop("latency") == pytest.approx(one_by_one[p].pop("latency"), rel=1e-9)
    assert folded == one_by_one
    # and it is the state the outcomes call for: the probe's success closed a's breaker, its lease ended
    assert folded[a]["probe"] is None and folded[a]["breaker"] == {} and folded[a]["cooling"] == 1
    assert folded[a]["inflight"] == [] and folded["lease"] == (None, 0)
    assert folded[b]["failures"] == ["f1"] and folded[b]["inflight"] == []


async def test_a_batch_of_successes_is_one_script_run(tmp_path):
    # a Redis of its own: its command counts are this test's alone
    server = RedisServer(tmp_path / "redis", log_file=tmp_path / "redis.log").start()
    redis = connect_redis(server.url)
    try:
        await _count_one_batch(redis)
    finally:
        await redis.aclose()
        server.stop()


async def _count_one_batch(redis) -> None:
    store = RoutingStore(redis)
    a, b = f"batch-a-{uuid.uuid4().hex[:8]}", f"batch-b-{uuid.uuid4().hex[:8]}"
    successes = [(o, "ok", 0) for o in _outcomes(a, b) if o.ok]
    await store.record_outcomes(successes[:1], BREAKER, NOW_MS)  # the script is loaded
    before = await redis.info("commandstats")
    await store.record_outcomes(successes, BREAKER, NOW_MS)
    after = await redis.info("commandstats")

    def calls(stats: dict, name: str) -> int:
        return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))

    assert calls(after, "evalsha") - calls(before, "evalsha") == 1
    assert calls(after, "script|exists") == calls(before, "script|exists")
    # a few commands per provider (in flight, leases, probe, latency), not several per outcome
    assert calls(after, "get") - calls(before, "get") == 4
