"""Every client format x every provider type, through the whole stack (real NATS, Redis, chDB).

Clients are the official SDKs: ``openai`` (chat, responses, embeddings) and
``anthropic`` (messages). Upstreams are the demo provider's real-wire faces
(OpenAI, Anthropic, Gemini), the demo provider behind a fake GitHub token
exchange (Copilot), and fake ``claude`` / ``gemini`` executables printing the
CLIs' real stream-json (the CLI providers). Each cell: plain and stream, with a
tool call where the provider can take client tools, answered in the client's
own format, and its usage event in the request log.
"""

from __future__ import annotations

import json
import os

import anthropic
import httpx
import openai
import pytest

from admin import admin_headers
from fakes import GITHUB_TOKEN, FakeGitHub, FakeProvider
from stacks import clear_router_health, running_stack, wait_for

pytestmark = pytest.mark.integration

UPSTREAM_TYPES = ["openai", "anthropic", "gemini", "copilot"]  # they take client tools
CLI_TYPES = ["claude_code", "gemini_cli"]  # they answer in text only (a CLI runs its own tools, not the client's)
FAKE_CLI = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fake_cli")
TOOL_OPENAI = {"type": "function", "function": {"name": "lookup", "description": "look a word up",
                                                "parameters": {"type": "object",
                                                               "properties": {"input": {"type": "string"}}}}}
TOOL_ANTHROPIC = {"name": "lookup", "description": "look a word up",
                  "input_schema": {"type": "object", "properties": {"input": {"type": "string"}}}}
TOOL_RESPONSES = {"type": "function", "name": "lookup", "description": "look a word up",
                  "parameters": {"type": "object", "properties": {"input": {"type": "string"}}}}


def _config(up: dict) -> str:
    return f"""
version: 1
providers:
  - id: p-openai
    type: openai
    base_url: {up['openai'].url}
    models:
      - name: m-openai
        upstream: up-model
        price: {{input_per_mtok: 1, output_per_mtok: 2, cached_input_per_mtok: 0.5}}
      - name: e-openai
        upstream: up-embed
  - id: p-anthropic
    type: anthropic
    base_url: {up['anthropic'].origin}
    api_key: ${{LLMGW_TEST_ANTHROPIC_KEY}}
    models:
      - name: m-anthropic
        upstream: up-model
        price: {{input_per_mtok: 3, output_per_mtok: 15, cached_input_per_mtok: 0.3, cache_write_per_mtok: 3.75}}
  - id: p-gemini
    type: gemini
    base_url: {up['gemini'].origin}/v1beta
    api_key: gemini-test-key
    models:
      - name: m-gemini
        upstream: up-model
  - id: p-copilot
    type: copilot
    api_key: {GITHUB_TOKEN}
    models:
      - name: m-copilot
        upstream: up-model
  - id: p-claude_code
    type: claude_code
    command: [{FAKE_CLI}/claude]
    max_concurrency: 2
    models:
      - name: m-claude_code
        upstream: sonnet
  - id: p-gemini_cli
    type: gemini_cli
    command: [{FAKE_CLI}/gemini]
    models:
      - name: m-gemini_cli
        upstream: gemini-2.5-flash
routing:
  retry: {{attempts: 0}}
usage:
  batch_wait_s: 0.1
"""


@pytest.fixture(scope="module")
def upstreams():
    github = FakeGitHub().start()
    try:
        with FakeProvider(models=["up-model", "up-embed"]) as o, \
                FakeProvider(models=["up-model"], api_key="anthropic-upstream-key") as a, \
                FakeProvider(models=["up-model"], api_key="gemini-test-key") as g, \
                FakeProvider(models=["up-model"]) as c:
            github.api = c.url  # the Copilot API the token exchange points at
            yield {"openai": o, "anthropic": a, "gemini": g, "copilot": c, "github": github}
    finally:
        github.stop()


@pytest.fixture(scope="module")
def stack(infra, upstreams, tmp_path_factory):
    env = dict(os.environ, NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url, CLICKHOUSE_URL=infra.clickhouse_url,
               LLMGW_TEST_ANTHROPIC_KEY="anthropic-upstream-key", LLMGW_GITHUB_API_URL=upstreams["github"].origin)
    for name in [n for n in env if n.startswith("FAKE_CLI_")]:
        del env[name]
    with running_stack(tmp_path_factory.mktemp("formats"), _config(upstreams), env) as s:
        yield s


