"""The whole gateway (every service as its own process, the official openai SDK as the client) with
REDIS_URL naming a Redis Cluster of 3 primaries: nothing but the URL changes."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from admin import admin_client
from fakes import FakeProvider
from redis_topologies import redis_cluster
from stacks import running_stack, wait_for

pytestmark = pytest.mark.integration

LIMIT = 20


def _minute_requests(ui: httpx.Client) -> int:
    for s in ui.get("/api/usage/current").raise_for_status().json()["scopes"]:
        if s["scope"] == "provider" and s["provider"] == "capped":
            return s["windows"]["minute"]["requests"]
    return 0


def test_a_limit_holds_through_the_whole_gateway_on_a_redis_cluster(infra, tmp_path):
    with FakeProvider(models=["m"]) as upstream, redis_cluster(tmp_path / "redis") as cluster_url:
        config = f"""
version: 1
providers:
  - id: capped
    base_url: {upstream.url}
    free_tier: true
    limits: {{requests_per_minute: {LIMIT}}}
    models:
      - name: m
usage:
  batch_wait_s: 0.1
"""
        env = dict(os.environ, NATS_URL=infra.nats_url, REDIS_URL=cluster_url, CLICKHOUSE_URL=infra.clickhouse_url)
        (tmp_path / "stack").mkdir()
        with running_stack(tmp_path / "stack", config, env) as stack:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", api_key="k", max_retries=0)

            def one(i: int) -> int:
                try:
                    client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"hi {i}"}])
                    return 200
                except openai.APIStatusError as exc:
                    return exc.status_code

            with ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(one, range(2 * LIMIT)))
            assert sorted(statuses) == [200] * LIMIT + [429] * LIMIT
            assert len(upstream.requests) == LIMIT
            with admin_client(stack) as ui:  # the usage service's windows, on the cluster too
                assert wait_for(lambda: _minute_requests(ui) == LIMIT)
