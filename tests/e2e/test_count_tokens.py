"""count_tokens needs the router's plan, never capacity: Claude Code asks it before many messages, and it must
not eat a free tier's requests. Official ``anthropic`` SDK against the whole stack (real NATS, Redis, chDB);
the upstream is a fake speaking the Anthropic wire format."""

from __future__ import annotations

import os

import anthropic
import httpx
import pytest

from admin import admin_headers
from fakes import FakeProvider
from stacks import clear_router_health, running_stack, wait_for

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "how many tokens is this"}]


def _config(upstream: FakeProvider) -> str:
    return f"""
version: 1
providers:
  - id: ct-anthropic
    type: anthropic
    base_url: {upstream.origin}
    api_key: ct-upstream-key
    free_tier: true
    limits: {{requests_per_minute: 2}}
    models:
      - name: ct-model
        upstream: up-model
routing:
  retry: {{attempts: 0}}
usage:
  batch_wait_s: 0.1
"""


@pytest.fixture(scope="module")
def upstream():
    with FakeProvider(models=["up-model"], api_key="ct-upstream-key") as fake:
        yield fake


@pytest.fixture(scope="module")
def stack(infra, upstream, tmp_path_factory):
    env = dict(os.environ, NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url, CLICKHOUSE_URL=infra.clickhouse_url)
    clear_router_health(infra.redis_url)
    with running_stack(tmp_path_factory.mktemp("count-tokens"), _config(upstream), env) as s:
        yield s


def _logged(stack, request_id: str) -> bool:
    r = httpx.get(f"http://127.0.0.1:{stack.ui_port}/api/requests", params={"request_id": request_id},
                  headers=admin_headers(stack))
    return bool(r.raise_for_status().json()["rows"])


def test_count_tokens_reserves_nothing_a_two_per_minute_provider_still_admits_two_messages(stack, upstream):
    claude = anthropic.Anthropic(base_url=f"http://127.0.0.1:{stack.edge_port}", api_key="client-key",
                                 max_retries=0)
    ids = []
    for _ in range(10):
        raw = claude.messages.with_raw_response.count_tokens(model="ct-model", messages=MESSAGES)
        assert raw.parse().input_tokens > 0
        assert raw.headers["x-llmgw-provider"] == "ct-anthropic"
        ids.append(raw.headers["x-request-id"])
    assert sum(r["path"] == "/v1/messages/count_tokens" for r in upstream.requests) == 10
    # every count_tokens event has been through the usage service (logged): none counted in a window
    wait_for(lambda: all(_logged(stack, request_id) for request_id in ids), timeout=30)

    for i in range(2):
        raw = claude.messages.with_raw_response.create(model="ct-model", max_tokens=16,
                                                       messages=[{"role": "user", "content": f"n{i}"}])
        assert raw.headers["x-llmgw-provider"] == "ct-anthropic"
    # the limit itself still holds: the third message in the minute is refused
    with pytest.raises(anthropic.RateLimitError) as refused:
        claude.messages.create(model="ct-model", max_tokens=16, messages=MESSAGES)
    assert refused.value.response.headers.get("retry-after")
