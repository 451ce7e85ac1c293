"""Fallbacks on meaning and capability checks, in pieces: the router's checks and fallback plans
(``llmgw_router.model_fit`` through ``policy.plan``), what the edge reads off a request, the providers'
own refusal bodies, the config's checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_fakes import MockResponse, MockTransport
from llmgw_common.config import ConfigError, ProviderConfig, parse_config_text
from llmgw_common.failures import FailureKind
from llmgw_common.messages import RouteRequest
from llmgw_edge.core.fallbacks import filtered_answer, needs
from llmgw_edge.core.provider import RawCall
from llmgw_edge.providers import build_provider
from llmgw_router.main import config_prices
from llmgw_router.policy import RoutingState, plan, plan_reusable

CONFIG = parse_config_text("""
providers:
  - id: small
    base_url: http://a/v1
    priority: 1
    models:
      - {name: gpt-128k, context_window: 128000}
      - {name: chat, capabilities: {vision: false, tools: false}}
      - {name: guarded}
  - id: big
    base_url: http://b/v1
    priority: 2
    models:
      - {name: long, context_window: 200000}
      - {name: chat, capabilities: {vision: true}}
      - {name: careful}
      - {name: guarded}
routing:
  aliases: {roomy: long}
  fallbacks:
    context_window: {gpt-128k: [roomy]}
    content_filter: {guarded: [careful]}
""")


def decide(model: str, config=CONFIG, **kw):
    request = RouteRequest(request_id="r", model=model, **kw)
    return plan(config, config_prices(config), request, RoutingState()), request


def test_a_model_without_a_capability_the_request_needs_is_skipped_and_unknown_ones_are_assumed():
    p, request = decide("chat", needs=["vision"])
    assert [pc.candidate.provider for pc in p.ordered] == ["big"]
    assert [(s.provider, s.reason) for s in p.skipped] == [("small", "lacks vision (model chat)")]
    assert plan_reusable(CONFIG, p, request, None)  # the plan's key holds the needs
    p, _ = decide("chat", needs=["json_schema"])  # declared by nobody: every provider may serve it
    assert [pc.candidate.provider for pc in p.ordered] == ["small", "big"]
    p, _ = decide("chat", needs=["tools", "vision"])
    assert p.skipped[0].reason == "lacks tools, vision (model chat)" and p.ordered[0].candidate.provider == "big"


def test_nobody_with_the_capability_is_a_400_that_names_it():
    p, _ = decide("chat", needs=["tools"], exclude=["big"])
    assert p.error is None  # the only one that has it was tried: a failover, not the request's fault
    config = parse_config_text("""
