"""The edge core in-process: admit -> send -> retry / fail over -> account, across formats.

No subprocesses, no sockets: a fake router (tests/edge_fakes.py), providers on
a mock transport, and the real codecs. Every translated answer is checked
with the official SDKs' own types.
"""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import anthropic
import openai
import pytest
from pydantic import TypeAdapter

from edge_fakes import Events, FakeRouter, MockResponse, MockTransport, named_sse, sse
from llmgw_common.config import GatewayConfig, parse_config
from llmgw_common.failures import FailureKind
from llmgw_edge.api.anthropic_messages import AnthropicCodec, CountTokensCodec
from llmgw_edge.api.embeddings import EmbeddingsCodec
from llmgw_edge.api.openai_chat import OpenAIChatCodec
from llmgw_edge.commands import command_runner
from llmgw_edge.core.errors import GatewayError, UpstreamError
from llmgw_edge.core.gateway import Deps, Gateway
from llmgw_edge.providers import build_provider


def config(*providers: dict, **routing) -> GatewayConfig:
    return parse_config({"providers": list(providers),
                         "routing": {"retry": {"attempts": 1, "base_delay_s": 0, "max_delay_s": 0}, **routing}})


def openai_provider(pid: str, models=("m",), **extra) -> dict:
    return {"id": pid, "type": "openai", "base_url": f"http://{pid}.test/v1", "api_key": f"key-{pid}",
            "models": [{"name": m} for m in models], **extra}


def anthropic_provider(pid: str, models=("m",), **extra) -> dict:
    return {"id": pid, "type": "anthropic", "base_url": f"http://{pid}.test", "api_key": f"key-{pid}",
            "models": [{"name": m, "upstream": f"claude-{m}"} for m in models], **extra}


class Harness:
    def __init__(self, cfg: GatewayConfig, handler):
        self.transport = MockTransport(handler)
        self.router = FakeRouter(cfg)
        self.events = Events()
        providers = {p.id: build_provider(p, self.transport, Path("/tmp")) for p in cfg.providers}
        self.gateway = Gateway(Deps(config=cfg, providers=providers,
                                    decide=self.router.decide, report=self.router.report, publish=self.events))

    async def openai(self, body: dict, headers: dict | None = None):
        codec = OpenAIChatCodec()
        return await self.gateway.handle(codec.parse(json.dumps(body).encode(), headers or {}), codec)

    async def anthropic(self, body: dict, headers: dict | None = None):
        codec = AnthropicCodec()
        return await self.gateway.handle(codec.parse(json.dumps(body).encode(),
                                                     headers or {"anthropic-version": "2023-06-01"}), codec)


async def collect(reply) -> bytes:
    return b"".join([piece async for piece in reply.stream])


def chat_completion(text="hi", usage=None, **message) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, **message},
                         "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
            "usage": usage or {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}


def anthropic_message(blocks=None, usage=None, stop="end_turn") -> dict:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-m",
            "content": blocks or [{"type": "text", "text": "hello"}], "stop_reason": stop, "stop_sequence": None,
            "usage": usage or {"input_tokens": 7, "output_tokens": 4}}


USER = [{"role": "user", "content": "hello"}]


# ---- pass-through, retries, fail-over ---------------------------------------------------

async def test_same_format_passes_the_body_through_and_counts_it():
    h = Harness(config(openai_provider("a")), lambda req: MockResponse(json=chat_completion()))
    reply = await h.openai({"model": "m", "messages": USER, "logit_bias": {"1": 2}, "x_vendor": True})
    sent = h.transport.requests[0]
    assert sent.url == "http://a.test/v1/chat/completions" and sent.headers["authorization"] == "Bearer key-a"
    assert sent.json()["logit_bias"] == {"1": 2} and sent.json()["x_vendor"] is True  # unknown fields kept
    assert reply.status == 200 and json.loads(reply.body)["choices"][0]["message"]["content"] == "hi"
    assert reply.headers["x-llmgw-provider"] == "a" and reply.headers["x-llmgw-attempts"] == "1"
    (event,) = h.events
    assert (event.tokens_in, event.tokens_out, event.status, event.endpoint) == (10, 3, 200, "chat.completions")


