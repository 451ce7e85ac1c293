"""Routing policy (pure): eligibility, rules, aliases, tiers, strategies, pin, smart routing."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timezone
from decimal import Decimal

from llmgw_common.config import Price, parse_config_text
from llmgw_common.messages import AttemptOutcome, RouteRequest
from llmgw_router.main import config_prices
from llmgw_router.outcomes import classify
from llmgw_router.policy import ProviderStats, RoutingState, plan, resolve_targets

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
    specialties: [code]
    models: [{name: m}, {name: other}]
  - id: free-a
    base_url: http://d/v1
    priority: 2
    models: [{name: m, price: {input_per_mtok: 0, output_per_mtok: 0}, context_window: 1000}]
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
  groups: {paid: [pricey, cheap]}
  rules:
    - name: block-secret
      match: {headers: {x-team: secret*}}
      action: {reject: {status: 403, message: team secret may not use the gateway}}
    - name: big-prompts-to-paid
      match: {model: "m", min_prompt_tokens: 5000}
      action: {group: paid}
    - name: vip
      match: {key_ids: [vip]}
      action: {providers: [cheap, pricey], strategy: lowest-cost}
    - name: rewrite-legacy
      match: {model: "legacy-*"}
      action: {model: other}
    - name: streams-round-robin
      match: {stream: true, prompt_class: [conversation]}
      action: {strategy: round-robin}
""")
PRICES = config_prices(CONFIG)


def run(model="m", state=None, config=CONFIG, **kw):
    p = plan(config, PRICES if config is CONFIG else config_prices(config),
             RouteRequest(request_id="r", model=model, **kw), state or RoutingState(), random.Random(7))
    return [pc.candidate.provider for pc in p.ordered], {s.provider: s.reason for s in p.skipped}, p


def test_free_first_then_cheapest_then_unknown_price():
    providers, skipped, _ = run(estimated_prompt_tokens=100, max_tokens=100)
    assert providers == ["free-a", "free-b", "cheap", "pricey", "unpriced"]
    assert skipped == {"switched-off": "disabled"}


def test_alias_and_qualified_names():
    assert run("alias-m")[0][0] == "free-a"
    providers, _, p = run("cheap/m")
    assert providers == ["cheap"] and p.ordered[0].candidate.upstream_model == "vendor/m" and p.model == "m"
    assert run("cheap/vendor/m")[0] == ["cheap"]  # the upstream name works too


def test_unknown_model_is_404():
    _, _, p = run("nope")
    assert p.error.status == 404 and p.error.code == "model_not_found"


def test_context_window_and_exclude():
    providers, skipped, _ = run(estimated_prompt_tokens=900, max_tokens=200)
    assert "free-a" not in providers and "context window of 1000" in skipped["free-a"]
    providers, skipped, _ = run(exclude=["free-a", "free-b"])
    assert providers[0] == "cheap" and skipped["free-a"] == "already tried for this request"


def test_rules_reject_group_providers_rewrite():
    _, _, p = run(headers={"x-team": "secret-ops"})
    assert p.error.status == 403 and p.rule == "block-secret"
    providers, skipped, p = run(estimated_prompt_tokens=6000)
    assert p.rule == "big-prompts-to-paid" and providers == ["cheap", "pricey"]
    assert "not allowed by rule" in skipped["free-a"]
    providers, _, p = run(key_id="vip")
    assert p.strategy == "lowest-cost" and providers == ["cheap", "pricey"]
    providers, _, p = run("legacy-3")
    assert p.rule == "rewrite-legacy" and p.model == "other" and providers == ["free-b"]


def test_priority_strategy_in_free_tier_uses_priority():
    cfg = parse_config_text("""
providers:
  - {id: a, base_url: http://a/v1, free_tier: true, priority: 3, models: [{name: m}]}
  - {id: b, base_url: http://b/v1, free_tier: true, priority: 1, models: [{name: m}]}
  - {id: c, base_url: http://c/v1, free_tier: true, priority: 2, models: [{name: m}]}
""")
    assert run(config=cfg)[0] == ["b", "c", "a"]


