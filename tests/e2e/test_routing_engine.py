"""The routing engine end to end: exact limits across two router replicas, cooldown after 429,
circuit breaker, reservations reconciled with real usage, rules, pin and chat commands.

Real NATS, Redis and chDB; the providers are fake OpenAI-compatible servers.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter

import httpx
import openai
import pytest

from llmgw_common import redis_keys
from llmgw_common.config import parse_config_text
from llmgw_common.messages import RouteRequest
from llmgw_common.nats_conn import connect_nats
from llmgw_common.redis_conn import connect_redis
from llmgw_common.windows import WindowReader
from llmgw_router.main import Router, RouterSettings, serve as serve_router
from llmgw_router.store import RoutingStore

from admin import admin_headers
from fakes import FakeProvider
from stacks import clear_router_health, running_stack, wait_for, wait_service

pytestmark = pytest.mark.integration

MODELS = ["shared", "capped", "flaky-model", "tokens-model"]


def _config(free: FakeProvider, paid: FakeProvider) -> str:
    return f"""
version: 1
providers:
  - id: free
    base_url: {free.url}
    free_tier: true
    priority: 1
    models:
      - name: shared
        limits: {{requests_per_minute: 50}}
      - name: capped
        limits: {{requests_per_minute: 50}}
      - name: flaky-model
      - name: tokens-model
        limits: {{tokens_per_minute: 1000000}}
  - id: paid
    base_url: {paid.url}
    priority: 5
    models:
      - name: shared
        price: {{input_per_mtok: 1, output_per_mtok: 2}}
      - name: flaky-model
        price: {{input_per_mtok: 1, output_per_mtok: 2}}
      - name: tokens-model
        price: {{input_per_mtok: 100, output_per_mtok: 300}}
        limits: {{cost_per_day: 1000}}
routing:
  retry: {{attempts: 1, base_delay_s: 0.01, max_delay_s: 0.02}}
  breaker: {{failures: 2, window_s: 30, open_s: 1.5}}
  rules:
    - name: blocked-team
      match: {{headers: {{x-team: blocked}}}}
      action: {{reject: {{status: 403, message: this team may not use the gateway}}}}
usage:
  batch_wait_s: 0.1
