"""Prompt-cache affinity, the pure parts: the prefix key the edge derives (core/cache_prefix.py), the
router's choice (llmgw_router.cache_affinity.prefer) and when the edge asks the router instead of reusing a
plan. With real Redis and the router: tests/service/test_cache_affinity_router.py; the whole stack with the
demo provider's Anthropic and OpenAI faces: tests/e2e/test_cache_affinity_stack.py."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from edge_fakes import Events, FakeRouter, MockResponse, MockTransport
from llmgw_common.config import parse_config_text
from llmgw_common.messages import RouteDecision, RouteRequest
from llmgw_edge.api.anthropic_messages import AnthropicCodec
from llmgw_edge.api.openai_chat import OpenAIChatCodec
from llmgw_edge.core.cache_prefix import cacheable_prefix
from llmgw_edge.core.gateway import Deps, Gateway
from llmgw_edge.core.provider import RawCall
from llmgw_edge.providers import build_provider
from llmgw_router.cache_affinity import Affinity, parse, prefer
from llmgw_router.main import config_prices
from llmgw_router.policy import RoutingState, plan

SYSTEM = "You are a careful reviewer. " * 400  # ~2,000 words: long enough to be cached

CONFIG = parse_config_text("""
providers:
  - id: claude
    type: anthropic
    base_url: http://claude.test
    api_key: k
    models: [{name: m, price: {input_per_mtok: 3, output_per_mtok: 15, cached_input_per_mtok: 0.3}}]
  - id: gpt
    base_url: http://gpt.test/v1
    models: [{name: m, price: {input_per_mtok: 2, output_per_mtok: 8, cached_input_per_mtok: 1}}]
  - id: free
    base_url: http://free.test/v1
    free_tier: true
    models: [{name: f}]
  - id: claude-f
    type: anthropic
    base_url: http://claude-f.test
    api_key: k
    models: [{name: f, price: {input_per_mtok: 3, output_per_mtok: 15, cached_input_per_mtok: 0.3}}]
  - id: copilot-m
    type: copilot
    api_key: gh
    models: [{name: m, price: {input_per_mtok: 9, output_per_mtok: 9}}]
