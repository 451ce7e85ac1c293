"""End to end: the official openai SDK against the whole stack (real NATS, Redis, chDB),
with fake upstream providers that speak the OpenAI wire format."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import openai
import pytest

from admin import admin_client
from fake_secrets import fake_key
from fakes import FakeProvider
from stacks import clear_router_health, running_stack, wait_for

pytestmark = pytest.mark.integration

SECRET = fake_key()


def _config(flaky: FakeProvider, good: FakeProvider, solo: FakeProvider) -> str:
    return f"""
version: 1
providers:
  - id: flaky
    base_url: {flaky.url}
    free_tier: true
    priority: 1
    models:
      - name: gpt-test
        upstream: flaky-gpt
  - id: good
    base_url: {good.url}
    api_key: {SECRET}
    priority: 5
    models:
      - name: gpt-test
        upstream: good-gpt
        price: {{input_per_mtok: 1.5, output_per_mtok: 2}}
  - id: solo
    base_url: {solo.url}
    api_key: ${{LLMGW_TEST_SOLO_KEY}}
    free_tier: true
    limits: {{requests_per_minute: 1000}}
    models:
      - name: solo-model
      - name: limited-model
        limits: {{requests_per_minute: 2}}
  - id: overflow
    base_url: {good.url}
    priority: 50
    models:
      - name: limited-model
        upstream: good-gpt
        price: {{input_per_mtok: 3, output_per_mtok: 4}}
routing:
  aliases: {{best: solo-model}}
usage:
  batch_wait_s: 0.1
