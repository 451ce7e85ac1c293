"""The router's admission on a Redis Cluster of 3 primaries (real redis-server processes on loopback): the
gateway's scripts run there (every key a script touches carries the {state} hash tag), and a limit stays
exact across two router replicas under concurrency, as on one Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import redis as sync_redis
from redis_topologies import redis_cluster
from two_routers import TwoRouters

from llmgw_common import redis_keys
from llmgw_common.config import BreakerConfig, Limits, parse_config
from llmgw_common.keys import KeyLimits, KeyRecord, new_key_id
from llmgw_common.messages import AttemptOutcome, UsageEvent
from llmgw_common.redis_conn import connect_redis
from llmgw_common.windows import WindowReader, provider_scope
from llmgw_router.capacity_leases import CapacityLeases, LeaseRoute
from llmgw_router.store import Leases
from llmgw_usage.windows_writer import WindowWriter

pytestmark = pytest.mark.integration

T0 = (int(time.time()) // 86400 + 2) * 86400 * 1000  # ahead of the real clock, at a minute's start


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory):
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as url:
        yield url


def _config(provider: str, **limits):
    return parse_config({"providers": [{"id": provider, "base_url": "http://127.0.0.1:9/v1", "limits": limits,
                                        "models": [{"name": "m", "price": {"per_request": "0.01"}}]}]})


def _shards_holding(url: str, pattern: str) -> set[int]:
    ports = [int(node.rpartition(":")[2]) for node in url.removeprefix("redis+cluster://").split(",")]
    holding = set()
    for port in ports:
        with sync_redis.Redis(port=port) as node:
            if any(True for _ in node.scan_iter(pattern)):
                holding.add(port)
    return holding


async def test_a_per_minute_limit_of_50_admits_exactly_50_of_400_across_two_routers(cluster_url):
    provider = f"cl-{uuid.uuid4().hex[:8]}"
    routers = TwoRouters(cluster_url, _config(provider, requests_per_minute=50), now_ms=T0)
    try:
        assert await routers.admitted_of(400) == 50
        totals = await WindowReader(routers.clients[0]).read([provider_scope(provider)], T0 // 1000)
        assert totals[provider_scope(provider)]["minute"]["req"] == 50
    finally:
        await routers.aclose()
    # the state is on one shard (one slot) of the three: what the tag decides
    assert len(_shards_holding(cluster_url, f"{redis_keys.WINDOW_PREFIX}{provider_scope(provider)}*")) == 1


async def test_a_keys_monthly_budget_is_exact_on_the_cluster(cluster_url):
    key = KeyRecord(id=new_key_id(), name="team-c", hash="0" * 64, prefix="llmgw-…",
                    created_at=datetime.now(timezone.utc), limits=KeyLimits(cost_per_month=Decimal("0.50")))
    routers = TwoRouters(cluster_url, _config(f"cl-{uuid.uuid4().hex[:8]}"), key=key, now_ms=T0)
    try:
        assert await routers.admitted_of(400) == 50
    finally:
        await routers.aclose()


async def test_the_outcome_stats_leases_and_usage_scripts_run_on_the_cluster(cluster_url):
    """The scripts that name no key (routed to the state's slot) and the pipelined ones (sent as EVAL)."""
    provider = f"cl-{uuid.uuid4().hex[:8]}"
    routers = TwoRouters(cluster_url, _config(provider, requests_per_minute=50), now_ms=T0)
    redis = connect_redis(cluster_url)
    try:
        store = routers.routers[0].store
        first, second = [AttemptOutcome(request_id=f"r{i}", provider=provider, model="m", ok=False, status=500,
                                        latency_ms=30, reservation=(await routers.decide(i)).candidates[0].reservation)
                         for i in (1, 2)]
        await store.record_outcomes([(first, "server_error", 0)], BreakerConfig(), T0 + 10)  # pipelined
        assert await store.record_outcome(second, "server_error", 0, BreakerConfig(), T0 + 20) == "released"
        _pinned, _smart, stats = await store.read_stats([provider], T0 + 30)
        assert stats[provider].inflight == 0
        assert await store.give_up([("r9", 0)], T0 + 40, 5) == 0  # pipelined; nothing admitted for r9
        assert await Leases(redis).take_expired(T0 + 50) == []
        event = UsageEvent(request_id="r3", provider=provider, model="m", status=200, tokens_in=3, tokens_out=4,
                           ts=datetime.fromtimestamp(T0 / 1000, timezone.utc), cost_usd=Decimal("0.01"))
        assert await WindowWriter(redis).apply([event], T0 // 1000) == 1
        totals = await WindowReader(redis).read([provider_scope(provider)], T0 // 1000)
        assert totals[provider_scope(provider)]["minute"]["tin"] == 3
    finally:
        await redis.aclose()
        await routers.aclose()


async def test_capacity_leases_granted_by_two_routers_at_once_add_up_to_the_limit(cluster_url):
    """The leased path (DESIGN.md, "Leased admission") on the cluster: grants, a give-back and the reaper."""
    route = LeaseRoute(provider=f"cl-{uuid.uuid4().hex[:8]}", model="m",
                       provider_limits=Limits(requests_per_minute=50), model_limits=Limits(), est_tokens_in=5,
                       est_tokens_out=5, est_cost=Decimal("0.01"))
    clients = [connect_redis(cluster_url) for _ in range(2)]
    leases = [CapacityLeases(client) for client in clients]

    async def drain(edge: int) -> list[tuple[str, int]]:
        granted = []
        while (g := await leases[edge].grant(lease_id := uuid.uuid4().hex, f"edge-{edge}", route, 7, T0, 10_000,
                                             1_000)).n:
            granted.append((lease_id, g.n))
        return granted

    try:
        a, b = await asyncio.gather(drain(0), drain(1))
        assert sum(n for _, n in a + b) == 50
        lease_id, n = a[0]
        await leases[0].give_back(lease_id, n - 1, 5 * (n - 1), 5 * (n - 1), 0, T0 + 10, 0)  # one not used
        minute = (await WindowReader(clients[0]).read([provider_scope(route.provider)], T0 // 1000))
        assert minute[provider_scope(route.provider)]["minute"]["req"] == 49
        await leases[1].reap(T0 + 60_000, keep_s=60)  # its script finds its keys on the state's shard
    finally:
        for client in clients:
            await client.aclose()