""")


def _anthropic(turns: list[dict], system: object = SYSTEM) -> RawCall:
    body = {"model": "m", "max_tokens": 100, "system": system, "messages": turns}
    return RawCall("anthropic_messages", body, json.dumps(body).encode())


def _openai(messages: list[dict]) -> RawCall:
    body = {"model": "m", "messages": messages}
    return RawCall("openai_chat", body, json.dumps(body).encode())


# ---- the prefix key --------------------------------------------------------------------------------------

def test_every_turn_of_a_conversation_has_the_same_key_and_another_conversation_another():
    turn1 = [{"role": "user", "content": "review file a"}]
    turn3 = turn1 + [{"role": "assistant", "content": "done"}, {"role": "user", "content": "and b?"},
                     {"role": "assistant", "content": "done"}, {"role": "user", "content": "and c?"}]
    key1, tokens1 = cacheable_prefix(_anthropic(turn1), "m")
    key3, tokens3 = cacheable_prefix(_anthropic(turn3), "m")
    assert key1 == key3 and tokens1 == tokens3 > 1024
    assert cacheable_prefix(_anthropic([{"role": "user", "content": "review file z"}]), "m")[0] != key1
    assert cacheable_prefix(_anthropic(turn1), "other-model")[0] != key1  # caches are per model
    assert cacheable_prefix(_anthropic(turn1, system="Be brief."), "m")[0] != key1


def test_cache_control_markers_do_not_change_the_key():
    marked = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    plain = [{"type": "text", "text": SYSTEM}]
    first = {"role": "user", "content": [{"type": "text", "text": "go", "cache_control": {"type": "ephemeral"}}]}
    moved = {"role": "user", "content": [{"type": "text", "text": "go"}]}
    assert cacheable_prefix(_anthropic([first], marked), "m")[0] == cacheable_prefix(_anthropic([moved], plain), "m")[0]


def test_openai_prefix_is_the_system_messages_and_the_first_message_after_them():
    opening = [{"role": "system", "content": SYSTEM}, {"role": "developer", "content": "tabs"},
               {"role": "user", "content": "hi"}]
    later = opening + [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"}]
    assert cacheable_prefix(_openai(opening), "m") == cacheable_prefix(_openai(later), "m")
    assert cacheable_prefix(_openai(opening[:2] + [{"role": "user", "content": "other"}]), "m") != \
        cacheable_prefix(_openai(opening), "m")
    body = {"model": "m", "input": "x", "previous_response_id": "resp_1"}
    assert cacheable_prefix(RawCall("openai_responses", body, b""), "m") is None


# ---- the router's choice ---------------------------------------------------------------------------------

def _plan(model: str = "m", prompt_tokens: int = 3000, exclude: list[str] | None = None, pinned: str | None = None):
    request = RouteRequest(request_id="r", model=model, estimated_prompt_tokens=prompt_tokens, max_tokens=100,
                           exclude=exclude or [])
    state = RoutingState(pinned=pinned)
    return plan(CONFIG, config_prices(CONFIG), request, state), state


def test_affinity_puts_the_provider_holding_the_prefix_first_while_cache_reads_make_it_cheaper():
    p, state = _plan()
    assert [pc.candidate.provider for pc in p.ordered][:2] == ["gpt", "claude"]  # gpt's input is cheaper
    assert prefer(CONFIG, p, Affinity("claude", 1_000), 2900, state, now_ms=13_500) == "moved"
    assert p.ordered[0].candidate.provider == "claude"
    reason = p.ordered[0].candidate.reason
    assert reason.startswith("cache affinity (prefix cached here 12s ago; est. $0.002670 with cache reads <= "
                             "$0.006800 on gpt), paid, est. $0.010500"), reason


def test_affinity_is_ignored_when_cache_reads_do_not_make_it_cheaper():
    p, state = _plan()
    # a short prefix of a long prompt: cache reads save too little against gpt's lower input price
    assert prefer(CONFIG, p, Affinity("claude", 0), 100, state, now_ms=0) is None
    assert p.ordered[0].candidate.provider == "gpt"
    assert "cache affinity ignored: price (est. $0.010230 with cache reads > $0.006800 on gpt)" in \
        p.ordered[1].candidate.reason


def test_a_free_provider_first_beats_affinity_to_a_paid_one():
    p, state = _plan(model="f")
    assert [pc.candidate.provider for pc in p.ordered] == ["free", "claude-f"]
    assert prefer(CONFIG, p, Affinity("claude-f", 0), 2900, state, now_ms=0) is None
    assert "cache affinity ignored: price" in p.ordered[1].candidate.reason


@pytest.mark.parametrize("case", ["pinned", "excluded", "no cache", "already first"])
def test_affinity_leaves_the_order_alone(case):
    if case == "pinned":
        p, state = _plan(pinned="gpt")
        assert prefer(CONFIG, p, Affinity("claude", 0), 2900, state, 0) is None
        assert "cache affinity ignored: gpt is pinned" in p.ordered[1].candidate.reason
    elif case == "excluded":  # a failover: the provider holding the prefix failed for this request
        p, state = _plan(exclude=["claude"])
        assert prefer(CONFIG, p, Affinity("claude", 0), 2900, state, 0) is None
    elif case == "no cache":  # a type that caches nothing (copilot) has no affinity
        p, state = _plan()
        assert prefer(CONFIG, p, Affinity("copilot-m", 0), 2900, state, 0) is None
    else:
        p, state = _plan()
        assert prefer(CONFIG, p, Affinity("gpt", 0), 2900, state, 0) == "first"
        assert p.ordered[0].candidate.reason.startswith("cache affinity (prefix cached here 0s ago), ")
    assert p.ordered[0].candidate.provider == "gpt"


def test_a_stored_affinity_reads_back():
    assert parse(b"claude 1234") == Affinity("claude", 1234)
    assert parse("a provider id with spaces 5") == Affinity("a provider id with spaces", 5)
    assert parse(None) is None and parse(b"garbage") is None


# ---- the edge: which requests carry a prefix, and when a plan is not enough ------------------------------

class ReusableRouter(FakeRouter):
    async def decide(self, request: RouteRequest) -> RouteDecision:
        decision = await super().decide(request)
        decision.reusable_s = 60.0
        return decision


def _gateway(config_text: str):
    cfg = parse_config_text(config_text)
    router = ReusableRouter(cfg)

    def answer(request) -> MockResponse:
        return MockResponse(json={"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})

    transport = MockTransport(answer)
    providers = {p.id: build_provider(p, transport, Path("/tmp")) for p in cfg.providers}
    return Gateway(Deps(config=cfg, providers=providers, decide=router.decide, report=router.report,
                        publish=Events())), router


TWO_CACHING = """
providers:
  - {id: a, base_url: "http://a.test/v1", models: [{name: m}]}
  - {id: b, base_url: "http://b.test/v1", models: [{name: m}]}