def _three(strategy: str, **extra) -> object:
    return parse_config_text(f"""
providers:
  - {{id: a, base_url: http://a/v1, weight: 1, models: [{{name: m, price: {{input_per_mtok: 3}}}}]}}
  - {{id: b, base_url: http://b/v1, weight: 3, models: [{{name: m, price: {{input_per_mtok: 1}}}}]}}
  - {{id: c, base_url: http://c/v1, weight: 0, models: [{{name: m, price: {{input_per_mtok: 2}}}}]}}
routing: {{strategy: {strategy}}}
""")


def test_round_robin_rotates():
    cfg = _three("round-robin")
    firsts = [run(config=cfg, state=RoutingState(rr_counter=i))[0][0] for i in range(6)]
    assert Counter(firsts) == {"a": 2, "b": 2, "c": 2}


def test_weighted_follows_weights_and_skips_zero():
    cfg = _three("weighted")
    rng = random.Random(1)
    firsts = Counter(plan(cfg, config_prices(cfg), RouteRequest(request_id="r", model="m"), RoutingState(),
                          rng).ordered[0].candidate.provider for _ in range(4000))
    assert firsts["c"] == 0 and 2.5 < firsts["b"] / firsts["a"] < 3.5


def test_least_busy_and_lowest_latency_and_lowest_cost():
    busy = RoutingState(stats={"a": ProviderStats(inflight=0), "b": ProviderStats(inflight=5),
                               "c": ProviderStats(inflight=2)})
    assert run(config=_three("least-busy"), state=busy)[0] == ["a", "c", "b"]
    fast = RoutingState(stats={"a": ProviderStats(latency_ms=300), "b": ProviderStats(latency_ms=100),
                               "c": ProviderStats(latency_ms=200)})
    assert run(config=_three("lowest-latency"), state=fast)[0] == ["b", "c", "a"]
    assert run(config=_three("lowest-cost"), estimated_prompt_tokens=1000)[0] == ["b", "c", "a"]


def test_pin_and_smart_specialties():
    providers, _, p = run(state=RoutingState(pinned="pricey"))
    assert providers[0] == "pricey" and "pinned" in p.ordered[0].candidate.reason
    # free-b declares code: with smart routing on it leads the free tier for code prompts
    assert run(state=RoutingState(smart=True), prompt_class="code")[0][:2] == ["free-b", "free-a"]
    assert run(state=RoutingState(smart=False), prompt_class="code")[0][:2] == ["free-a", "free-b"]


def test_resolve_targets_keeps_config_order():
    model, targets = resolve_targets(CONFIG, "m")
    assert model == "m" and [t.provider.id for t in targets] == [
        "pricey", "cheap", "free-b", "free-a", "unpriced", "switched-off"]


def test_outcome_classification():
    r = CONFIG.routing

    def o(**kw):
        base = dict(request_id="r", provider="p", model="m", ok=False, status=500, latency_ms=1.0)
        base.update(kw)
        return classify(AttemptOutcome(**base), r)

    assert o(ok=True, status=200) == ("ok", 0)
    assert o(status=429, retry_after_s=2.5) == ("rate_limited", 2500)
    assert o(status=429) == ("rate_limited", int(r.cooldown_s * 1000))
    assert o(status=503)[0] == "failure" and o(status=0)[0] == "failure" and o(status=401)[0] == "failure"
    assert o(status=400)[0] == "other"


