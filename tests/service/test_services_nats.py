"""Router and pricing services over a real NATS and Redis: queue groups, price look-ups."""

from __future__ import annotations

import asyncio
import json

import pytest

from llmgw_common import subjects
from llmgw_common.config import load_config
from llmgw_common.messages import PriceKey, PriceList, PriceLookup, RouteDecision, RouteRequest
from llmgw_common.nats_conn import connect_nats, request
from llmgw_pricing.main import PricingSettings
from llmgw_pricing.main import serve as serve_pricing
from llmgw_pricing.prices import PriceTable
from llmgw_router.main import RouterSettings
from llmgw_router.main import serve as serve_router
from stacks import wait_service

pytestmark = pytest.mark.integration

CONFIG = """
providers:
  - id: paid
    base_url: http://127.0.0.1:9/v1
    models:
      - name: gpt-4o-mini
      - name: custom
        price: {input_per_mtok: 7, output_per_mtok: 9}
      - name: mystery
  - id: free
    base_url: http://127.0.0.1:9/v1
    free_tier: true
    models: [{name: gpt-4o-mini}]
pricing: {fetch_on_start: false}  # deterministic sources: no public fetch (tests/service/test_pricing.py covers it)
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "llmgw.yaml"
    path.write_text(CONFIG)
    load_config(path)
    return path


async def _start(coro_factory, n=1):
    stops = [asyncio.Event() for _ in range(n)]
    tasks = [asyncio.create_task(coro_factory(s)) for s in stops]
    return stops, tasks


async def _stop(stops, tasks):
    for s in stops:
        s.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 15)


async def test_pricing_lookup_sources(infra, config_file, tmp_path):
    settings = PricingSettings(NATS_URL=infra.nats_url, LLMGW_CONFIG=str(config_file), LLMGW_STATE_DIR=str(tmp_path))
    stops, tasks = await _start(lambda s: serve_pricing(settings, s))
    nc = await connect_nats(infra.nats_url, "test")
    try:
        await wait_service(nc, "pricing")
        keys = [PriceKey(provider="paid", model=m) for m in ("gpt-4o-mini", "custom", "mystery", "openai/gpt-4o")]
        reply = await request(nc, subjects.PRICING_LOOKUP, PriceLookup(keys=keys), PriceList, 5)
        by_model = {p.model: p for p in reply.prices}
        bundled = PriceTable.bundled().prices
        assert by_model["gpt-4o-mini"].source == "bundled"
        assert by_model["gpt-4o-mini"].price == bundled["gpt-4o-mini"]
        assert by_model["custom"].source == "config" and str(by_model["custom"].price.input_per_mtok) == "7"
        assert by_model["mystery"].source == "unknown" and by_model["mystery"].price is None
        assert by_model["openai/gpt-4o"].price == bundled["gpt-4o"]  # vendor/model falls back to its last part
        listed = await request(nc, subjects.PRICING_LIST, PriceLookup(keys=[]), PriceList, 5)
        assert {(p.provider, p.model) for p in listed.prices} == {
            ("paid", "gpt-4o-mini"), ("paid", "custom"), ("paid", "mystery"), ("free", "gpt-4o-mini")}
        bad = await nc.request(subjects.PRICING_LOOKUP, b"{not json", timeout=5)
        assert bad.headers["Nats-Service-Error-Code"] == "400"
    finally:
        await nc.close()
        await _stop(stops, tasks)


async def test_two_router_replicas_share_the_load_and_use_pricing(infra, config_file, tmp_path):
    env = dict(NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url, LLMGW_CONFIG=str(config_file),
               LLMGW_STATE_DIR=str(tmp_path))
    p_stops, p_tasks = await _start(lambda s: serve_pricing(PricingSettings(**env), s))
    r_stops, r_tasks = await _start(lambda s: serve_router(RouterSettings(**env), s), n=2)
    nc = await connect_nats(infra.nats_url, "test")
    try:
        await wait_service(nc, "router", count=2)
        await wait_service(nc, "pricing")
        decisions = await asyncio.gather(*(
            request(nc, subjects.ROUTER_DECIDE, RouteRequest(request_id=str(i), model="gpt-4o-mini"),
                    RouteDecision, 5) for i in range(40)))
        assert all([c.provider for c in d.candidates] == ["free", "paid"] for d in decisions)
        # the paid candidate carries the bundled price the pricing service gave the router
        assert decisions[-1].candidates[1].price is not None
        # both replicas answered some of them (queue group), seen through the micro-service stats
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish("$SRV.STATS.router", b"", reply=inbox)
        stats = [json.loads((await sub.next_msg(timeout=2)).data) for _ in range(2)]
        counts = [s["endpoints"][0]["num_requests"] for s in stats]
        assert sum(counts) >= 40 and all(c > 0 for c in counts)
        unknown = await request(nc, subjects.ROUTER_DECIDE, RouteRequest(request_id="x", model="nope"),
                                RouteDecision, 5)
        assert unknown.error.status == 404
    finally:
        await nc.close()
        await _stop(r_stops, r_tasks)
        await _stop(p_stops, p_tasks)


async def test_the_router_answers_malformed_questions_with_an_error_and_keeps_answering(infra, config_file, tmp_path):
    env = dict(NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url, LLMGW_CONFIG=str(config_file),
               LLMGW_STATE_DIR=str(tmp_path))
    stops, tasks = await _start(lambda s: serve_router(RouterSettings(**env), s))
    nc = await connect_nats(infra.nats_url, "test")
    try:
        await wait_service(nc, "router")
        for bad in (b"{not json", b"[]", b'{"request_id": "r"}', b'{"request_id": 5, "model": "gpt-4o-mini"}',
                    b'{"request_id": "r", "model": "gpt-4o-mini", "exclude": "free"}'):
            reply = await nc.request(subjects.ROUTER_DECIDE, bad, timeout=5)
            assert reply.headers["Nats-Service-Error-Code"] == "400", bad
            assert reply.headers["Nats-Service-Error"].startswith("invalid request")
        too_many = json.dumps({"items": [{"request_id": str(i)} for i in range(1001)]}).encode()
        reply = await nc.request(subjects.ROUTER_GIVE_UP, too_many, timeout=5)
        assert reply.headers["Nats-Service-Error-Code"] == "400"
        # published messages nobody answers: an unreadable one is dropped, the router goes on
        for subject in (subjects.ROUTER_OUTCOME, subjects.ROUTER_OUTCOMES, subjects.ROUTER_LEASE_RENEW):
            await nc.publish(subject, b'{"outcomes": 5, "request_id": [], "members": {}}')
        await nc.flush()
        decision = await request(nc, subjects.ROUTER_DECIDE, RouteRequest(request_id="ok", model="gpt-4o-mini"),
                                 RouteDecision, 5)
        assert decision.error is None and [c.provider for c in decision.candidates] == ["free", "paid"]
        assert not any(t.done() for t in tasks)
    finally:
        await nc.close()
        await _stop(stops, tasks)