async def test_a_body_the_relay_leaves_as_it_is_goes_upstream_byte_for_byte():
    h = Harness(config(openai_provider("a")), lambda req: MockResponse(json=chat_completion()))
    raw = b'{ "model": "m",\n  "messages": [{"role": "user", "content": "h\\u00e9llo"}], "x_vendor": 1.50 }'
    codec = OpenAIChatCodec()
    await h.gateway.handle(codec.parse(raw, {}), codec)
    assert h.transport.requests[0].body == raw  # the upstream's own model name: nothing to rewrite
    # a stream gets stream_options added: encoded again, the client's fields kept
    streamed = b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    h.transport.handler = lambda req: MockResponse(chunks=sse(chat_completion(), done=True))
    await collect(await h.gateway.handle(codec.parse(streamed, {}), codec))
    sent = h.transport.requests[1].json()
    assert sent["stream_options"] == {"include_usage": True} and h.transport.requests[1].body != streamed
    # the model rewritten to the upstream's name (claude-m): encoded again
    h = Harness(config(anthropic_provider("c")), lambda req: MockResponse(json=anthropic_message()))
    anthropic = AnthropicCodec()
    raw = b'{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}'
    await h.gateway.handle(anthropic.parse(raw, {"anthropic-version": "2023-06-01"}), anthropic)
    assert h.transport.requests[0].json() == {**json.loads(raw), "model": "claude-m"}


async def test_transient_failure_is_retried_on_the_same_provider():
    answers = iter([MockResponse(503, json={"error": {"message": "busy"}}), MockResponse(json=chat_completion())])
    h = Harness(config(openai_provider("a"), openai_provider("b")), lambda req: next(answers))
    reply = await h.openai({"model": "m", "messages": USER})
    assert reply.status == 200 and [r.url for r in h.transport.requests] == ["http://a.test/v1/chat/completions"] * 2
    assert h.events[0].attempts[0].provider == "a"


async def test_rate_limit_fails_over_and_tells_the_router_how_long():
    def handler(req):
        if "a.test" in req.url:
            return MockResponse(429, json={"error": {"message": "slow down"}}, headers={"retry-after": "17"})
        return MockResponse(json=chat_completion("from b"))

    h = Harness(config(openai_provider("a"), openai_provider("b")), handler)
    reply = await h.openai({"model": "m", "messages": USER})
    assert json.loads(reply.body)["choices"][0]["message"]["content"] == "from b"
    assert len(h.transport.requests) == 2  # a 429 is not retried on the same provider
    failed = h.router.outcomes[0]
    assert (failed.provider, failed.kind, failed.retry_after_s, failed.ok) == ("a", "rate_limited", 17.0, False)
    assert failed.reservation is not None  # a failed attempt releases its reservation
    assert h.router.requests[1].exclude == ["a"]
    assert "a failed: rate_limited 429" in reply.headers["x-llmgw-route-reason"]


async def test_timeout_is_not_retried_on_the_same_provider():
    def handler(req):
        if "a.test" in req.url:
            raise UpstreamError(504, "upstream timed out", kind=FailureKind.TIMEOUT)
        return MockResponse(json=chat_completion("from b"))

    h = Harness(config(openai_provider("a"), openai_provider("b")), handler)
    reply = await h.openai({"model": "m", "messages": USER})
    assert reply.status == 200 and len(h.transport.requests) == 2


async def test_client_error_in_the_clients_format_goes_back_verbatim():
    body = {"error": {"message": "bad tool schema", "type": "invalid_request_error", "param": "tools", "code": None}}
    h = Harness(config(openai_provider("a"), openai_provider("b")), lambda req: MockResponse(400, json=body))
    reply = await h.openai({"model": "m", "messages": USER})
    assert reply.status == 400 and json.loads(reply.body) == body
    assert len(h.transport.requests) == 1  # the client's mistake: no fail-over


async def test_client_error_in_another_format_is_rendered_in_the_clients():
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens too large"}}
    h = Harness(config(anthropic_provider("a")), lambda req: MockResponse(400, json=body))
    with pytest.raises(GatewayError) as err:
        await h.openai({"model": "m", "messages": USER})
    assert err.value.status == 400 and "max_tokens too large" in err.value.message
    assert OpenAIChatCodec().render_error(err.value).startswith(b'{"error"')