"""
ONE_CACHING_FIRST = """
providers:
  - {id: a, base_url: "http://a.test/v1", models: [{name: m}]}
  - {id: b, type: copilot, api_key: gh, models: [{name: m}]}
"""


async def _ask(gateway: Gateway, system: str) -> None:
    codec = OpenAIChatCodec()
    exchange = codec.parse(json.dumps({"model": "m", "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": "hi"}]}).encode(), {})
    reply = await gateway.handle(exchange, codec)
    assert reply.status == 200


async def test_a_long_prefix_asks_the_router_when_another_candidate_caches_a_short_one_reuses_the_plan():
    gateway, router = _gateway(TWO_CACHING)
    for _ in range(3):
        await _ask(gateway, "short")
    assert len(router.requests) == 1 and router.requests[0].prefix_key is None  # the plan served the rest
    for _ in range(3):
        await _ask(gateway, SYSTEM)
    asked = router.requests[1:]
    assert len(asked) == 3 and len({r.prefix_key for r in asked}) == 1 and asked[0].prefix_tokens > 1024
    # each success reports its prefix, so the router can record who holds it
    assert [o.prefix_key for o in router.outcomes if o.prefix_key] == [asked[0].prefix_key] * 3
    assert router.batched == [True] * 3 + [False] * 3  # who holds a prefix goes at once, not in a batch


async def test_a_plan_where_affinity_cannot_change_the_first_provider_is_reused():
    gateway, router = _gateway(ONE_CACHING_FIRST)  # b (copilot) caches nothing: nobody can overtake a
    for _ in range(3):
        await _ask(gateway, SYSTEM)
    assert len(router.requests) == 1 and router.requests[0].prefix_key


async def test_affinity_off_sends_no_prefix():
    gateway, router = _gateway(TWO_CACHING + "routing: {cache_affinity: {enabled: false}}\n")
    await _ask(gateway, SYSTEM)
    assert router.requests[0].prefix_key is None


def test_anthropic_codec_request_carries_its_prefix():
    codec = AnthropicCodec()
    exchange = codec.parse(json.dumps({"model": "m", "max_tokens": 5, "system": SYSTEM,
                                       "messages": [{"role": "user", "content": "hi"}]}).encode(), {})
    assert cacheable_prefix(exchange.raw, exchange.model) == cacheable_prefix(
        _anthropic([{"role": "user", "content": "hi"}]), "m")


# ---- what caching saved ----------------------------------------------------------------------------------

def test_cache_reads_save_the_difference_to_the_input_price():
    price = CONFIG.provider("claude").model("m").price
    assert price.cache_read_saving(1_000_000) == Decimal("2.7")  # $3 input, $0.30 read
    assert CONFIG.provider("copilot-m").model("m").price.cache_read_saving(1_000_000) == 0  # no cache price


async def test_the_usage_event_says_what_its_cache_reads_saved():
    cfg = parse_config_text("""
providers:
  - id: a
    base_url: http://a.test/v1
    models: [{name: m, price: {input_per_mtok: 2, output_per_mtok: 8, cached_input_per_mtok: 0.5}}]
""")
    router, events = FakeRouter(cfg), Events()

    def answer(request) -> MockResponse:
        return MockResponse(json={"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 3000, "completion_tokens": 2, "total_tokens": 3002,
                                            "prompt_tokens_details": {"cached_tokens": 2000}}})

    transport = MockTransport(answer)
    gateway = Gateway(Deps(config=cfg, providers={"a": build_provider(cfg.providers[0], transport, Path("/tmp"))},
                           decide=router.decide, report=router.report, publish=events))
    await _ask(gateway, "short")
    assert events[0].tokens_cached == 2000 and events[0].cache_saved_usd == Decimal("0.003")
    assert events[0].cost_usd == Decimal("0.003016")  # 1000 x $2 + 2000 x $0.50 + 2 x $8, per million


def test_config_check_names_a_bad_cache_lifetime_and_an_unknown_type_by_path():
    from llmgw_common.config_check import check_text

    report = check_text("""
providers: []
routing:
  cache_affinity:
    ttl_s: {anthropic: 0, mistral: 60}
    min_prefix_tokens: -1
""")
    found = {f.path: f.line for f in report.errors}
    assert {"routing.cache_affinity.ttl_s.anthropic", "routing.cache_affinity.min_prefix_tokens"} <= set(found)
    assert any(p.startswith("routing.cache_affinity.ttl_s") and "mistral" in p + m
               for p, m in ((f.path, f.message) for f in report.errors)), report.errors
    assert found["routing.cache_affinity.min_prefix_tokens"] == 6
