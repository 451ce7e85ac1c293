"""Caching hints reach the upstream as the client placed them (docs/routing.md, "Caching hints in
translation"): the gateway in-process, on real HTTP to the demo provider's Anthropic, OpenAI and Gemini
faces, whose recorded requests are what the upstream received."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from edge_fakes import Events, FakeRouter
from fakes import FakeProvider
from llmgw_common.config import parse_config_text
from llmgw_edge.api.anthropic_messages import AnthropicCodec
from llmgw_edge.api.openai_chat import OpenAIChatCodec
from llmgw_edge.core.gateway import Deps, Gateway
from llmgw_edge.providers import build_provider
from llmgw_edge.providers.http import AiohttpTransport

EPHEMERAL = {"type": "ephemeral"}
HOUR = {"type": "ephemeral", "ttl": "1h"}
SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}}}

ANTHROPIC_BODY = {
    "model": "m", "max_tokens": 50,
    "tools": [{"name": "read", "description": "read a file", "input_schema": SCHEMA, "cache_control": HOUR}],
    "system": [{"type": "text", "text": "You are a reviewer."},
               {"type": "text", "text": "The style guide: tabs.", "cache_control": EPHEMERAL}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Review a.py", "cache_control": EPHEMERAL}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "read",
                                           "input": {"path": "a.py"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x = 1",
                                      "cache_control": EPHEMERAL},
                                     {"type": "text", "text": "and now?"}]},
    ],
}


@pytest.fixture(scope="module")
def faces():
    with FakeProvider(models=["up"]) as claude, FakeProvider(models=["up"]) as gpt, \
            FakeProvider(models=["up"]) as gemini:
        yield {"anthropic": claude, "openai": gpt, "gemini": gemini}


async def _send(faces: dict, provider_type: str, codec, body: dict) -> dict:
    """Send ``body`` through a gateway whose one provider is of ``provider_type``; what that face received."""
    face = faces[provider_type]
    base_url = {"anthropic": face.origin, "openai": face.url, "gemini": face.gemini_url}[provider_type]
    cfg = parse_config_text(f"""
providers:
  - id: p
    type: {provider_type}
    base_url: {base_url}
    api_key: k
    models: [{{name: m, upstream: up}}]
""")
    transport = AiohttpTransport()
    try:
        router = FakeRouter(cfg)
        gateway = Gateway(Deps(config=cfg, providers={p.id: build_provider(p, transport, Path("/tmp"))
                                                      for p in cfg.providers},
                               decide=router.decide, report=router.report, publish=Events()))
        before = len(face.requests)
        reply = await gateway.handle(codec.parse(json.dumps(body).encode(), {}), codec)
        assert reply.status == 200, reply.body
        assert len(face.requests) == before + 1
        return face.requests[-1]["body"]
    finally:
        await transport.close()


async def test_anthropic_to_anthropic_passes_every_breakpoint_through_untouched(faces):
    received = await _send(faces, "anthropic", AnthropicCodec(), ANTHROPIC_BODY)
    assert received == {**ANTHROPIC_BODY, "model": "up"}


async def test_openai_format_breakpoints_reach_anthropic_in_their_places(faces):
    body = {"model": "m", "prompt_cache_key": "conv-1", "tools": [
        {"type": "function", "function": {"name": "read", "parameters": SCHEMA}, "cache_control": HOUR}],
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "You are a reviewer."},
                                           {"type": "text", "text": "Tabs.", "cache_control": EPHEMERAL}]},
            {"role": "user", "content": [{"type": "text", "text": "Review a.py", "cache_control": EPHEMERAL}]},
            {"role": "assistant", "content": "Looks fine."},
            {"role": "user", "content": "and b.py?"}]}
    received = await _send(faces, "anthropic", OpenAIChatCodec(), body)
    assert received["tools"] == [{"name": "read", "input_schema": SCHEMA, "cache_control": HOUR}]
    assert received["system"] == [{"type": "text", "text": "You are a reviewer."},
                                  {"type": "text", "text": "Tabs.", "cache_control": EPHEMERAL}]
    assert received["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Review a.py", "cache_control": EPHEMERAL}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Looks fine."}]},
        {"role": "user", "content": [{"type": "text", "text": "and b.py?"}]}]
    assert "prompt_cache_key" not in received  # Anthropic keys its cache by the prefix itself


async def test_anthropic_to_openai_keeps_the_order_its_cache_matches_and_sends_no_unknown_field(faces):
    received = await _send(faces, "openai", AnthropicCodec(), copy.deepcopy(ANTHROPIC_BODY))
    assert "cache_control" not in json.dumps(received)  # OpenAI caches every long prefix by itself
    assert [m["role"] for m in received["messages"]] == ["system", "user", "assistant", "tool", "user"]
    assert received["messages"][0]["content"] == "You are a reviewer.The style guide: tabs."
    assert received["messages"][1]["content"] == "Review a.py"
    assert received["tools"][0]["function"]["name"] == "read"


async def test_openai_to_openai_passes_prompt_cache_key_and_part_breakpoints_through(faces):
    body = {"model": "m", "prompt_cache_key": "conv-1", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "Tabs.", "cache_control": EPHEMERAL}]},
        {"role": "user", "content": "hi"}]}
    assert await _send(faces, "openai", OpenAIChatCodec(), body) == {**body, "model": "up"}


async def test_anthropic_to_gemini_keeps_the_system_prompt_first(faces):
    received = await _send(faces, "gemini", AnthropicCodec(), copy.deepcopy(ANTHROPIC_BODY))
    assert "cache_control" not in json.dumps(received)  # Gemini's implicit cache needs no marker
    assert received["systemInstruction"]["parts"] == [{"text": "You are a reviewer.The style guide: tabs."}]
    assert received["contents"][0] == {"role": "user", "parts": [{"text": "Review a.py"}]}