async def test_everyone_failing_is_a_502_naming_each_provider():
    h = Harness(config(openai_provider("a"), openai_provider("b")),
                lambda req: MockResponse(500, json={"error": {"message": "boom"}}))
    with pytest.raises(GatewayError) as err:
        await h.openai({"model": "m", "messages": USER})
    assert err.value.status == 502 and "a (500)" in err.value.message and "b (500)" in err.value.message
    assert len(h.transport.requests) == 4  # one retry each
    assert h.events[-1].status == 502 and err.value.headers["x-request-id"]


# ---- streams --------------------------------------------------------------------------

def chunk(delta: dict, finish=None, usage=None, choices=True) -> dict:
    body = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1, "model": "up",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []}
    if usage is not None:
        body["usage"] = usage
    return body


async def test_stream_that_fails_before_its_first_event_fails_over():
    def handler(req):
        if "a.test" in req.url:
            return MockResponse(chunks=[], headers={"content-type": "text/event-stream"})
        return MockResponse(chunks=sse(chunk({"content": "ok"}), chunk({}, "stop"),
                                       chunk({}, usage={"prompt_tokens": 3, "completion_tokens": 1}, choices=False)))

    h = Harness(config(openai_provider("a"), openai_provider("b")), handler)
    reply = await h.openai({"model": "m", "messages": USER, "stream": True})
    body = await collect(reply)
    assert reply.headers["x-llmgw-provider"] == "b" and body.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' not in body  # asked for on the client's behalf, hidden again
    assert h.transport.requests[-1].json()["stream_options"] == {"include_usage": True}
    assert (h.events[0].tokens_in, h.events[0].tokens_out) == (3, 1)


async def test_stream_that_breaks_after_commit_ends_with_an_error_event():
    h = Harness(config(openai_provider("a"), openai_provider("b")),
                lambda req: MockResponse(chunks=sse(chunk({"content": "a"}), chunk({"content": "b"}), done=False),
                                         break_after=1))
    reply = await h.openai({"model": "m", "messages": USER, "stream": True})
    body = await collect(reply)
    assert b"upstream_stream_error" in body and b"[DONE]" not in body
    assert h.events[0].status == 502 and len(h.transport.requests) == 1  # committed: no fail-over
    assert h.events[0].tokens_in > 0  # the prompt estimate, never zero


async def test_aborted_stream_is_counted_with_what_was_seen():
    h = Harness(config(openai_provider("a")),
                lambda req: MockResponse(chunks=sse(*[chunk({"content": f"w{i} "}) for i in range(20)],
                                                    chunk({}, "stop")), chunk_delay_s=0.01))
    reply = await h.openai({"model": "m", "messages": [{"role": "user", "content": "count " * 50}], "stream": True})
    got = 0
    async for _ in reply.stream:
        got += 1
        if got == 5:
            break
    await reply.stream.aclose()
    (event,) = h.events
    assert event.status == 499 and event.tokens_in >= 50 and event.tokens_out >= 4


# ---- translation ----------------------------------------------------------------------

