"""Edge wire helpers (pure): request validation, usage extraction, SSE handling, redaction."""

from __future__ import annotations

import json

import pytest

from fake_secrets import fake_key
from llmgw_common.logs import redact
from llmgw_edge.api.openai_chat import OpenAIChatCodec
from llmgw_edge.core.errors import GatewayError
from llmgw_edge.providers.openai import _strip_null_usage, usage_of_body


def _parse(raw: bytes):
    return OpenAIChatCodec().parse(raw, {})


def test_valid_request_keeps_the_clients_body():
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2,
                      "tools": [{"type": "function", "function": {"name": "f"}}], "n": 2}).encode()
    exchange = _parse(raw)
    body = exchange.raw.body
    assert body["tools"] and body["n"] == 2 and body["temperature"] == 0.2 and exchange.model == "m"
    assert "stream_options" not in body and exchange.raw.format == "openai_chat"
    core = exchange.chat()
    assert core.n == 2 and core.temperature == 0.2 and core.tools[0].name == "f"


@pytest.mark.parametrize("raw,param", [
    (b"[]", None), (b"{", None), (b'{"messages":[{"role":"user","content":"x"}]}', "model"),
    (b'{"model":"m","messages":[]}', "messages"), (b'{"model":"m","messages":[{"role":"robot"}]}', "messages[0].role"),
    (b'{"model":"m","messages":[{"role":"user"}],"stream":"yes"}', "stream"),
    (b'{"model":"m","messages":[{"role":"user"}],"max_tokens":0}', "max_tokens"),
])
def test_bad_requests_are_400_with_param(raw, param):
    with pytest.raises(GatewayError) as err:
        _parse(raw)
    assert err.value.status == 400 and err.value.param == param


def test_bodies_only_pythons_json_reads_are_read_as_before():
    # the fast decoder refuses these; Python's json reads them, as it always did
    assert _parse(b'\xef\xbb\xbf{"model":"m","messages":[{"role":"user","content":"x"}]}').model == "m"
    assert _parse(b'{"model":"m","temperature":NaN,"messages":[{"role":"user","content":"x"}]}').raw.body[
        "messages"][0]["content"] == "x"
    assert _parse('{"model":"m","messages":[{"role":"user","content":"\u00e9"}]}'.encode("utf-16")).model == "m"
    for bad in (b'{"model":"m","messages":[]', b'{"model":"m"}x', b'{"model":"m\x01"}', b"[" * 5000 + b"]" * 5000):
        with pytest.raises(GatewayError) as err:
            _parse(bad)
        assert err.value.status == 400


def test_stream_usage_request_is_remembered():
    assert not _parse(b'{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}').raw.include_usage
    assert _parse(b'{"model":"m","stream":true,"stream_options":{"include_usage":true},'
                  b'"messages":[{"role":"user","content":"x"}]}').raw.include_usage


def test_usage_of_openai_bodies():
    usage = usage_of_body(b'{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,'
                          b'"prompt_tokens_details":{"cached_tokens":2},'
                          b'"completion_tokens_details":{"reasoning_tokens":3}}}')
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.reasoning_tokens) == (5, 7, 2, 3)
    assert usage_of_body(b'{"choices":[]}').input_tokens == 0
    assert _strip_null_usage('{"a":1,"usage":null}') == '{"a":1}'
    # a Responses event carries it inside "response"; only the usage is read, whatever else is there
    assert usage_of_body(b'{"type":"response.completed","response":{"usage":{"input_tokens":4,"output_tokens":1},'
                         b'"output":[{"x":[1,2,{"y":null}]}]}}').input_tokens == 4
    # JSON only Python's parser reads (NaN) is read as before; a body that is no object has no usage
    assert usage_of_body(b'{"logprob":NaN,"usage":{"prompt_tokens":6,"completion_tokens":2}}').output_tokens == 2
    assert usage_of_body(b'["usage"]').input_tokens == 0 and usage_of_body(b'{"usage":').input_tokens == 0
    assert usage_of_body(b'{"usage":null,"response":"usage"}').input_tokens == 0


def test_redaction_of_secrets_in_logs():
    openai_key, groq_key = fake_key("sk-proj-"), fake_key("gsk_")
    line = f'headers={{"authorization": "Bearer {openai_key}"}} key={groq_key} x-api-key: zzz123'
    out = redact(line)
    assert openai_key not in out and groq_key not in out and "zzz123" not in out


# ---- rate-limit headers, prompt classes, tokens, chat commands ----------------

from datetime import datetime, timedelta, timezone  # noqa: E402

from llmgw_edge.commands import parse_command  # noqa: E402
from llmgw_edge.core.prompt_class import classify  # noqa: E402
from llmgw_edge.providers.ratelimit_headers import retry_after_seconds  # noqa: E402
from llmgw_edge.core.tokens import estimate_prompt_tokens  # noqa: E402

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("headers,expected", [
    ({"Retry-After": "7"}, 7.0),
    ({"retry-after": "Thu, 01 Jan 2026 12:00:30 GMT"}, 30.0),
    ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
    ({"x-ratelimit-reset-requests": "1.5s", "x-ratelimit-reset-tokens": "20ms"}, 1.5),  # Groq / OpenAI style
    ({"anthropic-ratelimit-requests-reset": (NOW + timedelta(seconds=12)).isoformat()}, 12.0),
    ({"x-ratelimit-reset": str(NOW.timestamp() + 5)}, 5.0),
    ({"retry-after": "3", "x-ratelimit-reset-requests": "60s"}, 3.0),  # Retry-After is authoritative
    ({}, None), ({"retry-after": "soon"}, None),
])
def test_retry_after(headers, expected):
    assert retry_after_seconds(headers, NOW) == expected


@pytest.mark.parametrize("text,cls", [
    ("```python\nprint(1)\n```", "code"),
    ("Why does this raise a Traceback (most recent call last)?", "code"),
    ("hi there!", "conversation"),
    ("Compare the evidence from recent studies on intermittent fasting and cite sources", "research"),
    ("Plan a step by step migration strategy and reason through the trade-offs", "complex"),
    ("What should I cook tonight?", "conversation"),
])
def test_prompt_classes(text, cls):
    assert classify(text) == cls


def test_token_estimate_counts_text_images_and_messages():
    small = estimate_prompt_tokens({"messages": [{"role": "user", "content": "hello world"}]})
    assert 2 <= small <= 10
    big = estimate_prompt_tokens({"messages": [{"role": "user", "content": "hello world " * 500}]})
    assert 900 <= big <= 1100
    with_image = estimate_prompt_tokens({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}]})
    assert with_image > 765


def test_chat_command_parsing():
    def body(text):
        return text

    assert parse_command(body("proxy-cli status")) == ["status"]
    assert parse_command(body("  proxy-cli use groq")) == ["use", "groq"]
    assert parse_command(body("proxy-cli")) == ["help"]
    assert parse_command(body("proxy-client is a word")) is None
    assert parse_command(body("tell me about proxy-cli")) is None


def test_every_provider_type_declares_what_the_gateway_reads_of_it():
    """The gateway knows no provider type: each class says its OpenTelemetry gen_ai.system and the wire
    format of its error bodies itself (core/provider.py's interface)."""
    from llmgw_edge.providers import PROVIDER_TYPES

    systems = {name: cls.genai_system for name, cls in PROVIDER_TYPES.items()}
    assert systems == {"openai": "openai", "copilot": "github_copilot", "anthropic": "anthropic",
                       "claude_code": "anthropic", "gemini": "gcp.gemini", "gemini_cli": "gcp.gemini"}
    assert all(cls.error_format for cls in PROVIDER_TYPES.values())
