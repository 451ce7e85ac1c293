"""Routing policy (pure): which providers may serve a request, in which order, and why.

``plan`` turns a request into an ordered list of candidates:

1. rules (first match wins) may reject, rewrite the model, restrict the
   providers (a list or a group) or override the strategy;
2. the model is resolved (aliases, ``provider/model``) to every provider
   that serves it; disabled providers, providers already tried for this
   request and models that cannot serve it are skipped (capabilities the request needs, a context window too
   small: ``model_fit``); when the window left none, or the edge asks for an upstream refusal's fallback,
   the ``routing.fallbacks`` models are planned instead;
3. the order: a pinned provider first, then the free tier (price 0 or
   ``free_tier``), then paid; within a tier, providers whose specialties
   match the prompt class (smart routing) first, then the strategy.

Limits, cooldowns and breakers are checked afterwards, atomically in Redis
(``admission.py``), in this order.
"""

from __future__ import annotations

import fnmatch
import random
from dataclasses import dataclass, field
from decimal import Decimal

from llmgw_common.config import GatewayConfig, Limits, Price, ProviderConfig, Rule
from llmgw_common.keys import KeyRecord
from llmgw_common.messages import Candidate, ErrorInfo, RouteRequest, Skipped

from . import model_fit

PriceBook = dict[tuple[str, str], Price | None]  # (provider, upstream model) -> price
# (provider, upstream model) -> what the price tables say it can serve (the config's capabilities win)
CapabilityBook = dict[tuple[str, str], dict[str, bool]]


@dataclass(frozen=True)
class Target:
    provider: ProviderConfig
    model: str  # logical
    upstream_model: str


@dataclass
class ProviderStats:
    """Live health of one provider, as last read from Redis (shared by every router replica)."""

    inflight: int = 0
    latency_ms: float | None = None  # moving average of successful attempts
    cooldown_ms: int = 0  # left
    breaker: str = "closed"  # closed | open | half-open


@dataclass
class RoutingState:
    pinned: str | None = None
    smart: bool = False
    stats: dict[str, ProviderStats] = field(default_factory=dict)
    rr_counter: int = 0


@dataclass
class PlannedCandidate:
    candidate: Candidate
    limits: list[tuple[str, Limits]]  # (scope kind "provider" | "model", limits)
    est_tokens_in: int
    est_tokens_out: int
    est_cost: Decimal
    specialties: tuple[str, ...] = ()  # the provider's (smart routing)


@dataclass
class Plan:
    model: str
    ordered: list[PlannedCandidate]
    skipped: list[Skipped]
    strategy: str
    rule: str | None = None
    error: ErrorInfo | None = None
    fallback: str | None = None  # the routing.fallbacks kind whose models were planned


def resolve_targets(config: GatewayConfig, requested: str) -> tuple[str, list[Target]]:
    """Logical model name and every (provider, model) that could serve it, in config order."""
    head, sep, tail = requested.partition("/")
    if sep and config.provider(head) is not None:
        # "provider/model" names one provider; the model may itself contain "/"
        provider = config.provider(head)
        model = config.routing.aliases.get(tail, tail)
        m = provider.model(model) or next((x for x in provider.models if x.upstream_name == tail), None)
        return (m.name if m else requested), [Target(provider, m.name, m.upstream_name)] if m else []
    model = config.routing.aliases.get(requested, requested)
    targets = [Target(p, model, p.model(model).upstream_name) for p in config.providers if p.model(model)]
    return model, targets


def rule_matches(rule: Rule, request: RouteRequest) -> bool:
    m = rule.match
    if m.model is not None and not fnmatch.fnmatchcase(request.model, m.model):
        return False
    for name, pattern in m.headers.items():
        value = request.headers.get(name.lower())
        if value is None or not fnmatch.fnmatchcase(value, pattern):
            return False
    if m.key_ids is not None and request.key_id not in m.key_ids:
        return False
    if m.min_prompt_tokens is not None and request.estimated_prompt_tokens < m.min_prompt_tokens:
        return False
    if m.max_prompt_tokens is not None and request.estimated_prompt_tokens > m.max_prompt_tokens:
        return False
    if m.stream is not None and request.stream != m.stream:
        return False
    if m.prompt_class is not None and request.prompt_class not in m.prompt_class:
        return False
    return True


