"""Replicas on one machine: ``llmgw run --replicas edge=2,router=2,pricing=2`` against one NATS and Redis.
The edges share the port (SO_REUSEPORT), routers and pricing share their queue groups; the load spreads
over them and nothing is counted twice."""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import httpx
import pytest

from admin import admin_client
from fakes import FakeProvider
from llmgw_cli.infra import InfraError
from llmgw_cli.runner import check_replicas, parse_replicas
from llmgw_common.nats_conn import connect_nats
from stacks import running_stack, service_replies, wait_for

pytestmark = pytest.mark.integration

REQUESTS = 80


def test_replica_arguments():
    assert parse_replicas("edge=2, router=3") == {"edge": 2, "router": 3}
    for bad in ("edge", "edge=0", "nginx=2", "edge=two"):
        with pytest.raises(InfraError):
            parse_replicas(bad)
    with pytest.raises(InfraError, match="ClickHouse server"):
        check_replicas({"usage": 2}, {})
    assert check_replicas({"usage": 2}, {"CLICKHOUSE_URL": "http://ch:8123"}) == {"usage": 2}
    with pytest.raises(InfraError, match="ui-api runs once"):
        check_replicas({"ui-api": 2}, {})
    with pytest.raises(InfraError, match="LLMGW_NATS_REPLICAS: a number of replicas from 1 to 5, not 'abc'"):
        check_replicas({}, {"LLMGW_NATS_REPLICAS": "abc"})  # before any process starts, not a traceback in each
    assert check_replicas({}, {"LLMGW_NATS_REPLICAS": "3"}) == {}


async def _router_stats(nats_url: str, replicas: int) -> list[int]:
    """``decide`` requests handled, per router replica (every replica answers $SRV.STATS.router)."""
    nc = await connect_nats(nats_url, "test-replicas")
    try:
        stats = await service_replies(nc, "STATS", "router", replicas)
    finally:
        await nc.close()
    return sorted(next(e["num_requests"] for e in s["endpoints"] if e["name"] == "decide") for s in stats)


def test_two_edges_two_routers_two_pricing_share_the_load_and_count_once(infra, tmp_path):
    with FakeProvider(models=["m"]) as upstream:
        config = f"""
version: 1
providers:
  - id: rep
    base_url: {upstream.url}
    # a limit: every request is the routers' to admit (a route without one is routed on the edges' plans)
    limits: {{requests_per_minute: 100000}}
    models: [{{name: m}}]
routing:
  leases: false  # the routers admit each request: their decide counts show the load spread over them
usage:
  batch_wait_s: 0.1
"""
        env = dict(os.environ, NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url,
                   CLICKHOUSE_URL=infra.clickhouse_url)
        replicas = {"edge": 2, "router": 2, "pricing": 2}
        with running_stack(tmp_path, config, env, replicas=replicas) as stack:
            children = list(stack.children)
            names = sorted(c.name for c in stack.children)
            assert {"edge-1", "edge-2", "router-1", "router-2", "pricing-1", "pricing-2", "usage", "ui-api"} <= \
                set(names)
            edges: Counter[str] = Counter()
            request_ids = []
            for i in range(REQUESTS):
                # a new connection each time: the kernel picks the edge per connection
                with httpx.Client(timeout=30) as client:
                    r = client.post(f"http://127.0.0.1:{stack.edge_port}/v1/chat/completions",
                                    json={"model": "m", "messages": [{"role": "user", "content": f"n{i}"}]})
                assert r.status_code == 200
                edges[r.headers["x-llmgw-edge"]] += 1
                request_ids.append(r.headers["x-request-id"])
            assert set(edges) == {"edge-1", "edge-2"} and min(edges.values()) >= REQUESTS // 8, edges
            per_router = asyncio.run(_router_stats(infra.nats_url, replicas["router"]))
            print(f"spread: edges {dict(edges)}, decide per router {per_router}")  # docs/scaling.md quotes it
            assert len(per_router) == 2 and sum(per_router) >= REQUESTS and min(per_router) >= REQUESTS // 8, \
                per_router

            with admin_client(stack) as ui:
                def stored():
                    rows = ui.get("/api/requests", params={"provider": "rep", "limit": 1000}).json()["rows"]
                    return rows if len(rows) >= REQUESTS else None

                rows = wait_for(stored, timeout=30)
                assert sorted(r["request_id"] for r in rows) == sorted(request_ids)  # each once
                windows = next(s["windows"] for s in ui.get("/api/usage/current").json()["scopes"]
                               if s["scope"] == "provider" and s["provider"] == "rep")
                assert windows["day"]["requests"] == REQUESTS
        # stopping the stack stops every replica too (a router left running would answer other stacks)
        assert all(c.proc.poll() is not None for c in children), [c.name for c in children if c.proc.poll() is None]