def test_price_cost_is_exact():
    p = Price(input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.6"), cached_input_per_mtok=Decimal("0.075"))
    assert p.cost(1000, 500, cached_in=200) == Decimal("0.000435")


def test_retry_after_comes_from_the_soonest_refusal():
    from llmgw_router.outcomes import retry_after_s

    assert retry_after_s(["cooling down after a 429 (12s left)", "circuit breaker open (30s left)"]) == 12
    assert retry_after_s(["requests_per_minute reached on provider (5/5) (41s left)",
                          "tokens_per_day would be exceeded on model (9 used + ~3 > 10)"]) == 41
    # the script leaves "left" out only when this request alone is over the limit: no wait makes it fit
    assert retry_after_s(["tokens_per_hour would be exceeded on model (0 used + ~30 > 10)"]) is None
    assert retry_after_s(["circuit breaker half-open, a probe is in flight"]) is None
    assert retry_after_s(["cooling down after a 429 (0s left)"]) == 1  # never "retry after 0"


def test_a_full_key_limit_is_named_in_words_with_its_own_wait():
    from llmgw_common.messages import Skipped
    from llmgw_router.outcomes import refusal

    message, wait = refusal("m", [Skipped(provider="p", reason="cooling down after a 429 (3s left)"),
                                  Skipped(provider="q", reason="requests_per_minute reached on key ci (50/50) "
                                                               "(12s left)")])
    # the key is the caller's own limit: it is what they must wait for, not the provider's cooldown
    assert message == "key 'ci' is at its limit of 50 requests per minute; retry after 12 s" and wait == 12
    message, wait = refusal("m", [Skipped(provider="p", reason="cost_per_month budget would be exceeded on key "
                                                               "ci (4990000000 used + ~20000000 > 5000000000 "
                                                               "nano-USD) (86400s left)")])
    assert message == ("key 'ci' would pass its budget of $5.00 per month ($4.99 used, this request ~$0.02); "
                       "retry after 86400 s") and wait == 86400
    message, wait = refusal("m", [Skipped(provider="p", reason="tokens_per_hour would be exceeded on key ci "
                                                               "(0 used + ~300 > 100)")])
    assert message.startswith("key 'ci' would pass its limit of 100 tokens per hour") and wait is None
    assert "retrying cannot help" in message


def test_full_provider_limits_are_said_per_provider():
    from llmgw_common.messages import Skipped
    from llmgw_router.outcomes import refusal

    message, wait = refusal("tiny", [
        Skipped(provider="p", reason="requests_per_minute reached on model (1/1) (41s left)"),
        Skipped(provider="q", reason="tokens_per_day would be exceeded on provider (90 used + ~20 > 100) "
                                     "(900s left)"),
        Skipped(provider="r", reason="disabled")])
    assert message == ("No provider can take a request for `tiny` now: p: model 'tiny' on provider 'p' is at its "
                       "limit of 1 request per minute (retry after 41 s); q: provider 'q' would pass its limit of "
                       "100 tokens per day (90 used, this request ~20) (retry after 900 s); r: disabled")
    assert wait == 41


# ---- plans an edge may reuse (routes without limits) --------------------------------------

def _reusable(config_text: str, request: RouteRequest | None = None, key=None) -> bool:
    from llmgw_router.policy import plan_reusable

    config = parse_config_text(config_text)
    request = request or RouteRequest(request_id="r", model="m")
    return plan_reusable(config, plan(config, config_prices(config), request, RoutingState(), key=key), request, key)


REUSABLE = """
providers:
  - id: free
    base_url: http://a/v1
    free_tier: true
    models: [{name: m}]
  - id: paid
    base_url: http://b/v1
    models: [{name: m, price: {input_per_mtok: 1, output_per_mtok: 2}}]
"""


def test_a_plan_without_limits_is_reusable():
    assert _reusable(REUSABLE)


PER_REQUEST = REUSABLE + "routing: {leases: false}\n"  # leases off: the router admits each limited request


def test_a_limit_on_any_provider_or_model_in_the_plan_makes_each_request_the_routers():
    assert not _reusable(PER_REQUEST.replace("free_tier: true", "free_tier: true\n    limits: {requests_per_day: 1000000}"))
    assert not _reusable(PER_REQUEST.replace("output_per_mtok: 2}", "output_per_mtok: 2}, limits: {cost_per_day: 5}"))


def test_a_key_with_limits_makes_each_request_the_routers():
    from llmgw_common.keys import KeyLimits, KeyRecord

    def key(limits: KeyLimits) -> KeyRecord:
        return KeyRecord(id="0123456789ab", name="k", hash="0" * 64, prefix="p", limits=limits,
                         created_at=datetime.now(timezone.utc))

    request = RouteRequest(request_id="r", model="m", key_id="0123456789ab")
    assert _reusable(PER_REQUEST, request, key(KeyLimits()))
    assert not _reusable(PER_REQUEST, request, key(KeyLimits(cost_per_month=Decimal("0.5"))))


def test_with_leases_on_a_plan_with_limits_is_reusable_the_edge_admits_from_leases():
    from llmgw_common.keys import KeyLimits, KeyRecord

    leased = REUSABLE + "routing: {leases: true}\n"
    assert _reusable(leased.replace("free_tier: true", "free_tier: true\n    limits: {requests_per_minute: 20}"))
    key = KeyRecord(id="0123456789ab", name="k", hash="0" * 64, prefix="p",
                    limits=KeyLimits(cost_per_month=Decimal("0.5")), created_at=datetime.now(timezone.utc))
    assert _reusable(leased, RouteRequest(request_id="r", model="m", key_id=key.id), key)
    # what the plan's key does not hold still makes each request the router's
    assert not _reusable(leased.replace("models: [{name: m}]", "models: [{name: m, context_window: 100000}]"))


def test_what_the_plans_cache_key_does_not_hold_makes_each_request_the_routers():
    # rules on headers, prompt size or stream; a context window; two paid providers ordered by each estimate
    assert not _reusable(REUSABLE + """routing:
  rules: [{name: r, match: {headers: {x-team: a*}}, action: {providers: [paid]}}]
""")
    assert _reusable(REUSABLE + """routing:
  rules: [{name: r, match: {model: "x*", prompt_class: [code]}, action: {providers: [paid]}}]
""")
    assert not _reusable(REUSABLE.replace("models: [{name: m}]", "models: [{name: m, context_window: 100000}]"))
    assert not _reusable(REUSABLE + """  - id: paid2
    base_url: http://c/v1
    models: [{name: m, price: {input_per_mtok: 3, output_per_mtok: 1}}]
""")
    # a failover (providers excluded)
    assert not _reusable(REUSABLE, RouteRequest(request_id="r", model="m", exclude=["free"]))


def test_under_a_strategy_the_edge_runs_every_candidate_must_be_healthy_and_groups_keep_the_tiers():
    from llmgw_router.policy import plan_groups, plan_reusable

    config = parse_config_text(REUSABLE + """  - id: free2
    base_url: http://c/v1
    free_tier: true
    models: [{name: m}]
routing: {strategy: round-robin}
""")
    request = RouteRequest(request_id="r", model="m")
    healthy = RoutingState(stats={p: ProviderStats() for p in ("free", "paid", "free2")})
    p = plan(config, config_prices(config), request, healthy)
    assert plan_reusable(config, p, request, None, healthy)
    assert [pc.candidate.provider for pc in p.ordered][-1] == "paid"
    assert plan_groups(p, healthy, request) == [0, 0, 1]  # the two free ones rotate; paid stays after them
    cooling = RoutingState(stats={**healthy.stats, "free2": ProviderStats(cooldown_ms=3000)})
    assert not plan_reusable(config, p, request, None, cooling)
    half_open = RoutingState(stats={**healthy.stats, "paid": ProviderStats(breaker="half-open")})
    assert not plan_reusable(config, p, request, None, half_open)
    pinned = RoutingState(pinned="free2", stats=healthy.stats)
    p = plan(config, config_prices(config), request, pinned)
    assert [pc.candidate.provider for pc in p.ordered][0] == "free2" and plan_groups(p, pinned, request) == [0, 1, 2]
