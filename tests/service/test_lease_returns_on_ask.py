"""A question for a lease carries the route's leases its edge gave back a moment ago (``LeaseAsk.returns``),
and the router takes them back before it grants: at a window bucket's turn the edge's ended lease goes back
and the next is asked for within milliseconds, and a give-back sent on its own could reach a router after
the question, which would then find the limit full of capacity nobody is using (400 concurrent requests on
a limit of 50 then admitted 47). Real Redis, the router's own handlers."""

from __future__ import annotations

import uuid

import pytest

from llmgw_common.capacity import LeaseAsk, LeaseReturn
from llmgw_common.config import parse_config
from llmgw_common.redis_conn import connect_redis
from llmgw_common.windows import WindowReader
from llmgw_router.main import Router
from llmgw_router.store import RoutingStore

pytestmark = pytest.mark.integration


def _ask(provider: str, edge: str, wanted: int, returns: list[LeaseReturn] = ()) -> LeaseAsk:
    return LeaseAsk(lease_id=uuid.uuid4().hex, edge=edge, provider=provider, model="m", wanted=wanted,
                    tokens_in=10, tokens_out=20, returns=list(returns))


async def test_the_leases_a_question_carries_go_back_before_its_grant(infra):
    provider = f"ret-{uuid.uuid4().hex[:6]}"
    config = parse_config({"routing": {"leases": True}, "providers": [
        {"id": provider, "base_url": "http://127.0.0.1:9/v1", "limits": {"requests_per_minute": 50},
         "models": [{"name": "m"}]}]})
    client = connect_redis(infra.redis_url)
    try:
        router = Router(config, RoutingStore(client), WindowReader(client))
        first = await router.grant_lease(_ask(provider, "edge-a", 10))
        assert first.n == 10
        rest = 0
        while (got := await router.grant_lease(_ask(provider, "edge-b", 10))).n:  # the rest goes to edge-b
            rest += got.n
        assert first.n + rest == 50
        # edge-a admitted 3 from its lease, which ended: its next question carries it back, and is granted
        back = LeaseReturn(lease_id=first.lease_id, admitted=3, tokens_in=30, tokens_out=60)
        second = await router.grant_lease(_ask(provider, "edge-a", 5, [back]))
        assert second.n >= 1
        assert (await router.return_lease(back)).state == "gone"  # its own give-back, later: nothing twice
        more = second.n
        while (got := await router.grant_lease(_ask(provider, "edge-a", 5))).n:
            more += got.n
        assert more == 7  # what edge-a's lease did not use: exactly, once
    finally:
        await client.aclose()
