"""Routes without limits are routed on the edges' plans (docs/routing.md, "Plans"): with 2 edges and 2
routers, the routers frozen (SIGSTOP: their connections stay open, nobody answers), a route without limits
keeps serving and every answer is stored once; a route with a limit is refused cleanly (503, Retry-After),
never admitted without its router. Real NATS, Redis and chDB; the official ``openai`` SDK."""

from __future__ import annotations

import os
import signal

import httpx
import openai
import pytest

from admin import admin_client
from fakes import FakeProvider
from stacks import running_stack, wait_for

pytestmark = pytest.mark.integration

REQUESTS = 30


def _config(upstream: FakeProvider) -> str:
    return f"""
version: 1
providers:
  - id: plan-open
    base_url: {upstream.url}
    models: [{{name: open-m}}]
  - id: plan-capped
    base_url: {upstream.url}
    limits: {{requests_per_minute: 1000}}
    models: [{{name: capped-m}}]
routing:
  plan_max_age_s: 0.5
  decide_timeout_s: 1
usage:
  batch_wait_s: 0.1
"""


def _ask(stack, model: str) -> httpx.Response:
    # a new connection each time: the kernel picks the edge per connection
    with httpx.Client(timeout=30) as client:
        return client.post(f"http://127.0.0.1:{stack.edge_port}/v1/chat/completions",
                           json={"model": model, "messages": [{"role": "user", "content": "hi"}]})


def test_with_the_routers_frozen_a_route_without_limits_keeps_serving_a_limited_one_is_refused(infra, tmp_path):
    with FakeProvider(models=["open-m", "capped-m"]) as upstream:
        env = dict(os.environ, NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url,
                   CLICKHOUSE_URL=infra.clickhouse_url)
        with running_stack(tmp_path, _config(upstream), env, replicas={"edge": 2, "router": 2}) as stack:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", api_key="k", max_retries=0)
            assert client.chat.completions.create(model="capped-m", messages=[{"role": "user", "content": "x"}])
            # both edges hold a plan for the open route once each has served it
            wait_for(lambda: {_ask(stack, "open-m").headers["x-llmgw-edge"] for _ in range(8)} == {"edge-1", "edge-2"})

            routers = [c.proc.pid for c in stack.children if c.name.startswith("router")]
            assert len(routers) == 2
            for pid in routers:
                os.kill(pid, signal.SIGSTOP)
            try:
                served = [_ask(stack, "open-m") for _ in range(REQUESTS)]

                def says_so():  # an edge that found no router says what it serves from, still serving
                    served.append(_ask(stack, "open-m"))
                    detail = httpx.get(f"http://127.0.0.1:{stack.edge_port}/healthz").json()["checks"]["plans"]
                    return not detail["ok"] and "degraded: serving routes without limits from" in detail["detail"]

                wait_for(says_so)
                assert [r.status_code for r in served] == [200] * len(served)
                assert {r.headers["x-llmgw-edge"] for r in served} == {"edge-1", "edge-2"}

                with pytest.raises(openai.APIStatusError) as refused:
                    client.chat.completions.create(model="capped-m", messages=[{"role": "user", "content": "x"}])
                assert refused.value.status_code == 503 and refused.value.response.headers["retry-after"]
            finally:
                for pid in routers:
                    os.kill(pid, signal.SIGCONT)

            ids = sorted(r.headers["x-request-id"] for r in served)
            with admin_client(stack) as ui:
                def stored():
                    rows = ui.get("/api/requests", params={"provider": "plan-open", "limit": 1000}).json()["rows"]
                    mine = sorted(r["request_id"] for r in rows if r["request_id"] in ids)
                    return mine if len(mine) >= len(ids) else None

                assert wait_for(stored, timeout=30) == ids  # each once
