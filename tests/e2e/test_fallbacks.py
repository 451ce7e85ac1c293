"""Fallbacks on meaning and capability checks, end to end: a prompt too long for a model's window, an
upstream's own context-length error, a content-filter answer, requests that need images or tools.

Real NATS, Redis and chDB; the providers are the demo provider's OpenAI and Anthropic faces.
"""

from __future__ import annotations

import os

import anthropic
import httpx
import openai
import pytest

from admin import admin_headers
from fakes import FakeProvider
from stacks import running_stack, wait_for

pytestmark = pytest.mark.integration

SMALL_MODELS = ["gpt-128k", "gpt-guarded", "gpt-unguarded", "chat", "text-only", "deepseek-reasoner"]
BIG_MODELS = ["claude-200k", "claude-careful", "chat", "deepseek-reasoner"]
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def upstreams():
    with FakeProvider(models=SMALL_MODELS) as small, FakeProvider(models=BIG_MODELS) as big:
        yield small, big


@pytest.fixture(scope="module")
def stack(infra, upstreams, tmp_path_factory):
    small, big = upstreams
    config = f"""
version: 1
providers:
  - id: small                 # OpenAI face: a 128k model, text only, no tools
    base_url: {small.url}
    priority: 1
    models:
      - name: gpt-128k
        context_window: 128000
      - name: gpt-guarded
      - name: gpt-unguarded
      - name: chat
        capabilities: {{vision: false, tools: false}}
      - name: text-only
        capabilities: {{vision: false}}
      - name: reasoner        # the bundled price snapshot says: no tools
        upstream: deepseek-reasoner
  - id: big                   # Anthropic face: a 200k model that sees images and calls tools
    type: anthropic
    base_url: {big.anthropic_url}
    priority: 2
    models:
      - name: claude-200k
        context_window: 200000
      - name: claude-careful
      - name: chat
        capabilities: {{vision: true, tools: true}}
      - name: reasoner
        upstream: deepseek-reasoner
        capabilities: {{tools: true}}   # the config wins over the snapshot
routing:
  retry: {{attempts: 0}}
  fallbacks:
    context_window: {{gpt-128k: [claude-200k], claude-careful: [gpt-unguarded]}}
    content_filter: {{gpt-guarded: [claude-careful], claude-careful: [gpt-unguarded]}}
pricing:
  source_url: null            # the bundled snapshot, never the network
usage:
  batch_wait_s: 0.1
"""
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    env.update(REDIS_URL=infra.redis_url, CLICKHOUSE_URL=infra.clickhouse_url)
    with running_stack(tmp_path_factory.mktemp("fallbacks"), config, env) as s:
        yield s


@pytest.fixture(autouse=True)
def _fresh(upstreams):
    for up, models in zip(upstreams, (SMALL_MODELS, BIG_MODELS)):
        up.behaviour.reset()
        up.behaviour.models = list(models)


@pytest.fixture
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", api_key="k", max_retries=0)


def _prompt(tokens: int) -> str:
    # past 200k characters the edge estimates 4 characters a token (no tokenizer run): built and counted fast
    return "abc " * tokens


def _log(stack, request_id: str) -> dict:
    def row():
        rows = httpx.get(f"http://127.0.0.1:{stack.ui_port}/api/requests", headers=admin_headers(stack),
                         params={"request_id": request_id}, timeout=30).json()["rows"]
        return rows[0] if rows else None
    return wait_for(row, timeout=20)