"""


@pytest.fixture(scope="module")
def providers():
    with FakeProvider(models=MODELS) as free, FakeProvider(models=MODELS) as paid:
        yield {"free": free, "paid": paid}


@pytest.fixture(scope="module")
def env(infra):
    return dict(os.environ, NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url, CLICKHOUSE_URL=infra.clickhouse_url)


@pytest.fixture(scope="module")
def stack(providers, env, tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("routing"), _config(providers["free"], providers["paid"]), env) as s:
        yield s


@pytest.fixture(autouse=True)
def _healthy(providers, infra):
    for p in providers.values():
        p.behaviour.reset()
        p.behaviour.models = list(MODELS)
    clear_router_health(infra.redis_url)


@pytest.fixture
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", api_key="k", max_retries=0)


def debug_router(stack) -> dict:
    state = httpx.get(f"http://127.0.0.1:{stack.ui_port}/debug/router", timeout=10,
                      headers=admin_headers(stack)).raise_for_status().json()
    return {p["id"]: p for p in state["providers"]} | {"_pinned": state["pinned"], "_smart": state["smart"]}


def served_by(client, model="flaky-model", **kw) -> tuple[str, int]:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "route me"}], **kw)
    return raw.headers["x-llmgw-provider"], int(raw.headers["x-llmgw-attempts"])


def test_exact_limit_across_two_router_replicas(stack, env, tmp_path):
    async def scenario():
        stop = asyncio.Event()
        settings = RouterSettings(**{k: env[k] for k in ("NATS_URL", "REDIS_URL")},
                                  LLMGW_CONFIG=str(stack.config_path), LLMGW_STATE_DIR=str(tmp_path))
        second_router = asyncio.create_task(serve_router(settings, stop))
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", api_key="k", max_retries=0,
                                    http_client=openai.DefaultAsyncHttpxClient(
                                        limits=httpx.Limits(max_connections=200), timeout=60))
        try:
            nc = await connect_nats(env["NATS_URL"], "test-routing-engine")
            try:  # both replicas in the queue group before the load
                await wait_service(nc, "router", count=2, endpoint="decide")
            finally:
                await nc.close()

            async def one(model):
                try:
                    raw = await client.chat.completions.with_raw_response.create(
                        model=model, messages=[{"role": "user", "content": "count me"}])
                    return raw.headers["x-llmgw-provider"]
                except openai.RateLimitError as exc:
                    assert exc.body["code"] == "rate_limit_exceeded" and "limit of 50 requests per minute" in exc.message
                    return "429"

            shared = Counter(await asyncio.gather(*(one("shared") for _ in range(200))))
            capped = Counter(await asyncio.gather(*(one("capped") for _ in range(200))))
            return shared, capped
        finally:
            await client.close()
            stop.set()
            await asyncio.wait_for(second_router, 15)

    shared, capped = asyncio.run(scenario())
    # the free provider takes exactly its limit, the paid one the overflow
    assert shared == {"free": 50, "paid": 150}
    # with nobody to overflow to, the rest get a 429 in OpenAI format
    assert capped == {"free": 50, "429": 150}
    windows = debug_router(stack)["free"]["models"]
    by_name = {m["name"]: m["windows"]["minute"] for m in windows}
    assert by_name["shared"]["requests"] == 50 and by_name["capped"]["requests"] == 50


def test_429_with_retry_after_moves_traffic_away_and_back(client, providers, stack):
    free = providers["free"].behaviour
    free.fail_status, free.retry_after = 429, 1
    assert served_by(client) == ("paid", 2)
    free.fail_status = None  # healthy again, but still cooling down
    wait_for(lambda: debug_router(stack)["free"]["cooldown_s"] > 0, timeout=5, interval=0.05)
    assert served_by(client) == ("paid", 1)
    wait_for(lambda: debug_router(stack)["free"]["cooldown_s"] == 0, timeout=10)
    assert served_by(client) == ("free", 1)


def test_circuit_breaker_opens_and_half_opens(client, providers, stack):
    free = providers["free"].behaviour
    free.fail_status = 500
    for _ in range(2):
        assert served_by(client) == ("paid", 3)  # free: a try and its retry (a 500), then paid
    wait_for(lambda: debug_router(stack)["free"]["breaker"] == "open", timeout=5, interval=0.05)
    # while open the free provider is not even tried
    requests_before = len(providers["free"].requests)
    raw = client.chat.completions.with_raw_response.create(
        model="flaky-model", messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-llmgw-provider"] == "paid" and "circuit breaker open" in raw.headers["x-llmgw-route-reason"]
    assert len(providers["free"].requests) == requests_before
    free.fail_status = None
    wait_for(lambda: debug_router(stack)["free"]["breaker"] == "half-open", timeout=10)
    assert served_by(client) == ("free", 1)  # the probe succeeds...
    wait_for(lambda: debug_router(stack)["free"]["breaker"] == "closed", timeout=5, interval=0.05)
    assert served_by(client) == ("free", 1)  # ...and the breaker is closed


def test_reservations_are_reconciled_with_real_usage(client, stack):
    def windows(provider):
        return {m["name"]: m["windows"]["minute"] for m in debug_router(stack)[provider]["models"]}["tokens-model"]

    before = windows("free")
    raw = client.chat.completions.with_raw_response.create(
        model="tokens-model", max_tokens=4000, messages=[{"role": "user", "content": "a short question"}])
    usage = raw.parse().usage
    # admission reserved ~4000 answer tokens; once the usage event lands only the real tokens remain
    final = wait_for(lambda: (w := windows("free"))["tokens"] - before["tokens"] == usage.total_tokens and w,
                     timeout=20)
    assert final["requests"] == before["requests"] + 1

    before_paid = windows("paid")
    raw = client.chat.completions.with_raw_response.create(
        model="paid/tokens-model", max_tokens=4000, messages=[{"role": "user", "content": "what does it cost"}])
    usage = raw.parse().usage
    expected = (usage.prompt_tokens * 100 + usage.completion_tokens * 300) / 1e6
    wait_for(lambda: abs(float(windows("paid")["cost_usd"]) - float(before_paid["cost_usd"]) - expected) < 1e-9,
             timeout=20)


def test_rule_rejects_in_openai_format(client):
    with pytest.raises(openai.PermissionDeniedError) as err:
        client.chat.completions.create(model="shared", messages=[{"role": "user", "content": "x"}],
                                       extra_headers={"x-team": "blocked"})
    assert err.value.body["code"] == "rejected_by_rule"


def test_chat_commands_pin_and_status(client, stack):
    def say(text, **kw):
        return client.chat.completions.create(model="anything", messages=[{"role": "user", "content": text}], **kw)

    assert "proxy-cli status" in say("proxy-cli help").choices[0].message.content
    assert "pinned paid" in say("proxy-cli use paid").choices[0].message.content
    assert debug_router(stack)["_pinned"] == "paid"
    assert served_by(client) == ("paid", 1)
    status = say("proxy-cli status").choices[0].message.content
    assert "pinned provider: paid" in status and "free:" in status
    assert "automatic" in say("proxy-cli use auto").choices[0].message.content
    assert served_by(client)[0] == "free"
    assert "smart routing is on" in say("proxy-cli smart on").choices[0].message.content
    assert "smart routing is off" in say("proxy-cli smart").choices[0].message.content
    assert "usage: proxy-cli smart [on|off]" in say("proxy-cli smart maybe").choices[0].message.content
    assert "smart routing: off" in say("proxy-cli status").choices[0].message.content  # "maybe" changed nothing
    assert "shared" in say("proxy-cli models").choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in say("proxy-cli help", stream=True))
    assert "proxy-cli use" in streamed
    assert "unknown provider" in say("proxy-cli use nobody").choices[0].message.content
    # the request log (ClickHouse, via the usage service) lists what was served above
    logs = wait_for(lambda: (t := say("proxy-cli logs 3").choices[0].message.content).startswith("last") and t)
    assert "via free" in logs or "via paid" in logs


def test_free_provider_takes_over_again_when_its_window_frees(env, tmp_path):
    """Done-when: free until its limit, paid for the overflow, free again once the window frees.
    The router's clock is moved forward instead of waiting a minute; Redis and Lua are real."""
    config = parse_config_text("""
providers:
  - id: free
    base_url: http://127.0.0.1:9/v1
    free_tier: true
    models: [{name: m, limits: {requests_per_minute: 3}}]
  - id: paid
    base_url: http://127.0.0.1:9/v1
    models: [{name: m, price: {input_per_mtok: 1, output_per_mtok: 1}}]
""")

    async def scenario():
        redis = connect_redis(env["REDIS_URL"])
        try:
            router = Router(config, RoutingStore(redis), WindowReader(redis))
            start = int(time.time() * 1000) + 3_600_000  # an hour ahead: nothing else is in that window
            clock = {"now": start}
            router.now_ms = lambda: clock["now"]
            served = []
            for i in range(5):
                d = await router.decide(RouteRequest(request_id=f"a{i}", model="m"))
                served.append(d.candidates[0].provider)
                clock["now"] += 1000
            skipped = [s.reason for s in d.skipped]
            # a request counts for 60 s and at most one 5-s bucket more: the first one (at start) is gone
            clock["now"] = start + 65_000
            d = await router.decide(RouteRequest(request_id="b", model="m"))
            return served, skipped, d.candidates[0].provider
        finally:
            for key in [k async for k in redis.scan_iter(redis_keys.WINDOW_PREFIX + "*free*")]:
                await redis.delete(key)
            await redis.aclose()

    served, skipped, after = asyncio.run(scenario())
    assert served == ["free", "free", "free", "paid", "paid"]
    assert any("requests_per_minute reached on model (3/3)" in r for r in skipped)
    assert after == "free"