def first_matching_rule(config: GatewayConfig, request: RouteRequest) -> Rule | None:
    return next((r for r in config.routing.rules if rule_matches(r, request)), None)


def is_free(provider: ProviderConfig, price: Price | None) -> bool:
    return provider.free_tier or (price is not None and price.is_free)


_RNG = random.Random()  # one per process: a new Random() per request seeds from the OS (a syscall) each time


def plan(config: GatewayConfig, prices: PriceBook, request: RouteRequest, state: RoutingState,
         rng: random.Random | None = None, key: KeyRecord | None = None,
         capabilities: CapabilityBook | None = None) -> Plan:
    """``key``: the caller's gateway key, whose provider list narrows the candidates (its limits are
    checked at admission, with the providers'). ``capabilities``: the price tables' (pricing service)."""
    rng = rng or _RNG
    rule = first_matching_rule(config, request)
    action = rule.action if rule else None
    strategy = (action.strategy if action and action.strategy else None) or config.routing.strategy
    if action and action.reject:
        return Plan(request.model, [], [], strategy, rule.name, ErrorInfo(
            status=action.reject.status, code="rejected_by_rule", message=action.reject.message))

    requested = action.model if action and action.model else request.model
    model, targets = resolve_targets(config, requested)
    if not targets:
        return Plan(request.model, [], [], strategy, rule.name if rule else None, ErrorInfo(
            status=404, code="model_not_found",
            message=f"The model `{requested}` does not exist or no configured provider serves it."))

    allowed: list[str] | None = None
    if action and action.providers is not None:
        allowed = action.providers
    elif action and action.group is not None:
        allowed = config.routing.groups[action.group]

    est_in = request.estimated_prompt_tokens
    # embeddings produce no output tokens; chat reserves its answer size
    est_out = 0 if request.endpoint == "embeddings" else request.max_tokens or config.routing.default_max_tokens
    rule_name = rule.name if rule else None
    exclude = request.exclude[request.exclude_from:]

    def candidates(model_targets: list[Target], fallback: str | None) -> tuple[list[PlannedCandidate], list[Skipped]]:
        eligible, skipped = _eligible(config, prices, capabilities or {}, request, model_targets, allowed, key,
                                      rule_name, exclude, est_in, est_out)
        ordered = _order(eligible, strategy, state, request, allowed, rng)
        for pc in ordered:
            pc.candidate.reason = _reason(pc, strategy, state, request)
            if fallback is not None:
                pc.candidate.reason = f"{fallback} fallback from {model}, " + pc.candidate.reason
        if fallback is not None:
            skipped = [Skipped(provider=sk.provider, reason=f"{sk.reason} ({fallback} fallback)") for sk in skipped]
        return ordered, skipped

    why = request.fallback
    ordered: list[PlannedCandidate] = []
    skipped: list[Skipped] = []
    if why is None:
        ordered, skipped = candidates(targets, None)
        if not ordered and model_fit.window_refused_all(skipped):
            why = "context_window"  # too long for every provider of the model: its larger-window fallbacks
    if why is not None:
        for fallback in model_fit.fallback_models(config, why, model, requested):
            more, more_skipped = candidates(resolve_targets(config, fallback)[1], model_fit.FALLBACK_WORDS[why])
            ordered += more
            skipped += more_skipped
        if not ordered and request.fallback is not None and not skipped:
            return Plan(model, [], [], strategy, rule_name, model_fit.no_fallback(model, why))
    error = None if ordered else model_fit.unservable(model, request, skipped, est_in)
    served = ordered[0].candidate.model if ordered and why is not None else model
    return Plan(served, ordered, skipped, strategy, rule_name, error, why if ordered else None)


