"""Prompt-cache affinity in the router against real Redis: one replica records who served a prefix (from the
edge's outcome), another replica routes the conversation's next turn there; the record lives as long as the
provider type's cache; a decision affinity reordered is not kept as a plan, one it left alone is."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from llmgw_common.config import parse_config
from llmgw_common.messages import AttemptOutcome, AttemptOutcomes, RouteRequest
from llmgw_common.redis_conn import connect_redis
from llmgw_common.redis_keys import AFFINITY_PREFIX
from llmgw_common.windows import WindowReader
from llmgw_router.main import Router
from llmgw_router.store import RoutingStore

pytestmark = pytest.mark.integration


class Msg:
    def __init__(self, data: bytes):
        self.data = data


@pytest.fixture
async def redis(infra):
    r = connect_redis(infra.redis_url)
    yield r
    keys = [k async for k in r.scan_iter(f"{AFFINITY_PREFIX}*", count=1000)]
    if keys:
        await r.delete(*keys)
    await r.aclose()


def _config(tag: str):
    price = {"input_per_mtok": 3, "output_per_mtok": 15, "cached_input_per_mtok": 0.3}
    return parse_config({"routing": {"cache_affinity": {"ttl_s": {"anthropic": 2, "openai": 300}}}, "providers": [
        {"id": f"gpt-{tag}", "base_url": "http://127.0.0.1:9/v1",
         "models": [{"name": "m", "price": {**price, "input_per_mtok": 2.5}}]},
        {"id": f"claude-{tag}", "type": "anthropic", "base_url": "http://127.0.0.1:9", "api_key": "k",
         "models": [{"name": "m", "price": price}]}]})


def _turn(prefix_key: str | None) -> RouteRequest:
    return RouteRequest(request_id=uuid.uuid4().hex, model="m", estimated_prompt_tokens=3000, max_tokens=100,
                        prefix_key=prefix_key, prefix_tokens=2800 if prefix_key else 0)


async def test_one_replica_records_who_served_a_prefix_and_another_routes_the_next_turn_there(infra, redis):
    tag = uuid.uuid4().hex[:6]
    config = _config(tag)
    clients = [connect_redis(infra.redis_url) for _ in range(2)]
    try:
        a, b = (Router(config, RoutingStore(c), WindowReader(c)) for c in clients)
        prefix = uuid.uuid4().hex
        first = await a.decide(_turn(prefix))
        assert first.candidates[0].provider == f"gpt-{tag}"  # cheaper input, nothing cached yet

        # the conversation's first turn was served by claude (say gpt failed): the edge says so
        served = AttemptOutcome(request_id=first.request_id, provider=f"claude-{tag}", model="m", ok=True,
                                status=200, latency_ms=5, prefix_key=prefix)
        await a._apply_outcomes(Msg(AttemptOutcomes(outcomes=[served]).encode()))
        assert 0 < await redis.pttl(AFFINITY_PREFIX + prefix) <= 2000  # anthropic's cache lifetime here

        second = await b.decide(_turn(prefix))
        assert second.candidates[0].provider == f"claude-{tag}"
        assert second.candidates[0].reason.startswith("cache affinity (prefix cached here 0s ago; est. ")

        other = await b.decide(_turn(uuid.uuid4().hex))  # another conversation: the normal order
        assert other.candidates[0].provider == f"gpt-{tag}"
        # a failed attempt records nothing
        failed = msgspec.structs.replace(served, ok=False, status=500, provider=f"gpt-{tag}",
                                         prefix_key=uuid.uuid4().hex)
        await b._apply_outcome(Msg(failed.encode()))
        assert await redis.get(AFFINITY_PREFIX + failed.prefix_key) is None
    finally:
        for c in clients:
            await c.aclose()


async def test_a_provider_type_that_caches_nothing_is_not_recorded(infra, redis):
    tag = uuid.uuid4().hex[:6]
    config = _config(tag).model_copy(deep=True)
    config.routing.cache_affinity.ttl_s.pop("anthropic")
    client = connect_redis(infra.redis_url)
    try:
        router = Router(config, RoutingStore(client), WindowReader(client))
        prefix = uuid.uuid4().hex
        await router._apply_outcomes(Msg(AttemptOutcomes(outcomes=[AttemptOutcome(
            request_id="r", provider=f"claude-{tag}", model="m", ok=True, status=200, latency_ms=1,
            prefix_key=prefix)]).encode()))
        assert await redis.get(AFFINITY_PREFIX + prefix) is None
        assert (await router.decide(_turn(prefix))).candidates[0].provider == f"gpt-{tag}"
    finally:
        await client.aclose()


async def test_a_plan_affinity_reordered_is_not_reusable_one_it_left_alone_is(infra, redis):
    tag = uuid.uuid4().hex[:6]
    config = parse_config({"providers": [  # two free tiers: a route without limits whose plans are reusable
        {"id": f"a-{tag}", "base_url": "http://127.0.0.1:9/v1", "free_tier": True, "priority": 1,
         "models": [{"name": "m"}]},
        {"id": f"b-{tag}", "type": "anthropic", "base_url": "http://127.0.0.1:9", "api_key": "k", "free_tier": True,
         "priority": 5, "models": [{"name": "m"}]}]})
    client = connect_redis(infra.redis_url)
    try:
        router = Router(config, RoutingStore(client), WindowReader(client))
        prefix = uuid.uuid4().hex
        first = await router.decide(_turn(prefix))
        assert first.candidates[0].provider == f"a-{tag}" and first.reusable_s > 0
        await router._apply_outcomes(Msg(AttemptOutcomes(outcomes=[AttemptOutcome(
            request_id="r", provider=f"b-{tag}", model="m", ok=True, status=200, latency_ms=1,
            prefix_key=prefix)]).encode()))
        moved = await router.decide(_turn(prefix))
        assert moved.candidates[0].provider == f"b-{tag}" and moved.reusable_s == 0  # that conversation's alone
        await router._apply_outcomes(Msg(AttemptOutcomes(outcomes=[AttemptOutcome(
            request_id="r", provider=f"a-{tag}", model="m", ok=True, status=200, latency_ms=1,
            prefix_key=prefix)]).encode()))
        kept = await router.decide(_turn(prefix))
        assert kept.candidates[0].provider == f"a-{tag}" and kept.reusable_s > 0
        assert kept.candidates[0].reason.startswith("cache affinity (prefix cached here ")
    finally:
        await client.aclose()
