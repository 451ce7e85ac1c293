"""Two router replicas, each with its own Redis client, deciding concurrently: the exactness tests'
machinery (tests/service/test_key_limits.py on one Redis, tests/cluster on a Redis Cluster and Sentinel)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from llmgw_common.config import GatewayConfig, Price
from llmgw_common.keys import KeyRecord
from llmgw_common.messages import RouteDecision, RouteRequest
from llmgw_common.redis_conn import connect_redis
from llmgw_common.windows import WindowReader
from llmgw_router.main import Router
from llmgw_router.store import RoutingStore


class TwoRouters:
    """Routers that answer for a config whose providers each serve model "m" at 1 cent a request."""

    def __init__(self, redis_url: str, config: GatewayConfig, key: KeyRecord | None = None, now_ms: int | None = None):
        self.clients = [connect_redis(redis_url) for _ in range(2)]
        self.routers = []
        self.key = key
        for client in self.clients:
            router = Router(config, RoutingStore(client), WindowReader(client))
            if key is not None:
                router.keys.records[key.id] = key
            router.prices = {(p.id, "m"): Price(per_request=Decimal("0.01")) for p in config.providers}
            if now_ms is not None:
                router.now_ms = lambda: now_ms
            self.routers.append(router)

    async def decide(self, i: int) -> RouteDecision:
        return await self.routers[i % 2].decide(RouteRequest(
            request_id=f"r{i}", model="m", key_id=self.key.id if self.key else None, estimated_prompt_tokens=5,
            max_tokens=5))

    async def admitted_of(self, n: int) -> int:
        """``n`` decisions at once, alternating between the routers: how many were admitted."""
        decisions = await asyncio.gather(*(self.decide(i) for i in range(n)))
        return sum(d.error is None for d in decisions)

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()