def _eligible(config: GatewayConfig, prices: PriceBook, known: CapabilityBook, request: RouteRequest,
              targets: list[Target],
              allowed: list[str] | None, key: KeyRecord | None, rule_name: str | None, exclude: list[str],
              est_in: int, est_out: int) -> tuple[list[tuple[int, Target, PlannedCandidate]], list[Skipped]]:
    """The targets that may serve this request (with their estimates), and why the others may not."""
    eligible: list[tuple[int, Target, PlannedCandidate]] = []
    skipped: list[Skipped] = []
    for index, t in enumerate(targets):
        p = t.provider
        m = p.model(t.model)
        assert m is not None
        unfit = model_fit.unfit_reason(m, request, est_in, known.get((p.id, t.upstream_model)))
        if allowed is not None and p.id not in allowed:
            skipped.append(Skipped(provider=p.id, reason=f"not allowed by rule {rule_name!r}"))
        elif key is not None and not key.allows_provider(p.id):
            skipped.append(Skipped(provider=p.id, reason=f"not allowed for key {key.name!r}"))
        elif not p.enabled:
            skipped.append(Skipped(provider=p.id, reason="disabled"))
        elif p.id in exclude:
            skipped.append(Skipped(provider=p.id, reason=f"{model_fit.ALREADY_TRIED} for this request"))
        elif unfit is not None:
            skipped.append(Skipped(provider=p.id, reason=unfit))
        else:
            price = prices.get((p.id, t.upstream_model))
            free = is_free(p, price)
            cost = Decimal(0) if free or price is None else price.cost(est_in, est_out)
            cand = Candidate(provider=p.id, model=t.model, upstream_model=t.upstream_model, price=price, free=free)
            eligible.append((index, t, PlannedCandidate(cand, [("provider", p.limits), ("model", m.limits)],
                                                        est_in, est_out, cost, tuple(p.specialties))))
    return eligible, skipped


# strategies whose order an edge may reuse as it is: the same for every request with the same model, key and
# prompt class; the others an edge runs itself on the plan, within each group (``plan_groups``)
FIXED_ORDER_STRATEGIES = frozenset({"priority", "lowest-cost"})
EDGE_STRATEGIES = frozenset({"round-robin", "weighted", "least-busy", "lowest-latency"})


def limited(limits: Limits) -> bool:
    return any(v is not None for v in limits.__dict__.values())


def plan_reusable(config: GatewayConfig, p: Plan, request: RouteRequest, key: KeyRecord | None,
                  state: RoutingState | None = None) -> bool:
    """Whether an edge may route every request for this model (and key and prompt class) on this plan
    without asking again, until a change is announced: nothing in it draws on a limit, and nothing of the
    request beyond those three chose or ordered it. Else the router admits each request. Under a strategy
    the edge runs itself (it may put any candidate of a group first) every candidate must be healthy."""
    if p.error is not None or request.exclude:
        return False
    if p.strategy not in FIXED_ORDER_STRATEGIES:
        if p.strategy not in EDGE_STRATEGIES or state is None:
            return False
        if any(unavailable(state.stats.get(pc.candidate.provider)) is not None
               or state.stats.get(pc.candidate.provider, ProviderStats()).breaker != "closed" for pc in p.ordered):
            return False
    leased = config.routing.leases  # limits are then the edge's leases' business (docs/routing.md)
    if key is not None and limited(key.limits) and not leased:
        return False
    if any(r.match.headers or r.match.min_prompt_tokens is not None or r.match.max_prompt_tokens is not None
           or r.match.stream is not None for r in config.routing.rules):
        return False  # a rule looks at more of the request than the plan's cache key holds
    if any(s.reason.startswith(model_fit.TOO_LONG) for s in p.skipped) or request.fallback is not None:
        return False  # a context window skipped a provider for this prompt's size, or a fallback model serves
    paid_priced = 0
    for pc in p.ordered:
        provider = config.provider(pc.candidate.provider)
        model = provider.model(pc.candidate.model) if provider is not None else None
        if provider is None or model is None:
            return False
        if not leased and (limited(provider.limits) or limited(model.limits)):
            return False
        if model.context_window is not None:
            return False  # another prompt's size may not fit it
        paid_priced += not pc.candidate.free and pc.candidate.price is not None
    return paid_priced <= 1  # paid providers are ordered by each request's estimated cost