def test_a_prompt_longer_than_the_window_goes_to_the_larger_window_fallback(stack, client, upstreams):
    small, big = upstreams
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-128k", max_tokens=1000, messages=[{"role": "user", "content": _prompt(150_000)}])
    assert raw.headers["x-llmgw-provider"] == "big" and raw.headers["x-llmgw-model"] == "claude-200k"
    assert raw.headers["x-llmgw-fallback"] == "context_window"
    reason = raw.headers["x-llmgw-route-reason"]
    assert "small skipped: prompt of ~150" in reason and "exceeds its context window of 128000 (model gpt-128k)" in reason
    assert "big: context window fallback from gpt-128k" in reason
    assert raw.parse().choices[0].message.content.startswith("Echo: abc")
    assert not small.requests and big.requests[-1]["body"]["model"] == "claude-200k"
    row = _log(stack, raw.headers["x-request-id"])
    assert (row["provider"], row["model"], row["status"]) == ("big", "claude-200k", 200)
    assert "context window fallback from gpt-128k" in row["route_reason"]


def test_a_prompt_no_model_can_hold_is_a_400_naming_the_window_and_the_estimate(client, upstreams):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="gpt-128k", max_tokens=1000,
                                       messages=[{"role": "user", "content": _prompt(250_000)}])
    assert err.value.code == "context_length_exceeded"
    assert "~250004 tokens plus 1000" in err.value.message
    assert "small context window of 128000 (model gpt-128k)" in err.value.message
    assert "big context window of 200000 (model claude-200k)" in err.value.message
    assert not upstreams[0].requests and not upstreams[1].requests


def test_an_upstream_context_length_error_triggers_the_same_fallback(client, upstreams):
    small, big = upstreams
    small.behaviour.context_window = 100  # the config does not know; the upstream says so itself
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-128k", messages=[{"role": "user", "content": "many words " * 100}])
    assert raw.headers["x-llmgw-provider"] == "big" and raw.headers["x-llmgw-fallback"] == "context_window"
    assert "small failed: context_length 400; falling back to claude-200k" in raw.headers["x-llmgw-route-reason"]
    assert len(small.requests) == 1 and big.requests[-1]["body"]["model"] == "claude-200k"
    # without a fallback the provider's own error is the client's answer, as it sent it
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="gpt-unguarded", messages=[{"role": "user", "content": "w " * 200}])
    assert err.value.code == "context_length_exceeded" and "maximum context length is 100" in err.value.message


def test_anthropics_prompt_is_too_long_triggers_the_fallback_too(stack, upstreams):
    small, big = upstreams
    big.behaviour.context_window = 50
    claude = anthropic.Anthropic(base_url=f"http://127.0.0.1:{stack.edge_port}", api_key="k", max_retries=0)
    raw = claude.messages.with_raw_response.create(model="claude-careful", max_tokens=100,
                                                   messages=[{"role": "user", "content": "word " * 80}])
    assert raw.headers["x-llmgw-provider"] == "small" and raw.headers["x-llmgw-fallback"] == "context_window"
    assert "big failed: context_length 400; falling back to gpt-unguarded" in raw.headers["x-llmgw-route-reason"]
    assert raw.parse().content[0].text.startswith("Echo: word")
    assert small.requests[-1]["body"]["model"] == "gpt-unguarded"


