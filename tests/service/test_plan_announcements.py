"""A router announces on ``llmgw.router.changed`` whatever makes an edge's reused plan wrong (docs/routing.md,
"Plans"): a gateway key changed (it may have got limits), a pin, a cooldown. Real NATS and Redis, the real
router in this process."""

from __future__ import annotations

import asyncio

import pytest

from llmgw_common import subjects
from llmgw_common.keys import KeyLimits, KeyStore
from llmgw_common.messages import AttemptOutcome, PinCommand, RouterState
from llmgw_common.nats_conn import connect_nats, request
from llmgw_router.main import RouterSettings, serve as serve_router
from stacks import wait_service

pytestmark = pytest.mark.integration

CONFIG = """
providers:
  - id: ann-a
    base_url: http://127.0.0.1:9/v1
    models: [{name: m}]
  - id: ann-b
    base_url: http://127.0.0.1:9/v1
    models: [{name: m}]
pricing: {fetch_on_start: false}
"""


async def test_a_router_announces_key_pin_and_cooldown_changes(infra, tmp_path):
    config = tmp_path / "llmgw.yaml"
    config.write_text(CONFIG)
    nc = await connect_nats(infra.nats_url, "test-announcements")
    announced = asyncio.Queue()
    await nc.subscribe(subjects.ROUTER_CHANGED, cb=announced.put)
    stop = asyncio.Event()
    router = asyncio.create_task(serve_router(RouterSettings(NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url,
                                                             LLMGW_CONFIG=str(config)), stop))
    try:
        await wait_service(nc, "router")
        while not announced.empty():  # whatever start-up said
            announced.get_nowait()

        async def heard() -> None:
            await asyncio.wait_for(announced.get(), 10)
            while not announced.empty():
                announced.get_nowait()

        store = await KeyStore.open(nc.jetstream())
        record, _secret = await store.create("ann-team")
        await heard()
        record.limits = KeyLimits(requests_per_minute=2)
        await store.update(record)
        await heard()

        await request(nc, subjects.ROUTER_PIN, PinCommand(provider="ann-b"), RouterState, 5)
        await heard()
        await request(nc, subjects.ROUTER_PIN, PinCommand(provider=None), RouterState, 5)
        await heard()

        await nc.publish(subjects.ROUTER_OUTCOME, AttemptOutcome(
            request_id="r-429", provider="ann-a", model="m", ok=False, status=429, latency_ms=1.0,
            retry_after_s=1.0, kind="rate_limited").encode())
        await heard()
    finally:
        stop.set()
        await router
        await nc.close()
