"""Routing policy (pure): which providers may serve a request, in which order, and why.

The walking-skeleton policy: providers that serve the model (after aliases, or
the one named by ``provider/model``), skip disabled ones and ones over any
configured limit in the live windows, then free tier first, then cheapest
estimated cost, then configured priority, then config order.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from llmgw_common.config import GatewayConfig, Limits, Price, ProviderConfig
from llmgw_common.messages import Candidate, ErrorInfo, RouteDecision, RouteRequest, Skipped
from llmgw_common.windows import model_scope, nano_to_usd, provider_scope

# window totals as read from Redis: {scope: {window: {req, tin, tout, cost}}}
WindowTotals = dict[str, dict[str, dict[str, int]]]
PriceBook = dict[tuple[str, str], Price | None]  # (provider, upstream model) -> price
DEFAULT_ANSWER_TOKENS = 256  # estimate when the client sets no max_tokens


@dataclass(frozen=True)
class Target:
    provider: ProviderConfig
    model: str  # logical
    upstream_model: str


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


def _has_limits(limits: Limits) -> bool:
    return any(v is not None for v in limits.model_dump().values())


def scopes_for(targets: list[Target]) -> list[str]:
    """The window scopes that have a limit to check (nothing to read when nothing is limited)."""
    out: list[str] = []
    for t in targets:
        if _has_limits(t.provider.limits):
            out.append(provider_scope(t.provider.id))
        if _has_limits(t.provider.model(t.model).limits):
            out.append(model_scope(t.provider.id, t.model))
    return out


_LIMIT_FIELDS = (
    ("requests", "req", None), ("tokens", "tin", "tout"), ("cost", "cost", None),
)


def limit_breach(limits: Limits, totals: dict[str, dict[str, int]] | None) -> str | None:
    """The first limit the window totals have reached, as a reason string, or None."""
    if totals is None:
        return None
    for window in ("minute", "hour", "day"):
        t = totals.get(window, {})
        for kind, field, extra in _LIMIT_FIELDS:
            limit = getattr(limits, f"{kind}_per_{window}")
            if limit is None:
                continue
            used = t.get(field, 0) + (t.get(extra, 0) if extra else 0)
            if kind == "cost":
                if nano_to_usd(used) >= limit:
                    return f"cost_per_{window} reached ({nano_to_usd(used):.6f}/{limit} USD)"
            elif used >= limit:
                return f"{kind}_per_{window} reached ({used}/{limit})"
    return None


def estimated_cost(price: Price | None, request: RouteRequest) -> Decimal | None:
    if price is None:
        return None
    answer = request.max_tokens or DEFAULT_ANSWER_TOKENS
    return price.cost(request.estimated_prompt_tokens, answer)


def decide(config: GatewayConfig, prices: PriceBook, request: RouteRequest, windows: WindowTotals) -> RouteDecision:
    model, targets = resolve_targets(config, request.model)
    if not targets:
        return RouteDecision(request_id=request.request_id, model=request.model, error=ErrorInfo(
            status=404, code="model_not_found",
            message=f"The model `{request.model}` does not exist or no configured provider serves it."))

    eligible: list[tuple[tuple, Candidate]] = []
    skipped: list[Skipped] = []
    for index, t in enumerate(targets):
        p = t.provider
        if not p.enabled:
            skipped.append(Skipped(provider=p.id, reason="disabled"))
            continue
        breach = limit_breach(p.limits, windows.get(provider_scope(p.id))) or limit_breach(
            p.model(t.model).limits, windows.get(model_scope(p.id, t.model)))
        if breach:
            skipped.append(Skipped(provider=p.id, reason=breach))
            continue
        price = prices.get((p.id, t.upstream_model))
        free = p.free_tier or (price is not None and price.is_free)
        cost = Decimal(0) if free else estimated_cost(price, request)
        # unknown price sorts after every known one in the paid tier
        key = (0 if free else 1, cost is None, cost or Decimal(0), p.priority, index)
        tier = "free tier" if free else ("paid, price unknown" if cost is None else f"paid, est. ${cost:.6f}")
        eligible.append((key, Candidate(provider=p.id, model=t.model, upstream_model=t.upstream_model,
                                        price=price, free=free, reason=f"{tier}, priority {p.priority}")))

    eligible.sort(key=lambda kc: kc[0])
    candidates = [c for _, c in eligible]
    decision = RouteDecision(request_id=request.request_id, model=model, candidates=candidates, skipped=skipped)
    if not candidates:
        decision.error = ErrorInfo(status=429, code="rate_limit_exceeded",
                                   message=f"Every provider for `{request.model}` is unavailable: " +
                                   "; ".join(f"{s.provider}: {s.reason}" for s in skipped))
    return decision