def test_a_content_filter_answer_fails_over_when_configured_and_not_when_not(stack, client, upstreams):
    small, big = upstreams
    small.behaviour.content_filter = True
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-guarded", messages=[{"role": "user", "content": "something borderline"}])
    answer = raw.parse().choices[0]
    assert answer.finish_reason == "stop" and answer.message.content == "Echo: something borderline"
    assert raw.headers["x-llmgw-provider"] == "big" and raw.headers["x-llmgw-fallback"] == "content_filter"
    assert raw.headers["x-llmgw-attempts"] == "2"
    assert "falling back to claude-careful (routing.fallbacks.content_filter)" in raw.headers["x-llmgw-route-reason"]
    row = _log(stack, raw.headers["x-request-id"])
    assert row["provider"] == "big" and "content_filter" in row["route_reason"]

    raw = client.chat.completions.with_raw_response.create(
        model="gpt-unguarded", messages=[{"role": "user", "content": "something borderline"}])
    assert raw.parse().choices[0].finish_reason == "content_filter"
    assert raw.headers["x-llmgw-provider"] == "small" and "x-llmgw-fallback" not in raw.headers

    # Anthropic's refusal, to an Anthropic client (a pass-through answer): the same
    big.behaviour.content_filter, small.behaviour.content_filter = True, False
    claude = anthropic.Anthropic(base_url=f"http://127.0.0.1:{stack.edge_port}", api_key="k", max_retries=0)
    raw = claude.messages.with_raw_response.create(model="claude-careful", max_tokens=100,
                                                   messages=[{"role": "user", "content": "borderline"}])
    assert raw.headers["x-llmgw-provider"] == "small" and raw.headers["x-llmgw-fallback"] == "content_filter"
    assert raw.parse().stop_reason == "end_turn" and raw.parse().content[0].text == "Echo: borderline"
    small.behaviour.content_filter = True

    # a stream commits with its first event: a content_filter finish after it is the client's to see
    with client.chat.completions.with_streaming_response.create(
            model="gpt-guarded", stream=True, messages=[{"role": "user", "content": "borderline"}]) as stream:
        assert stream.headers["x-llmgw-provider"] == "small" and "x-llmgw-fallback" not in stream.headers
        finishes = [c.choices[0].finish_reason for c in stream.parse() if c.choices]
    assert finishes[-1] == "content_filter"


def test_an_image_request_skips_a_text_only_provider(client, upstreams):
    small, big = upstreams
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=[
        {"role": "user", "content": [{"type": "text", "text": "what is this?"}, IMAGE]}])
    assert raw.headers["x-llmgw-provider"] == "big"
    assert "small skipped: lacks vision (model chat)" in raw.headers["x-llmgw-route-reason"]
    assert not small.requests
    # a text request still goes to the first in priority (the plan made for images is not reused for it)
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-llmgw-provider"] == "small"


def test_a_tool_calling_request_skips_a_provider_without_tools(stack, upstreams):
    small, big = upstreams
    claude = anthropic.Anthropic(base_url=f"http://127.0.0.1:{stack.edge_port}", api_key="k", max_retries=0)
    raw = claude.messages.with_raw_response.create(
        model="chat", max_tokens=100, messages=[{"role": "user", "content": "look it up"}],
        tools=[{"name": "lookup", "input_schema": {"type": "object", "properties": {}}}])
    assert raw.headers["x-llmgw-provider"] == "big"
    assert "small skipped: lacks tools (model chat)" in raw.headers["x-llmgw-route-reason"]
    assert raw.parse().stop_reason == "tool_use"
    assert not small.requests


def test_capabilities_come_from_the_price_snapshot_and_the_config_overrides_them(client, upstreams):
    small, big = upstreams

    def served_by() -> str | None:
        raw = client.chat.completions.with_raw_response.create(
            model="reasoner", tools=[TOOL], messages=[{"role": "user", "content": "call it"}])
        # the router learns the snapshot's capabilities from the pricing service once both are up
        return raw.headers["x-llmgw-route-reason"] if raw.headers["x-llmgw-provider"] == "big" else None

    assert "small skipped: lacks tools (model reasoner)" in wait_for(served_by, timeout=20)
    raw = client.chat.completions.with_raw_response.create(model="reasoner",
                                                           messages=[{"role": "user", "content": "no tools"}])
    assert raw.headers["x-llmgw-provider"] == "small"


def test_a_request_no_provider_can_serve_is_a_400_naming_the_capability(client, upstreams):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="text-only", messages=[
            {"role": "user", "content": [{"type": "text", "text": "and this?"}, IMAGE]}])
    assert err.value.code == "capability_not_supported"
    assert "supports vision" in err.value.message and "small lacks vision" in err.value.message
    # a capability nobody declared is assumed (permissive): tools on text-only still go through
    reply = client.chat.completions.create(model="text-only", tools=[TOOL],
                                           messages=[{"role": "user", "content": "call it"}])
    assert reply.choices[0].finish_reason == "tool_calls"
    assert not upstreams[1].requests