providers:
  - {id: a, base_url: http://a/v1, models: [{name: m, capabilities: {vision: false}}]}
  - {id: b, base_url: http://b/v1, models: [{name: m, capabilities: {vision: false, tools: false}}]}
  - {id: c, base_url: http://c/v1, enabled: false, models: [{name: m}]}
""")
    p, _ = decide("m", config, needs=["tools", "vision"])
    assert p.error is not None and (p.error.status, p.error.code) == (400, "capability_not_supported")
    assert p.error.message.startswith("No provider of model `m` supports tools and vision, which this request uses")
    assert p.error.message.endswith(": a lacks vision (model m); b lacks tools, vision (model m).")


def test_a_prompt_too_long_for_the_window_plans_the_fallback_model():
    p, request = decide("gpt-128k", estimated_prompt_tokens=150_000, max_tokens=1000)
    assert p.error is None and p.fallback == "context_window" and p.model == "long"
    (pc,) = p.ordered
    assert (pc.candidate.provider, pc.candidate.model) == ("big", "long")
    assert pc.candidate.reason.startswith("context window fallback from gpt-128k, ")
    assert p.skipped[0].reason == "prompt of ~150000 tokens (+1000 answer) exceeds its context window of 128000 " \
                                  "(model gpt-128k)"
    assert not plan_reusable(CONFIG, p, request, None)
    p, _ = decide("gpt-128k", estimated_prompt_tokens=100_000, max_tokens=1000)  # fits: no fallback
    assert p.fallback is None and p.ordered[0].candidate.model == "gpt-128k"


def test_a_prompt_no_window_holds_is_a_400_naming_the_estimate_and_every_window():
    p, _ = decide("gpt-128k", estimated_prompt_tokens=250_000, max_tokens=1000)
    assert p.error is not None and (p.error.status, p.error.code) == (400, "context_length_exceeded")
    assert "~250000 tokens plus 1000" in p.error.message
    assert "small context window of 128000 (model gpt-128k)" in p.error.message
    assert "big context window of 200000 (model long)" in p.error.message


def test_an_upstream_refusal_plans_the_fallback_models_with_exclusions_counted_afresh():
    # small refused "guarded" on content policy: the edge asks for the fallback; big (excluded for the first
    # model? no: the exclusions before ``exclude_from`` were for the model that refused) serves "careful"
    p, request = decide("guarded", exclude=["big", "small"], exclude_from=2, fallback="content_filter")
    assert p.fallback == "content_filter" and [pc.candidate.model for pc in p.ordered] == ["careful"]
    assert p.ordered[0].candidate.reason.startswith("content filter fallback from guarded, ")
    assert not plan_reusable(CONFIG, p, request, None)
    p, _ = decide("guarded", exclude=["small", "big"], exclude_from=1, fallback="content_filter")
    assert not p.ordered and p.skipped[0].reason == "already tried for this request (content filter fallback)"
    p, _ = decide("chat", exclude=["small"], exclude_from=1, fallback="content_filter")
    assert p.error is not None and p.error.code == "content_filter_no_fallback"


def raw(fmt: str, body: dict) -> RawCall:
    return RawCall(fmt, body, json.dumps(body).encode())


def test_what_a_request_needs_is_read_off_its_own_format():
    image_url = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}
    assert needs(raw("openai_chat", {"messages": [{"role": "user", "content": "hi"}]}), False) == []
    assert needs(raw("openai_chat", {"messages": [{"role": "user", "content": [image_url]}],
                                     "tools": [{"type": "function"}], "reasoning_effort": "low",
                                     "response_format": {"type": "json_schema"}}), False) == \
        ["json_schema", "reasoning", "tools", "vision"]
    assert needs(raw("openai_chat", {"messages": [], "response_format": {"type": "json_object"}, "tools": []}),
                 False) == []
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}
    assert needs(raw("anthropic_messages", {"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [image]}]}], "thinking": {"type": "enabled"}}),
        False) == ["reasoning", "vision"]
    assert needs(raw("anthropic_messages", {"messages": [], "thinking": {"type": "disabled"}}), False) == []
    assert needs(raw("openai_responses", {"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "https://x/y.png"}]}], "text": {"format": {"type": "json_schema"}},
        "reasoning": {"effort": "none"}}), False) == ["json_schema", "vision"]
    assert needs(raw("openai_responses", {"input": "just text", "reasoning": {"effort": "high"}}), False) == \
        ["reasoning"]
    assert needs(raw("embeddings", {"input": "x"}), True) == ["embeddings"]


def test_a_whole_answer_refused_on_content_policy_is_recognised_in_each_format():
    def chat(finish):
        return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": ""},
                                        "finish_reason": finish}]}).encode()
    assert filtered_answer("openai_chat", chat("content_filter"))
    assert not filtered_answer("openai_chat", chat("stop"))
    assert not filtered_answer("openai_chat", b'{"choices": [{"message": {"content": "about content_filter"}, '
                                              b'"finish_reason": "stop"}]}')
    assert filtered_answer("anthropic_messages", b'{"type": "message", "content": [], "stop_reason": "refusal"}')
    assert not filtered_answer("anthropic_messages", b'{"content": [{"text": "no refusal"}], "stop_reason": "end_turn"}')
    assert filtered_answer("openai_responses", b'{"status": "incomplete", '
                                               b'"incomplete_details": {"reason": "content_filter"}}')
    assert not filtered_answer("openai_chat", b"not json content_filter")


# the providers' own error bodies, as their APIs send them
OPENAI_CONTEXT = {"error": {"message": "This model's maximum context length is 128000 tokens. However, your messages "
                                       "resulted in 150012 tokens. Please reduce the length of the messages.",
                            "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}
AZURE_FILTER = {"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
                                     "management policy. Please modify your prompt and retry.",
                          "type": None, "param": "prompt", "code": "content_filter", "status": 400,
                          "innererror": {"code": "ResponsibleAIPolicyViolation",
                                         "content_filter_result": {"hate": {"filtered": True, "severity": "high"}}}}}
ANTHROPIC_CONTEXT = {"type": "error", "error": {"type": "invalid_request_error",
                                                "message": "prompt is too long: 208310 tokens > 200000 maximum"},
                     "request_id": "req_011CUj"}
GEMINI_CONTEXT = {"error": {"code": 400, "message": "The input token count (1196265) exceeds the maximum number of "
                                                    "tokens allowed (1048575).", "status": "INVALID_ARGUMENT"}}


@pytest.mark.parametrize("kind, body, expected", [
    ("openai", OPENAI_CONTEXT, FailureKind.CONTEXT_LENGTH),
    ("openai", AZURE_FILTER, FailureKind.CONTENT_FILTER),
    ("openai", {"error": {"message": "bad", "type": "invalid_request_error", "code": None}}, FailureKind.BAD_REQUEST),
    ("anthropic", ANTHROPIC_CONTEXT, FailureKind.CONTEXT_LENGTH),
    ("anthropic", {"type": "error", "error": {"type": "invalid_request_error", "message": "messages: required"}},
     FailureKind.BAD_REQUEST),
    ("gemini", GEMINI_CONTEXT, FailureKind.CONTEXT_LENGTH),
])
def test_providers_classify_their_own_refusals(tmp_path: Path, kind, body, expected):
    p = build_provider(ProviderConfig(id="p", type=kind, base_url="http://x", api_key="k", models=[{"name": "m"}]),
                       MockTransport(lambda req: MockResponse(json={})), tmp_path)
    err = p.classify(400, json.dumps(body).encode(), {})
    assert err.kind is expected and not err.retryable


def test_bad_fallbacks_and_capabilities_are_reported_with_their_paths():
    with pytest.raises(ConfigError) as exc:
        parse_config_text("""
providers:
  - {id: a, base_url: http://a/v1, models: [{name: m, capabilities: {vision: false, images: true}}]}
routing:
  fallbacks:
    context_window: {m: [m, bigger], nope: [m]}
    content_filer: {}
""")
    problems = dict(exc.value.problems)
    assert set(problems) == {"providers[0].models[0].capabilities.images", "routing.fallbacks.content_filer",
                             "routing.fallbacks.context_window.m[0]", "routing.fallbacks.context_window.m[1]",
                             "routing.fallbacks.context_window.nope"}, problems
    assert problems["routing.fallbacks.context_window.m[0]"] == "a model cannot be its own fallback"
    assert "'bigger' is not served" in problems["routing.fallbacks.context_window.m[1]"]


def test_capabilities_the_price_tables_state_count_unless_the_config_says_otherwise():
    config = parse_config_text("""
providers:
  - {id: a, base_url: http://a/v1, priority: 1, models: [{name: r, upstream: deepseek-reasoner}]}
  - {id: b, base_url: http://b/v1, priority: 2, models: [{name: r, upstream: deepseek-reasoner,
                                                          capabilities: {tools: true}}]}
""")
    known = {("a", "deepseek-reasoner"): {"tools": False, "reasoning": True},
             ("b", "deepseek-reasoner"): {"tools": False, "reasoning": True}}
    request = RouteRequest(request_id="r", model="r", needs=["tools"])
    p = plan(config, config_prices(config), request, RoutingState(), capabilities=known)
    assert [pc.candidate.provider for pc in p.ordered] == ["b"]  # the config's true wins over the table's false
    assert p.skipped[0].reason == "lacks tools (model r)"
    p = plan(config, config_prices(config), request, RoutingState())  # nothing known: permissive
    assert [pc.candidate.provider for pc in p.ordered] == ["a", "b"]


def test_the_bundled_snapshot_states_litellms_capabilities():
    from llmgw_common.messages import PriceKey
    from llmgw_pricing.prices import PriceTable, effective_price
    from llmgw_pricing.sources import PriceSourceError, document_capabilities, parse_litellm_capabilities

    config = parse_config_text("""
providers:
  - id: openai
    base_url: https://api.openai.com/v1
    models: [{name: gpt-4o, price: {input_per_mtok: 1}}, {name: text-embedding-3-small}, {name: unheard-of}]
""")
    bundled = PriceTable.bundled()
    info = effective_price(config, [bundled], PriceKey(provider="openai", model="gpt-4o"))
    assert info.source == "config"  # priced by the config, described by the table all the same
    assert info.capabilities == {"embeddings": False, "json_schema": True, "tools": True, "vision": True}
    assert effective_price(config, [bundled], PriceKey(provider="openai", model="text-embedding-3-small")) \
        .capabilities == {"embeddings": True}
    assert effective_price(config, [bundled], PriceKey(provider="openai", model="unheard-of")).capabilities == {}
    litellm = {"m": {"mode": "chat", "supports_vision": False, "supports_function_calling": True,
                     "supports_reasoning": "yes"}, "e": {"mode": "embedding"}}
    assert parse_litellm_capabilities(litellm, ["m", "e", "gone"]) == {
        "m": {"vision": False, "tools": True, "embeddings": False}, "e": {"embeddings": True}}
    with pytest.raises(PriceSourceError, match="capabilities.m"):
        document_capabilities({"capabilities": {"m": {"telepathy": True}}}, "doc")