@pytest.fixture(autouse=True)
def _reset(upstreams, infra):
    for u in upstreams.values():
        if not isinstance(u, FakeProvider):
            continue
        b = u.behaviour
        b.fail_status = b.fail_times = b.retry_after = None
        b.cache_read_tokens = b.cache_write_tokens = b.cached_tokens = b.reasoning_tokens = 0
    clear_router_health(infra.redis_url)
    yield


@pytest.fixture
def base(stack) -> str:
    return f"http://127.0.0.1:{stack.edge_port}"


@pytest.fixture
def oai(base) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="client-key", max_retries=0)


@pytest.fixture
def claude(base) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base, api_key="client-key", max_retries=0)


def logged(stack, request_id: str) -> dict:
    """The request's usage event, once the usage service has stored it."""
    def row():
        r = httpx.get(f"http://127.0.0.1:{stack.ui_port}/api/requests", params={"request_id": request_id},
                      headers=admin_headers(stack))
        rows = r.raise_for_status().json()["rows"]
        return rows[0] if rows else None
    return wait_for(row, timeout=30)


# ---- the matrix -------------------------------------------------------------------------

@pytest.mark.parametrize("upstream", UPSTREAM_TYPES)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_openai_chat_client(oai, stack, upstream, stream):
    kwargs = dict(model=f"m-{upstream}", tools=[TOOL_OPENAI], max_tokens=50,
                  messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "find gateway"}])
    if not stream:
        raw = oai.chat.completions.with_raw_response.create(**kwargs)
        reply = raw.parse()
        call = reply.choices[0].message.tool_calls[0]
        assert reply.choices[0].finish_reason == "tool_calls"
        name, args, request_id = call.function.name, call.function.arguments, raw.headers["x-request-id"]
        tokens_out = reply.usage.completion_tokens
    else:
        with oai.chat.completions.with_streaming_response.create(
                stream=True, stream_options={"include_usage": True}, **kwargs) as raw:
            request_id = raw.headers["x-request-id"]
            chunks = list(raw.parse())
        deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        name = next(d.function.name for d in deltas if d.function and d.function.name)
        args = "".join(d.function.arguments or "" for d in deltas if d.function)
        assert any(c.choices and c.choices[0].finish_reason == "tool_calls" for c in chunks)
        tokens_out = chunks[-1].usage.completion_tokens
    assert name == "lookup" and json.loads(args) == {"input": "find gateway"}
    row = logged(stack, request_id)
    assert row["provider"] == f"p-{upstream}" and row["status"] == 200 and row["stream"] == stream
    assert row["tokens_in"] > 0 and row["tokens_out"] == tokens_out and row["endpoint"] == "chat.completions"


@pytest.mark.parametrize("upstream", UPSTREAM_TYPES)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_anthropic_messages_client(claude, stack, upstream, stream):
    kwargs = dict(model=f"m-{upstream}", max_tokens=50, system="be brief", tools=[TOOL_ANTHROPIC],
                  messages=[{"role": "user", "content": "find gateway"}])
    if not stream:
        raw = claude.messages.with_raw_response.create(**kwargs)
        message = raw.parse()
        request_id = raw.headers["x-request-id"]
    else:
        with claude.messages.stream(**kwargs) as s:
            kinds = [event.type for event in s]
            message = s.get_final_message()
            request_id = s.response.headers["x-request-id"]
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    tool = next(b for b in message.content if b.type == "tool_use")
    assert tool.name == "lookup" and tool.input == {"input": "find gateway"}
    assert message.stop_reason == "tool_use"
    row = logged(stack, request_id)
    assert row["provider"] == f"p-{upstream}" and row["status"] == 200 and row["endpoint"] == "messages"
    assert row["tokens_out"] == message.usage.output_tokens and row["tokens_in"] > 0