async def test_anthropic_client_on_an_openai_provider_streams_anthropic_events_with_a_tool_call():
    upstream = sse(chunk({"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({}, "tool_calls"),
        chunk({}, usage={"prompt_tokens": 20, "completion_tokens": 9,
                         "prompt_tokens_details": {"cached_tokens": 4}}, choices=False))
    h = Harness(config(openai_provider("a")), lambda req: MockResponse(chunks=upstream))
    reply = await h.anthropic({"model": "m", "max_tokens": 100, "stream": True, "system": "be brief",
                               "messages": [{"role": "user", "content": "weather?"}],
                               "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]})
    sent = h.transport.requests[0].json()
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["tools"][0]["function"]["name"] == "get_weather" and sent["max_tokens"] == 100
    events = _anthropic_events(await collect(reply))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and kinds[-2] == "message_delta"
    start = next(e for e in events if e.type == "content_block_start")
    assert start.content_block.type == "tool_use" and start.content_block.name == "get_weather"
    args = "".join(e.delta.partial_json for e in events if e.type == "content_block_delta")
    assert json.loads(args) == {"city": "Paris"}
    delta = events[-2]
    assert delta.delta.stop_reason == "tool_use" and delta.usage.output_tokens == 9
    assert delta.usage.cache_read_input_tokens == 4 and delta.usage.input_tokens == 16
    assert h.events[0].tokens_cached == 4 and h.events[0].endpoint == "messages"


def _anthropic_events(body: bytes) -> list:
    adapter = TypeAdapter(anthropic.types.RawMessageStreamEvent)
    out = []
    for frame in body.decode().strip().split("\n\n"):
        name, data = frame.split("\n", 1)
        assert name.startswith("event: ") and data.startswith("data: ")
        if name == "event: ping":  # Anthropic sends it; the SDK's event union leaves it out
            continue
        out.append(adapter.validate_json(data[6:]))
        assert out[-1].type == name[7:]
    return out


async def test_openai_client_on_an_anthropic_provider_gets_chat_json_and_cache_priced_usage():
    cfg = parse_config({"providers": [{
        "id": "a", "type": "anthropic", "base_url": "http://a.test", "api_key": "key-a",
        "models": [{"name": "m", "upstream": "claude-m", "price": {
            "input_per_mtok": 3, "output_per_mtok": 15, "cached_input_per_mtok": "0.3",
            "cache_write_per_mtok": "3.75"}}]}]})
    message = anthropic_message([{"type": "thinking", "thinking": "hmm", "signature": "sig"},
                                 {"type": "text", "text": "hello"},
                                 {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}}],
                                {"input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": 1000,
                                 "cache_creation_input_tokens": 200}, stop="tool_use")
    h = Harness(cfg, lambda req: MockResponse(json=message))
    reply = await h.openai({"model": "m", "messages": [{"role": "system", "content": "sys"}, *USER],
                            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
                            "tool_choice": "required", "temperature": 1.7})
    sent = h.transport.requests[0]
    assert sent.url == "http://a.test/v1/messages" and sent.headers["x-api-key"] == "key-a"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    body = sent.json()
    assert body["system"] == "sys" and body["model"] == "claude-m" and body["tool_choice"] == {"type": "any"}
    assert body["temperature"] == 1.0 and body["max_tokens"] > 0
    out = json.loads(reply.body)
    msg = out["choices"][0]["message"]
    assert msg["content"] == "hello" and msg["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"x": 1}'}
    assert out["choices"][0]["finish_reason"] == "tool_calls" and msg["reasoning_content"] == "hmm"
    assert out["usage"]["prompt_tokens"] == 1300 and out["usage"]["prompt_tokens_details"]["cached_tokens"] == 1000
    (event,) = h.events
    assert (event.tokens_in, event.tokens_cached, event.tokens_cache_write) == (1300, 1000, 200)
    expected = (Decimal(100) * 3 + Decimal(1000) * Decimal("0.3") + Decimal(200) * Decimal("3.75")
                + Decimal(50) * 15) / Decimal(1_000_000)
    assert event.cost_usd == expected


async def test_anthropic_to_anthropic_is_relayed_event_for_event_with_betas_forwarded():
    frames = named_sse(
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_x", "type": "message", "role": "assistant", "model": "claude-m", "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 50}}}),
        ("ping", {"type": "ping"}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Hi"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 12}}),
        ("message_stop", {"type": "message_stop"}))
    h = Harness(config(anthropic_provider("a")), lambda req: MockResponse(chunks=frames))
    reply = await h.anthropic({"model": "m", "max_tokens": 50, "stream": True, "messages": USER,
                               "some_new_field": {"x": 1}},
                              {"anthropic-version": "2023-06-01", "anthropic-beta": "interleaved-thinking-2025-05-14",
                               "x-api-key": "client-key"})
    assert await collect(reply) == b"".join(frames)
    sent = h.transport.requests[0]
    assert sent.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert sent.headers["x-api-key"] == "key-a"  # the provider's key, never the client's
    assert sent.json()["some_new_field"] == {"x": 1} and sent.json()["model"] == "claude-m"
    (event,) = h.events
    assert (event.tokens_in, event.tokens_out, event.tokens_cached) == (55, 12, 50)


async def test_anthropic_overloaded_fails_over():
    def handler(req):
        if "a.test" in req.url:
            return MockResponse(529, json={"type": "error", "error": {"type": "overloaded_error",
                                                                      "message": "Overloaded"}})
        return MockResponse(json=chat_completion("from b"))

    h = Harness(config(anthropic_provider("a"), openai_provider("b")), handler)
    reply = await h.anthropic({"model": "m", "max_tokens": 10, "messages": USER})
    out = anthropic.types.Message.model_validate_json(reply.body)
    assert out.content[0].text == "from b" and out.stop_reason == "end_turn"
    assert h.router.outcomes[0].kind == "overloaded"


async def test_proxy_cli_is_answered_in_the_clients_format():
    h = Harness(config(openai_provider("a")), lambda req: MockResponse(json=chat_completion()))

    async def command(text):
        return "pong" if text.startswith("proxy-cli") else None

    h.gateway.deps.command = command
    reply = await h.anthropic({"model": "m", "max_tokens": 10,
                               "messages": [{"role": "user", "content": "proxy-cli help"}]})
    assert anthropic.types.Message.model_validate_json(reply.body).content[0].text == "pong"
    assert not h.transport.requests and not h.events


class NoNats:
    """A NATS connection no command may reach: arguments are checked before anything is asked."""

    async def request(self, *args, **kwargs):
        raise AssertionError("a command with bad arguments must not reach the router")


@pytest.mark.parametrize("text, answer", [
    ("proxy-cli smart maybe", "usage: proxy-cli smart [on|off]"),
    ("proxy-cli smart on now", "usage: proxy-cli smart [on|off]"),
    ("proxy-cli logs ten", "usage: proxy-cli logs [N]"),
    ("proxy-cli logs 0", "usage: proxy-cli logs [N]"),
    ("proxy-cli logs 101", "usage: proxy-cli logs [N]"),
    ("proxy-cli logs 5 6", "usage: proxy-cli logs [N]"),
    ("proxy-cli use", "usage: proxy-cli use <id> | auto"),
    ("proxy-cli use nobody", "unknown provider `nobody` (configured: a)"),
    ("proxy-cli use a b", "usage: proxy-cli use <id> | auto"),
    ("proxy-cli status now", "usage: proxy-cli status"),
    ("proxy-cli models all", "usage: proxy-cli models"),
    ("proxy-cli help me", "usage: proxy-cli help"),
])
async def test_proxy_cli_answers_bad_arguments_with_the_usage_line_in_the_clients_format(text, answer):
    h = Harness(config(openai_provider("a")), lambda req: MockResponse(json=chat_completion()))
    asked = []

    async def recent(n):
        asked.append(n)
        return "last requests"

    h.gateway.deps.command = command_runner(SimpleNamespace(config=h.gateway.config, nc=NoNats()), recent)
    reply = await h.openai({"model": "m", "messages": [{"role": "user", "content": text}]})
    completion = openai.types.chat.ChatCompletion.model_validate_json(reply.body)
    assert answer in completion.choices[0].message.content and reply.headers["x-llmgw-provider"] == "proxy-cli"
    assert not asked and not h.transport.requests and not h.events


async def test_proxy_cli_logs_takes_a_count_within_its_range():
    h = Harness(config(openai_provider("a")), lambda req: MockResponse(json=chat_completion()))
    asked = []

    async def recent(n):
        asked.append(n)
        return f"last {n} requests"

    h.gateway.deps.command = command_runner(SimpleNamespace(config=h.gateway.config, nc=NoNats()), recent)
    for text in ("proxy-cli logs", "proxy-cli logs 1", "proxy-cli logs 100"):
        await h.openai({"model": "m", "messages": [{"role": "user", "content": text}]})
    assert asked == [10, 1, 100]


# ---- count_tokens ---------------------------------------------------------------------

async def count_tokens(h: Harness, body: dict):
    codec = CountTokensCodec()
    return await h.gateway.handle(codec.parse(json.dumps(body).encode(), {"anthropic-version": "2023-06-01"}),
                                  codec)


async def test_count_tokens_asks_the_router_and_the_admitted_provider():
    """Routed like any call: the router resolves the name (here ``provider/upstream name``) and admits a
    provider; an Anthropic provider counts exactly, anyone else gets our estimate. Recorded without tokens."""
    h = Harness(config(openai_provider("o"), anthropic_provider("a")),
                lambda req: MockResponse(json={"input_tokens": 42}))
    body = {"model": "a/claude-m", "messages": [{"role": "user", "content": "proxy-cli help"}]}
    reply = await count_tokens(h, body)
    assert json.loads(reply.body) == {"input_tokens": 42} and reply.headers["x-llmgw-provider"] == "a"
    (sent,) = h.transport.requests
    assert sent.url == "http://a.test/v1/messages/count_tokens" and sent.json()["model"] == "claude-m"
    assert [r.model for r in h.router.requests] == ["a/claude-m"]
    estimated = await count_tokens(h, {**body, "model": "m"})  # the router admits o first: no count upstream
    assert json.loads(estimated.body)["input_tokens"] > 0 and estimated.headers["x-llmgw-provider"] == "estimate"
    assert len(h.transport.requests) == 1
    assert [(e.endpoint, e.provider, e.tokens_in, e.tokens_out, e.status) for e in h.events] == [
        ("messages.count_tokens", "a", 0, 0, 200), ("messages.count_tokens", "o", 0, 0, 200)]
    with pytest.raises(GatewayError) as unknown:
        await count_tokens(h, {**body, "model": "nope"})
    assert unknown.value.status == 404


async def test_count_tokens_the_provider_refuses_goes_back_as_it_said():
    refusal = {"type": "error", "error": {"type": "invalid_request_error", "message": "messages: too short"}}
    h = Harness(config(anthropic_provider("a")), lambda req: MockResponse(400, json=refusal))
    reply = await count_tokens(h, {"model": "m", "messages": USER})
    assert reply.status == 400 and json.loads(reply.body) == refusal


async def test_embeddings_are_routed_and_counted():
    answer = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
              "model": "e", "usage": {"prompt_tokens": 4, "total_tokens": 4}}
    h = Harness(config(openai_provider("a", models=("e",))), lambda req: MockResponse(json=answer))
    codec = EmbeddingsCodec()
    reply = await h.gateway.handle(codec.parse(b'{"model": "e", "input": "four words of text"}', {}), codec)
    assert json.loads(reply.body)["data"][0]["embedding"] == [0.1, 0.2]
    assert h.transport.requests[0].url == "http://a.test/v1/embeddings"
    assert h.router.requests[0].endpoint == "embeddings" and h.events[0].tokens_in == 4
    assert h.events[0].endpoint == "embeddings"