def plan_groups(p: Plan, state: RoutingState, request: RouteRequest) -> list[int]:
    """For each candidate in order, its group: candidates with the same pin, tier (free, paid) and smart
    routing match are next to each other, and a strategy orders them only among themselves."""
    groups: list[int] = []
    last: tuple | None = None
    for pc in p.ordered:
        c = pc.candidate
        provider_specialties = () if not (state.smart and request.prompt_class) else pc.specialties
        key = (state.pinned == c.provider, c.free, request.prompt_class in provider_specialties)
        if key != last:
            groups.append(groups[-1] + 1 if groups else 0)
            last = key
        else:
            groups.append(groups[-1])
    return groups


def unavailable(stats: ProviderStats | None) -> str | None:
    """Why a provider cannot be tried now (cooling down, breaker open), as last read from Redis; None: it can.
    For questions that are planned, never admitted (count_tokens): admission checks the same atomically."""
    if stats is None:
        return None
    if stats.cooldown_ms > 0:
        return f"cooling down after a 429 ({-(-stats.cooldown_ms // 1000)}s left)"
    if stats.breaker == "open":
        return "circuit breaker open"
    return None


def _order(eligible: list[tuple[int, Target, PlannedCandidate]], strategy: str, state: RoutingState,
           request: RouteRequest, allowed: list[str] | None, rng: random.Random) -> list[PlannedCandidate]:
    n = max(len(eligible), 1)

    def strategy_key(index: int, t: Target, pc: PlannedCandidate) -> tuple:
        p = t.provider
        priority = allowed.index(p.id) if allowed is not None and p.id in allowed else p.priority
        stats = state.stats.get(p.id, ProviderStats())
        unknown_price = pc.candidate.price is None and not pc.candidate.free
        cost_key = (unknown_price, pc.est_cost)
        if strategy == "round-robin":
            return ((index - state.rr_counter) % n,)
        if strategy == "weighted":
            # Efraimidis-Spirakis: a weighted random permutation; weight 0 goes last
            return (0, -(rng.random() ** (1.0 / p.weight))) if p.weight > 0 else (1, 0.0)
        if strategy == "least-busy":
            return (stats.inflight, priority)
        if strategy == "lowest-latency":
            # unmeasured providers first, so they get measured
            return (stats.latency_ms or 0.0, priority)
        # priority and lowest-cost: cheapest first (all free-tier providers cost 0), then priority
        if strategy == "lowest-cost":
            return (*cost_key, priority)
        return (*cost_key, priority) if not pc.candidate.free else (priority,)

    def key(item: tuple[int, Target, PlannedCandidate]) -> tuple:
        index, t, pc = item
        pinned = 0 if state.pinned == t.provider.id else 1
        tier = 0 if pc.candidate.free else 1
        specialty = 0 if (state.smart and request.prompt_class
                          and request.prompt_class in t.provider.specialties) else 1
        return (pinned, tier, specialty, strategy_key(index, t, pc), index)

    return [pc for _, _, pc in sorted(eligible, key=key)]


def _reason(pc: PlannedCandidate, strategy: str, state: RoutingState, request: RouteRequest) -> str:
    c = pc.candidate
    parts = []
    if state.pinned == c.provider:
        parts.append("pinned")
    parts.append("free tier" if c.free else ("paid, price unknown" if c.price is None
                                             else f"paid, est. ${pc.est_cost:.6f}"))
    if state.smart and request.prompt_class:
        parts.append(f"prompt class {request.prompt_class}")
    parts.append(f"strategy {strategy}")
    return ", ".join(parts)