@pytest.mark.parametrize("upstream", UPSTREAM_TYPES)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_openai_responses_client(oai, stack, upstream, stream):
    kwargs = dict(model=f"m-{upstream}", instructions="be brief", input="find gateway", tools=[TOOL_RESPONSES])
    if not stream:
        raw = oai.responses.with_raw_response.create(**kwargs)
        response = raw.parse()
        request_id = raw.headers["x-request-id"]
    else:
        with oai.responses.with_streaming_response.create(stream=True, **kwargs) as raw:
            request_id = raw.headers["x-request-id"]
            events = list(raw.parse())
        kinds = [event.type for event in events]
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        response = events[-1].response
    call = next(item for item in response.output if item.type == "function_call")
    assert call.name == "lookup" and json.loads(call.arguments) == {"input": "find gateway"}
    row = logged(stack, request_id)
    assert row["provider"] == f"p-{upstream}" and row["status"] == 200 and row["endpoint"] == "responses"
    assert row["tokens_out"] == response.usage.output_tokens


@pytest.mark.parametrize("upstream", CLI_TYPES)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("client", ["openai_chat", "anthropic_messages", "openai_responses"])
def test_cli_providers_answer_every_format(oai, claude, stack, client, upstream, stream):
    model, prompt = f"m-{upstream}", [{"role": "user", "content": "say hello"}]
    if client == "openai_chat":
        if stream:
            with oai.chat.completions.with_streaming_response.create(
                    model=model, messages=prompt, stream=True, stream_options={"include_usage": True}) as raw:
                request_id, chunks = raw.headers["x-request-id"], list(raw.parse())
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            tokens_out = chunks[-1].usage.completion_tokens
        else:
            raw = oai.chat.completions.with_raw_response.create(model=model, messages=prompt)
            request_id, reply = raw.headers["x-request-id"], raw.parse()
            text, tokens_out = reply.choices[0].message.content, reply.usage.completion_tokens
    elif client == "anthropic_messages":
        if stream:
            with claude.messages.stream(model=model, max_tokens=50, messages=prompt) as s:
                text = "".join(s.text_stream)
                message = s.get_final_message()
                request_id = s.response.headers["x-request-id"]  # httpx response of the stream
        else:
            raw = claude.messages.with_raw_response.create(model=model, max_tokens=50, messages=prompt)
            request_id, message = raw.headers["x-request-id"], raw.parse()
            text = message.content[0].text
        tokens_out = message.usage.output_tokens
    else:
        if stream:
            with oai.responses.with_streaming_response.create(model=model, input="say hello", stream=True) as raw:
                request_id, events = raw.headers["x-request-id"], list(raw.parse())
            response = events[-1].response
        else:
            raw = oai.responses.with_raw_response.create(model=model, input="say hello")
            request_id, response = raw.headers["x-request-id"], raw.parse()
        text, tokens_out = response.output_text, response.usage.output_tokens
    assert text == "Hello from the fake CLI."
    row = logged(stack, request_id)
    assert row["provider"] == f"p-{upstream}" and row["status"] == 200 and row["tokens_out"] == tokens_out > 0
    assert float(row["cost_usd"]) == 0  # a subscription: no marginal cost


def test_cli_provider_with_client_tools_is_refused_clearly(oai):
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="m-claude_code", tools=[TOOL_OPENAI],
                                    messages=[{"role": "user", "content": "x"}])
    assert "tool" in err.value.message.lower()


# ---- around the matrix --------------------------------------------------------------------