async def test_bad_anthropic_requests_are_400s():
    codec = AnthropicCodec()
    for body, param in (({"messages": USER, "max_tokens": 1}, "model"), ({"model": "m", "messages": USER}, "max_tokens"),
                        ({"model": "m", "max_tokens": 5, "messages": []}, "messages"),
                        ({"model": "m", "max_tokens": 5, "messages": [{"role": "bot", "content": "x"}]},
                         "messages.0")):
        with pytest.raises(GatewayError) as err:
            codec.parse(json.dumps(body).encode(), {})
        assert err.value.status == 400 and err.value.param == param


async def test_a_request_no_provider_can_translate_is_a_400_saying_why():
    h = Harness(config(openai_provider("a"), openai_provider("b")), lambda req: MockResponse(json=chat_completion()))
    with pytest.raises(GatewayError) as err:
        await h.anthropic({"model": "m", "max_tokens": 10, "messages": USER,
                           "tools": [{"type": "web_search_20250305", "name": "web_search"}]})
    assert err.value.status == 400 and "served by Anthropic only" in err.value.message
    assert not h.transport.requests  # refused before anything was sent


# ---- images and tool results cross formats ------------------------------------------------

PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


async def test_openai_images_and_tool_results_reach_anthropic_as_its_blocks():
    h = Harness(config(anthropic_provider("a")), lambda req: MockResponse(json=anthropic_message()))
    await h.openai({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                     {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "zoom", "arguments": '{"x": 2}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "zoomed"},
        {"role": "user", "content": "and now?"}]})
    sent = h.transport.requests[0].json()["messages"]
    assert sent[0]["content"][1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                  "data": PIXEL}}
    assert sent[0]["content"][2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
    assert sent[1] == {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "zoom",
                                                         "input": {"x": 2}}]}
    # the tool result and the next user turn are one user turn in Anthropic's alternation
    assert sent[2]["role"] == "user" and sent[2]["content"][0] == {
        "type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "zoomed"}]}
    assert sent[2]["content"][1] == {"type": "text", "text": "and now?"}


async def test_anthropic_images_and_tool_results_reach_openai_as_its_messages():
    h = Harness(config(openai_provider("a")), lambda req: MockResponse(json=chat_completion()))
    await h.anthropic({"model": "m", "max_tokens": 20, "messages": [
        {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                  "data": PIXEL}},
                                     {"type": "text", "text": "what is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "let me zoom"},
                                          {"type": "tool_use", "id": "toolu_1", "name": "zoom", "input": {"x": 2}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "zoomed",
                                      "is_error": False}]}]})
    sent = h.transport.requests[0].json()["messages"]
    assert sent[0] == {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
        {"type": "text", "text": "what is this?"}]}
    assert sent[1] == {"role": "assistant", "content": "let me zoom", "tool_calls": [
        {"id": "toolu_1", "type": "function", "function": {"name": "zoom", "arguments": '{"x": 2}'}}]}
    assert sent[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "zoomed"}


