"""Plans the edge reuses for routes without limits (core/plans.py): in-process, a fake router that marks its
decisions reusable, providers on a mock transport. The real router's side (when a plan is reusable) is in
tests/unit/test_router_policy.py; the whole stack with its routers stopped in tests/e2e/test_plans.py."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

from edge_fakes import Events, FakeRouter, MockResponse, MockTransport
from llmgw_common.config import GatewayConfig
from llmgw_common.messages import Candidate, RouteDecision, RouteRequest
from llmgw_edge.core.errors import GatewayError
from llmgw_edge.core.gateway import Deps, Gateway
from llmgw_edge.core.plans import AWAY_S, REFRESH_S, PlanCache
from llmgw_edge.core.strategies import EdgeLoad, ordered
from llmgw_edge.providers import build_provider
from llmgw_edge.api.openai_chat import OpenAIChatCodec

USER = [{"role": "user", "content": "hello"}]


def _config() -> GatewayConfig:
    return GatewayConfig.model_validate({"version": 1, "routing": {"retry": {"attempts": 0}}, "providers": [
        {"id": pid, "type": "openai", "base_url": f"http://{pid}.test/v1", "api_key": f"key-{pid}",
         "models": [{"name": "m"}]} for pid in ("a", "b")]})


def _completion() -> dict:
    return {"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}


class Router(FakeRouter):
    """Marks every decision reusable (a route without limits); can be made unreachable."""

    def __init__(self, config: GatewayConfig):
        super().__init__(config)
        self.away = False
        self.strategy = "priority"

    async def decide(self, request: RouteRequest) -> RouteDecision:
        if self.away:
            self.requests.append(copy.deepcopy(request))
            raise GatewayError(503, "the router did not answer", code="router_unavailable")
        decision = await super().decide(request)
        decision.reusable_s = 60.0
        decision.strategy = self.strategy
        if self.strategy != "priority":
            decision.groups = [0] * len(decision.candidates)
        return decision


class Harness:
    def __init__(self, failing: set[str] | None = None):
        self.failing = failing if failing is not None else set()
        self.sent: list[str] = []
        cfg = _config()
        self.router = Router(cfg)
        self.events = Events()
        self.keys: dict[str, object] = {}
        transport = MockTransport(self._answer)
        providers = {p.id: build_provider(p, transport, Path("/tmp")) for p in cfg.providers}
        self.gateway = Gateway(Deps(config=cfg, providers=providers, decide=self.router.decide,
                                    report=self.router.report, publish=self.events,
                                    key_record=lambda key_id: self.keys.get(key_id or "")))

    def _answer(self, request) -> MockResponse:
        provider = request.url.split("//")[1].split(".")[0]
        self.sent.append(provider)
        if provider in self.failing:
            return MockResponse(503, json={"error": {"message": "down"}})
        return MockResponse(json=_completion())

    async def ask(self, key_id: str | None = None):
        codec = OpenAIChatCodec()
        exchange = codec.parse(json.dumps({"model": "m", "messages": USER}).encode(), {})
        exchange.key_id = key_id
        return await self.gateway.handle(exchange, codec)


async def test_a_reusable_plan_routes_the_next_requests_without_asking():
    h = Harness()
    for _ in range(3):
        reply = await h.ask()
        assert reply.status == 200 and reply.headers["x-llmgw-provider"] == "a"
    assert len(h.router.requests) == 1
    # the admission belonged to the first request; the others reserved nothing (usage counts them in full)
    assert h.events[0].reservation is not None
    assert [e.reservation for e in h.events[1:]] == [None, None]


async def test_an_announced_change_makes_the_edge_ask_again():
    h = Harness()
    await h.ask()
    h.gateway.plans.drop_all()  # what the edge does on llmgw.router.changed and on a config change
    await h.ask()
    assert len(h.router.requests) == 2


async def test_a_provider_failing_here_fails_over_through_the_router_and_the_plan_is_asked_again():
    h = Harness()
    await h.ask()
    h.failing.add("a")
    reply = await h.ask()
    assert reply.headers["x-llmgw-provider"] == "b"
    assert [r.exclude for r in h.router.requests] == [[], ["a"]]  # the failover asked the router
    h.failing.clear()
    await h.ask()
    assert len(h.router.requests) == 3 and h.router.requests[2].exclude == []


async def test_with_the_router_away_a_route_without_limits_keeps_serving_on_its_plan():
    h = Harness()
    await h.ask()
    h.gateway.plans.drop_all()
    await h.ask()  # a plan again
    for plan in h.gateway.plans._plans.values():
        plan.fresh_until = 0.0  # aged out
    h.router.away = True
    for _ in range(3):
        assert (await h.ask()).status == 200
    # asked once, found nobody, then served at once on the old plan for AWAY_S
    assert len(h.router.requests) == 3 and h.gateway.plans.serving_without_router


async def test_with_the_router_away_and_no_plan_the_request_is_refused_cleanly():
    h = Harness()
    h.router.away = True
    try:
        await h.ask()
    except GatewayError as err:
        assert err.status == 503 and err.code == "router_unavailable"
    else:
        raise AssertionError("served without a plan or a router")
    assert h.sent == []


async def test_a_changed_key_record_asks_again():
    h = Harness()
    h.keys["k1"] = object()
    await h.ask("k1")
    await h.ask("k1")
    h.keys["k1"] = object()  # the key was edited (its providers or limits may differ)
    await h.ask("k1")
    assert len(h.router.requests) == 2


def test_a_plan_asked_for_before_a_drop_is_not_kept():
    cache = PlanCache(clock=lambda: 100.0)
    request = RouteRequest(request_id="r", model="m")
    decision = RouteDecision(request_id="r", model="m", reusable_s=5.0,
                             candidates=[Candidate(provider="a", model="m", upstream_model="m")])
    generation = cache.generation
    cache.drop_all()  # an announcement came while the router was answering
    cache.keep(request, None, decision, generation)
    assert cache.fresh(request, None) is None
    cache.keep(request, None, decision, cache.generation)
    assert cache.fresh(request, None) is not None


def test_a_plan_ages_out_and_serves_only_while_the_router_is_away():
    now = [100.0]
    cache = PlanCache(clock=lambda: now[0])
    request = RouteRequest(request_id="r", model="m")
    decision = RouteDecision(request_id="r", model="m", reusable_s=5.0,
                             candidates=[Candidate(provider="a", model="m", upstream_model="m")])
    cache.keep(request, None, decision, cache.generation)
    now[0] = 106.0
    assert cache.fresh(request, None) is None
    assert cache.stale(request, None) is not None  # the router could not be reached
    assert cache.fresh(request, None) is not None and cache.serving_without_router
    now[0] += AWAY_S
    assert cache.fresh(request, None) is None
    cache.keep(request, None, decision, cache.generation)  # a router answered again
    assert not cache.serving_without_router


def test_an_aged_out_plan_is_asked_for_by_one_request_while_the_others_route_on_it():
    now = [100.0]
    cache = PlanCache(clock=lambda: now[0])
    request = RouteRequest(request_id="r", model="m")
    decision = RouteDecision(request_id="r", model="m", reusable_s=5.0,
                             candidates=[Candidate(provider="a", model="m", upstream_model="m")])
    cache.keep(request, None, decision, cache.generation)
    now[0] = 105.0
    assert cache.fresh(request, None) is None  # the first asks
    assert cache.fresh(request, None) is not None  # the others, while it does
    now[0] += REFRESH_S
    assert cache.fresh(request, None) is None  # no new plan came: asked again
    cache.expire("a")  # a provider of it failed here: every request asks
    assert cache.fresh(request, None) is None and cache.fresh(request, None) is None


def test_a_decision_that_is_not_reusable_is_never_kept():
    cache = PlanCache()
    request = RouteRequest(request_id="r", model="m")
    decision = RouteDecision(request_id="r", model="m",
                             candidates=[Candidate(provider="a", model="m", upstream_model="m")])
    cache.keep(request, None, decision, cache.generation)
    assert len(cache) == 0 and cache.stale(request, None) is None


# ---- strategies the edge runs on a plan (core/strategies.py) ---------------------------------------

def _plan(strategy: str, providers: list[str], groups: list[int]) -> RouteDecision:
    return RouteDecision(request_id="r", model="m", strategy=strategy, reusable_s=5.0, groups=groups,
                         candidates=[Candidate(provider=p, model="m", upstream_model="m") for p in providers])


def _firsts(plan: RouteDecision, load: EdgeLoad, config: GatewayConfig, n: int) -> list[str]:
    return [ordered(plan, load, config).candidates[0].provider for _ in range(n)]


def test_round_robin_on_a_plan_rotates_within_a_group_never_across():
    config = _config()
    plan = _plan("round-robin", ["a", "b", "c"], [0, 0, 1])  # c: another tier, always last
    load = EdgeLoad()
    assert Counter(_firsts(plan, load, config, 10)) == {"a": 5, "b": 5}
    assert all(ordered(plan, load, config).candidates[2].provider == "c" for _ in range(4))


def test_least_busy_and_lowest_latency_on_a_plan_use_this_edges_own_figures():
    config, load = _config(), EdgeLoad()
    busy = _plan("least-busy", ["a", "b"], [0, 0])
    assert _firsts(busy, load, config, 1) == ["a"]  # a tie: the router's order
    load.started("a")
    assert _firsts(busy, load, config, 1) == ["b"]
    load.ended("a")
    fast = _plan("lowest-latency", ["a", "b"], [0, 0])
    load.succeeded("a", 300.0)
    assert _firsts(fast, load, config, 1) == ["b"]  # unmeasured first, so it gets measured
    load.succeeded("b", 900.0)
    assert _firsts(fast, load, config, 1) == ["a"]


def test_weighted_on_a_plan_follows_the_weights_and_weight_zero_goes_last():
    config = GatewayConfig.model_validate({"version": 1, "providers": [
        {"id": pid, "type": "openai", "base_url": f"http://{pid}.test/v1", "weight": w, "models": [{"name": "m"}]}
        for pid, w in (("a", 3), ("b", 1), ("z", 0))]})
    plan, load = _plan("weighted", ["a", "b", "z"], [0, 0, 0]), EdgeLoad()
    firsts = Counter(_firsts(plan, load, config, 400))
    assert set(firsts) == {"a", "b"} and firsts["a"] > 2 * firsts["b"]
    assert ordered(plan, load, config).candidates[-1].provider == "z"


async def test_a_plan_under_least_busy_sends_to_the_provider_with_fewer_requests_here():
    h = Harness()
    h.router.strategy = "least-busy"
    await h.ask()
    h.gateway.load.started("a")  # a request of this edge still in flight on a
    reply = await h.ask()
    assert reply.headers["x-llmgw-provider"] == "b" and len(h.router.requests) == 1
