"""Routing policy (pure): eligibility, limits, free first, cheapest, priority."""

from __future__ import annotations

from decimal import Decimal

from llmgw_common.config import Price, parse_config_text
from llmgw_common.messages import RouteRequest
from llmgw_common.windows import model_scope, provider_scope, usd_to_nano
from llmgw_router.main import config_prices
from llmgw_router.policy import decide, limit_breach, resolve_targets

CONFIG = parse_config_text("""
providers:
  - id: pricey
    base_url: http://a/v1
    priority: 1
    models: [{name: m, price: {input_per_mtok: 10, output_per_mtok: 30}}]
  - id: cheap
    base_url: http://b/v1
    priority: 9
    models: [{name: m, upstream: vendor/m, price: {input_per_mtok: 1, output_per_mtok: 2}}]
  - id: free-b
    base_url: http://c/v1
    free_tier: true
    priority: 5
    limits: {requests_per_minute: 10, cost_per_day: 1}
    models: [{name: m}, {name: other}]
  - id: free-a
    base_url: http://d/v1
    priority: 2
    models: [{name: m, price: {input_per_mtok: 0, output_per_mtok: 0}, limits: {tokens_per_hour: 100}}]
  - id: unpriced
    base_url: http://e/v1
    priority: 0
    models: [{name: m}]
  - id: switched-off
    base_url: http://f/v1
    enabled: false
    models: [{name: m}]
routing:
  aliases: {alias-m: m}
""")
PRICES = config_prices(CONFIG)


def order(model="m", windows=None, **kw):
    d = decide(CONFIG, PRICES, RouteRequest(request_id="r", model=model, **kw), windows or {})
    return [c.provider for c in d.candidates], {s.provider: s.reason for s in d.skipped}, d


def test_free_first_then_cheapest_then_unknown_price():
    providers, skipped, _ = order(estimated_prompt_tokens=100, max_tokens=100)
    assert providers == ["free-a", "free-b", "cheap", "pricey", "unpriced"]
    assert skipped == {"switched-off": "disabled"}


def test_alias_and_qualified_names():
    assert order("alias-m")[0][0] == "free-a"
    providers, _, d = order("cheap/m")
    assert providers == ["cheap"] and d.candidates[0].upstream_model == "vendor/m"
    assert order("cheap/vendor/m")[0] == ["cheap"]  # the upstream name works too


def test_unknown_model_is_404():
    _, _, d = order("nope")
    assert d.error.status == 404 and d.error.code == "model_not_found"


def test_limits_skip_providers_and_say_why():
    windows = {
        provider_scope("free-b"): {"minute": {"req": 10}},
        model_scope("free-a", "m"): {"hour": {"tin": 60, "tout": 40}},
    }
    providers, skipped, _ = order(windows=windows)
    assert providers[:2] == ["cheap", "pricey"]
    assert "requests_per_minute reached (10/10)" in skipped["free-b"]
    assert "tokens_per_hour reached (100/100)" in skipped["free-a"]


def test_cost_limit():
    assert limit_breach(CONFIG.provider("free-b").limits, {"day": {"cost": usd_to_nano(Decimal("1.0"))}})
    assert limit_breach(CONFIG.provider("free-b").limits, {"day": {"cost": usd_to_nano(Decimal("0.99"))}}) is None


def test_everything_limited_is_429_with_reasons():
    cfg = parse_config_text("""
providers:
  - id: only
    base_url: http://a/v1
    limits: {requests_per_minute: 1}
    models: [{name: x}]
""")
    d = decide(cfg, {}, RouteRequest(request_id="r", model="x"), {provider_scope("only"): {"minute": {"req": 1}}})
    assert d.error.status == 429 and "only: requests_per_minute" in d.error.message


def test_resolve_targets_keeps_config_order():
    model, targets = resolve_targets(CONFIG, "m")
    assert model == "m" and [t.provider.id for t in targets] == ["pricey", "cheap", "free-b", "free-a", "unpriced", "switched-off"]


def test_price_cost_is_exact():
    p = Price(input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.6"), cached_input_per_mtok=Decimal("0.075"))
    assert p.cost(1000, 500, cached_in=200) == Decimal("0.000435")