async def test_stop_reasons_and_stop_sequences_translate():
    h = Harness(config(anthropic_provider("a")), lambda req: MockResponse(
        json={**anthropic_message(stop="stop_sequence"), "stop_sequence": "END"}))
    reply = await h.openai({"model": "m", "messages": USER, "stop": ["END"], "max_tokens": 5})
    assert h.transport.requests[0].json()["stop_sequences"] == ["END"]
    assert json.loads(reply.body)["choices"][0]["finish_reason"] == "stop"
    h = Harness(config(openai_provider("a")), lambda req: MockResponse(json={
        **chat_completion(), "choices": [{"index": 0, "message": {"role": "assistant", "content": "cut"},
                                          "finish_reason": "length"}]}))
    reply = await h.anthropic({"model": "m", "max_tokens": 5, "messages": USER, "stop_sequences": ["X"]})
    assert anthropic.types.Message.model_validate_json(reply.body).stop_reason == "max_tokens"
    assert h.transport.requests[0].json()["stop"] == ["X"]


# ---- timeouts ---------------------------------------------------------------------------------

async def test_a_provider_over_its_own_total_timeout_is_left_for_the_next_without_a_retry():
    async def handler(req):
        if "a.test" in req.url:
            await asyncio.sleep(5)
        return MockResponse(json=chat_completion("from b"))

    h = Harness(config(openai_provider("a", total_timeout_s=0.2), openai_provider("b")), handler)
    started = time.monotonic()
    reply = await h.openai({"model": "m", "messages": USER})
    assert json.loads(reply.body)["choices"][0]["message"]["content"] == "from b"
    assert time.monotonic() - started < 2  # the hung provider cost its timeout once
    assert [r.url.split("/")[2] for r in h.transport.requests] == ["a.test", "b.test"]
    assert h.router.outcomes[0].kind == "timeout" and h.events[0].attempts[0].status == 504