"""


@pytest.fixture(scope="module")
def upstreams():
    with FakeProvider(models=["flaky-gpt"]) as flaky, FakeProvider(models=["good-gpt"]) as good, \
            FakeProvider(models=["solo-model", "limited-model"]) as solo:
        yield {"flaky": flaky, "good": good, "solo": solo}


@pytest.fixture(scope="module")
def stack(infra, upstreams, tmp_path_factory):
    env = dict(os.environ, NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url,
               CLICKHOUSE_URL=infra.clickhouse_url, LLMGW_TEST_SOLO_KEY="solo-key-from-env")
    config = _config(upstreams["flaky"], upstreams["good"], upstreams["solo"])
    with running_stack(tmp_path_factory.mktemp("stack"), config, env) as s:
        yield s


@pytest.fixture
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", api_key="client-key", max_retries=0)


@pytest.fixture
def ui(stack) -> httpx.Client:
    with admin_client(stack) as c:
        yield c


@pytest.fixture(autouse=True)
def _reset(upstreams, infra):
    for u in upstreams.values():
        u.behaviour.fail_status = None
        u.behaviour.fail_times = None
        u.behaviour.die_after_chunks = None
        u.behaviour.retry_after = None
    clear_router_health(infra.redis_url)
    yield


def history_totals(ui: httpx.Client, **filters) -> dict:
    rows = ui.get("/api/usage/history", params=filters).raise_for_status().json()["rows"]
    return {k: sum(r[k] for r in rows) for k in ("requests", "errors", "tokens_in", "tokens_out")} | {
        "cost_usd": sum(float(r["cost_usd"]) for r in rows)}


def current(ui: httpx.Client, scope: str, provider: str, model: str | None = None) -> dict:
    for s in ui.get("/api/usage/current").raise_for_status().json()["scopes"]:
        if s["scope"] == scope and s["provider"] == provider and s["model"] == model:
            return s["windows"]
    return {"minute": {"requests": 0, "tokens_in": 0, "tokens_out": 0}}


def test_plain_completion_is_served_and_counted(client, ui, upstreams):
    before = current(ui, "provider", "solo")["minute"]["requests"]
    raw = client.chat.completions.with_raw_response.create(
        model="solo-model", messages=[{"role": "user", "content": "hello gateway"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "Echo: hello gateway"
    assert raw.headers["x-llmgw-provider"] == "solo"
    assert raw.headers["x-llmgw-attempts"] == "1"
    sent = upstreams["solo"].requests[-1]
    assert sent["body"]["model"] == "solo-model"
    # the ${ENV} reference was resolved by the edge, and only there
    assert sent["headers"]["authorization"] == "Bearer solo-key-from-env"

    usage = completion.usage
    wait_for(lambda: current(ui, "provider", "solo")["minute"]["requests"] == before + 1)
    windows = current(ui, "model", "solo", "solo-model")
    assert windows["minute"]["tokens_out"] >= usage.completion_tokens
    totals = wait_for(lambda: (t := history_totals(ui, provider="solo", model="solo-model"))["requests"] and t)
    assert totals["tokens_in"] >= usage.prompt_tokens


def test_alias_routes_to_its_target(client, ui):
    before = history_totals(ui, provider="solo", model="solo-model")["requests"]
    raw = client.chat.completions.with_raw_response.create(
        model="best", messages=[{"role": "user", "content": "via alias"}])
    assert raw.headers["x-llmgw-provider"] == "solo"
    assert raw.parse().choices[0].message.content == "Echo: via alias"
    # counted under the model it was served by; waiting for it also keeps it out of the next test's counts
    wait_for(lambda: history_totals(ui, provider="solo", model="solo-model")["requests"] == before + 1)


def test_streaming_without_usage_request_is_still_counted(client, ui, upstreams):
    before = history_totals(ui, provider="solo", model="solo-model")
    stream = client.chat.completions.create(
        model="solo-model", stream=True, messages=[{"role": "user", "content": "one two three four"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: one two three four"
    # the client did not ask for usage: it must not see the usage chunk...
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    # ...but the gateway asked the upstream for it
    assert upstreams["solo"].requests[-1]["body"]["stream_options"] == {"include_usage": True}
    after = wait_for(lambda: (t := history_totals(ui, provider="solo", model="solo-model"))["requests"]
                     == before["requests"] + 1 and t)
    assert after["tokens_out"] > before["tokens_out"]


def test_streaming_with_usage_request_passes_usage_through(client):
    stream = client.chat.completions.create(
        model="solo-model", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "count me"}])
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_unknown_model_is_404_in_openai_format(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 404
    assert err.value.body["code"] == "model_not_found"


def test_bad_body_is_400_in_openai_format(client, stack):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="solo-model", messages=[])
    assert err.value.body["param"] == "messages"
    r = httpx.post(f"http://127.0.0.1:{stack.edge_port}/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_failover_when_first_provider_answers_500(client, ui, upstreams):
    upstreams["flaky"].behaviour.fail_status = 500
    before = history_totals(ui, provider="good")
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "fail over please"}])
    assert raw.headers["x-llmgw-provider"] == "good"
    assert raw.headers["x-llmgw-attempts"] == "3"  # flaky: a try and its retry (a 500), then good
    assert upstreams["good"].requests[-1]["body"]["model"] == "good-gpt"
    usage = raw.parse().usage
    after = wait_for(lambda: (t := history_totals(ui, provider="good"))["requests"] == before["requests"] + 1 and t)
    # cost is exact: 1.5 $/Mtok in, 2 $/Mtok out
    expected = (usage.prompt_tokens * 1.5 + usage.completion_tokens * 2) / 1e6
    assert after["cost_usd"] - before["cost_usd"] == pytest.approx(expected, abs=1e-9)


def test_free_provider_is_preferred_when_healthy(client):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "free first"}])
    assert raw.headers["x-llmgw-provider"] == "flaky"


def test_stream_fails_over_before_first_byte(client, upstreams):
    upstreams["flaky"].behaviour.fail_status = 503
    stream = client.chat.completions.with_raw_response.create(
        model="gpt-test", stream=True, messages=[{"role": "user", "content": "stream over"}])
    assert stream.headers["x-llmgw-provider"] == "good"
    text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    assert text == "Echo: stream over"


def test_stream_broken_after_first_byte_ends_with_an_error(client, upstreams):
    upstreams["flaky"].behaviour.die_after_chunks = 1
    stream = client.chat.completions.create(
        model="gpt-test", stream=True, messages=[{"role": "user", "content": "a b c d e f g h"}])
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def test_every_provider_failing_gives_502(client, upstreams):
    upstreams["flaky"].behaviour.fail_status = 500
    upstreams["good"].behaviour.fail_status = 503
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 502
    assert "flaky" in err.value.message and "good" in err.value.message


def test_every_provider_rate_limited_gives_429(client, upstreams):
    upstreams["flaky"].behaviour.fail_status = 429
    upstreams["good"].behaviour.fail_status = 429
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "x"}])


def test_requests_per_minute_limit_overflows_to_next_provider(client, ui):
    served = []
    for i in range(4):
        raw = client.chat.completions.with_raw_response.create(
            model="limited-model", messages=[{"role": "user", "content": f"n{i}"}])
        served.append(raw.headers["x-llmgw-provider"])
        if i == 1:  # the windows are a projection of usage events: let them land
            wait_for(lambda: current(ui, "model", "solo", "limited-model")["minute"]["requests"] >= 2)
    assert served[:2] == ["solo", "solo"]
    assert served[2:] == ["overflow", "overflow"]


def test_models_lists_logical_alias_and_qualified_names(client):
    ids = {m.id for m in client.models.list()}
    assert {"gpt-test", "solo-model", "best", "flaky/gpt-test", "good/gpt-test", "solo/solo-model"} <= ids


def test_provider_qualified_model_targets_that_provider(client):
    raw = client.chat.completions.with_raw_response.create(
        model="good/gpt-test", messages=[{"role": "user", "content": "direct"}])
    assert raw.headers["x-llmgw-provider"] == "good"


def test_config_api_masks_secrets_and_logs_never_show_them(ui, stack):
    body = ui.get("/api/config").raise_for_status().text
    assert SECRET not in body
    providers = {p["id"]: p for p in ui.get("/api/config").json()["config"]["providers"]}
    assert providers["good"]["api_key"] == "********"
    assert providers["solo"]["api_key"] == "${LLMGW_TEST_SOLO_KEY}"
    log = Path(stack.log.name).read_text()
    assert SECRET not in log and "solo-key-from-env" not in log


def test_health_endpoints(stack):
    assert httpx.get(f"http://127.0.0.1:{stack.edge_port}/healthz").json()["status"] == "ok"
    assert httpx.get(f"http://127.0.0.1:{stack.ui_port}/healthz").json()["status"] == "ok"