def test_claude_code_style_stream_to_anthropic_is_relayed_with_betas(claude, stack, upstreams):
    """Claude Code: x-api-key, anthropic-beta, tools, stream; the upstream's events come back as sent."""
    betas = "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"
    body = {"model": "m-anthropic", "max_tokens": 2000, "stream": True, "tools": [TOOL_ANTHROPIC],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "find gateway"}]}]}
    headers = {"x-api-key": "client-key", "anthropic-version": "2023-06-01", "anthropic-beta": betas,
               "content-type": "application/json"}
    with httpx.stream("POST", f"http://127.0.0.1:{stack.edge_port}/v1/messages", json=body, headers=headers,
                      timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        relayed = r.read()
    sent = upstreams["anthropic"].requests[-1]
    assert sent["headers"]["anthropic-beta"] == betas and sent["headers"]["anthropic-version"] == "2023-06-01"
    assert sent["headers"]["x-api-key"] == "anthropic-upstream-key"  # the provider's key, not the client's
    assert sent["body"]["system"] == body["system"] and sent["body"]["model"] == "up-model"
    # the same request straight to the upstream gives the same events, in the same order and framing
    direct = httpx.post(upstreams["anthropic"].origin + "/v1/messages", json={**body, "model": "up-model"},
                        headers={**headers, "x-api-key": "anthropic-upstream-key"}, timeout=30).content
    assert _shape(relayed) == _shape(direct)
    assert b"event: content_block_delta\ndata: " in relayed and b'"thinking_delta"' in relayed


def _shape(body: bytes) -> list:
    """Event names and data with ids (random per answer) blanked."""
    out = []
    for frame in body.decode().strip().split("\n\n"):
        name, data = frame.split("\n", 1)
        obj = json.loads(data[6:])
        for holder in (obj, obj.get("message") or {}, obj.get("content_block") or {}):
            for key in ("id", "signature"):
                if key in holder:
                    holder[key] = "*"
        if obj.get("delta", {}).get("type") == "signature_delta":
            obj["delta"]["signature"] = "*"
        out.append((name, obj))
    return out


def test_anthropic_cache_tokens_are_counted_and_priced(claude, stack, upstreams):
    upstreams["anthropic"].behaviour.cache_read_tokens = 3
    upstreams["anthropic"].behaviour.cache_write_tokens = 2
    raw = claude.messages.with_raw_response.create(
        model="m-anthropic", max_tokens=20,
        messages=[{"role": "user", "content": "a long prompt that was cached before this one arrived"}])
    usage = raw.parse().usage
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (3, 2)
    row = logged(stack, raw.headers["x-request-id"])
    assert row["tokens_cached"] == 3 and row["tokens_cache_write"] == 2
    assert row["tokens_in"] == usage.input_tokens + 5
    expected = (usage.input_tokens * 3 + 3 * 0.3 + 2 * 3.75 + usage.output_tokens * 15) / 1e6
    assert float(row["cost_usd"]) == pytest.approx(expected, abs=1e-9)


def test_anthropic_errors_come_in_anthropic_format(claude):
    with pytest.raises(anthropic.NotFoundError) as err:
        claude.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(model="m-anthropic", max_tokens=5, messages=[])
    assert err.value.body["error"]["type"] == "invalid_request_error"


def test_anthropic_overloaded_upstream_gives_an_anthropic_error(claude, upstreams):
    upstreams["anthropic"].behaviour.fail_status = 529
    with pytest.raises(anthropic.APIStatusError) as err:
        claude.messages.create(model="m-anthropic", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code in (502, 529) and err.value.body["type"] == "error"


def test_count_tokens(claude, upstreams):
    counted = claude.messages.count_tokens(model="m-anthropic", messages=[{"role": "user", "content": "one two"}])
    assert counted.input_tokens > 0
    assert upstreams["anthropic"].requests[-1]["path"] == "/v1/messages/count_tokens"
    estimated = claude.messages.count_tokens(model="m-openai", messages=[{"role": "user", "content": "one two"}])
    assert estimated.input_tokens > 0


def test_embeddings_are_routed_and_counted(oai, stack):
    raw = oai.embeddings.with_raw_response.create(model="e-openai", input=["one two three", "four"])
    result = raw.parse()
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    row = logged(stack, raw.headers["x-request-id"])
    assert row["endpoint"] == "embeddings" and row["tokens_in"] == result.usage.prompt_tokens


def test_models_retrieve_every_listed_model(oai):
    listed = [m.id for m in oai.models.list()]
    assert {"m-openai", "m-anthropic", "p-gemini/m-gemini"} <= set(listed)
    for model_id in listed:
        assert oai.models.retrieve(model_id).id == model_id
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-model")


def test_provider_pass_through(base, stack, upstreams):
    r = httpx.post(f"{base}/p-openai/v1/chat/completions", timeout=30,
                   json={"model": "up-model", "messages": [{"role": "user", "content": "raw call"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Echo: raw call"
    models = httpx.get(f"{base}/p-openai/v1/models", timeout=30)
    assert models.status_code == 200 and models.json()["data"][0]["id"] == "up-model"
    assert httpx.get(f"{base}/nobody/v1/models").status_code == 404