async def test_first_byte_timeout_on_a_real_connection():
    from fakes import FakeProvider
    from llmgw_common.config import ProviderConfig
    from llmgw_edge.providers import build_provider
    from llmgw_edge.providers.http import AiohttpTransport

    with FakeProvider(models=["m"], delay_s=2.0) as slow:
        transport = AiohttpTransport()
        try:
            provider = build_provider(ProviderConfig(id="s", base_url=slow.url, first_byte_timeout_s=0.2,
                                                     models=[{"name": "m"}]), transport, Path("/tmp"))
            started = time.monotonic()
            with pytest.raises(UpstreamError) as err:
                await provider.chat(OpenAIChatCodec().parse(json.dumps({"model": "m", "messages": USER}).encode(),
                                                            {}).chat(), "m")
            assert err.value.kind is FailureKind.TIMEOUT and "first byte" in err.value.message
            assert time.monotonic() - started < 1.5
        finally:
            await transport.close()


async def test_successes_may_wait_for_a_batch_failures_and_probes_may_not():
    answers = iter([MockResponse(503, json={"error": {"message": "x"}})] * 2 + [MockResponse(json=chat_completion())])
    h = Harness(config(openai_provider("a"), openai_provider("b")), lambda req: next(answers))
    await h.openai({"model": "m", "messages": USER})
    assert [(o.provider, o.ok) for o in h.router.outcomes] == [("a", False), ("b", True)]
    assert h.router.batched == [False, True]

    async def probing(request):  # the router admitted b as its breaker's probe
        decision = await FakeRouter.decide(h.router, request)
        decision.candidates[0].probe = True
        return decision

    h.gateway.deps.decide = probing
    h.router.outcomes.clear(), h.router.batched.clear()
    answers = iter([MockResponse(json=chat_completion())])
    await h.openai({"model": "m", "messages": USER})
    assert h.router.batched == [False]  # the probe's success closes the breaker: it goes at once


# ---- prompt token estimates: exact only where admission decides by them -------------------------

LONG_USER = [{"role": "user", "content": "internationalization " * 40}]  # 840 characters, few real tokens


async def test_admission_counts_the_prompt_exactly_only_where_a_limit_or_window_needs_it():
    from llmgw_common.keys import KeyLimits, KeyRecord
    from llmgw_edge.core import tokens

    def prepared(cfg: GatewayConfig, exact_key: bool):
        h = Harness(cfg, lambda req: MockResponse(json=chat_completion()))
        codec = OpenAIChatCodec()
        exchange = codec.parse(json.dumps({"model": "m", "messages": LONG_USER}).encode(), {})
        exchange.exact_tokens = exact_key  # what the route sets from the caller's key
        return exchange, h, codec

    cheap = len(LONG_USER[0]["content"]) // 4 + tokens.PER_MESSAGE_OVERHEAD
    exact = tokens.estimate_prompt_tokens({"messages": LONG_USER}, exact=True)
    assert exact < cheap  # the repeated word is one or two tokens: the two precisions differ
    no_limits = config(openai_provider("a"))
    cases = [
        (no_limits, False, cheap),
        (no_limits, True, exact),  # the caller's key counts tokens or cost
        (config(openai_provider("a", limits={"tokens_per_minute": 10_000})), False, exact),
        (config(openai_provider("a", limits={"cost_per_day": 5})), False, exact),
        (config(openai_provider("a", limits={"requests_per_minute": 10})), False, cheap),
        (config({**openai_provider("a"), "models": [{"name": "m", "context_window": 8000}]}), False, exact),
    ]
    for cfg, exact_key, expected in cases:
        exchange, h, codec = prepared(cfg, exact_key)
        await h.gateway.handle(exchange, codec)
        assert h.router.requests[0].estimated_prompt_tokens == expected, (cfg.providers[0].limits, exact_key)

    created = "2026-01-01T00:00:00Z"
    record = lambda **limits: KeyRecord(id="0123456789ab", name="k", hash="h", prefix="p", created_at=created,  # noqa: E731
                                        limits=KeyLimits(**limits))
    assert not tokens.key_needs_exact(None) and not tokens.key_needs_exact(record(requests_per_day=5))
    assert tokens.key_needs_exact(record(tokens_per_month=5)) and tokens.key_needs_exact(record(cost_per_month=1))


def test_a_prompt_is_counted_once_per_precision():
    from llmgw_edge.core.tokens import PromptTokens

    calls = []
    count = PromptTokens(lambda exact: calls.append(exact) or (10 if exact else 12))
    assert [count(True), count(False), count(True), count(False)] == [10, 12, 10, 12]
    assert calls == [True, False]


async def test_an_upstream_cookie_never_rides_along_with_a_later_request():
    """One pooled session serves every client: a Set-Cookie from one answer must not reach the next."""
    from aiohttp import web
    from llmgw_edge.providers.http import AiohttpTransport

    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("cookie"))
        response = web.json_response({})
        response.set_cookie("session", "client-a-secret")
        return response

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    transport = AiohttpTransport()
    try:
        for _ in range(2):
            # a host name, not an address: aiohttp keeps cookies of named hosts only
            reply = await transport.request("POST", f"http://localhost:{port}/", b"{}", {}, 5.0)
            await reply.read()
        assert seen == [None, None]
    finally:
        await transport.close()
        await runner.cleanup()
