"""The per-request strategies, run in the edge on a plan it reuses (plans.py): round-robin, weighted,
least-busy and lowest-latency order the candidates of each group of the router's plan (same pin, tier and
smart routing match: ``RouteDecision.groups``) for every request, as the router would.

least-busy and lowest-latency use what this edge sees: its own requests in flight and its own moving
average of successful attempts' latency per provider. No round trip is spent to learn the other edges'
figures (that is what reusing a plan saves); with the load spread over the edges, each edge's share is a
fair sample of the whole, and the router still decides with the shared figures whenever it is asked.
"""

from __future__ import annotations

import random
from collections import defaultdict
from itertools import groupby

import msgspec

from llmgw_common.config import GatewayConfig
from llmgw_common.messages import Candidate, RouteDecision

LATENCY_ALPHA = 0.2  # as the router's moving average

_RNG = random.Random()


class EdgeLoad:
    """This edge's requests in flight and latency average per provider."""

    def __init__(self) -> None:
        self.inflight: defaultdict[str, int] = defaultdict(int)
        self.latency_ms: dict[str, float] = {}
        self.turns = 0  # round-robin's counter

    def started(self, provider: str) -> None:
        self.inflight[provider] += 1

    def ended(self, provider: str) -> None:
        self.inflight[provider] = max(0, self.inflight[provider] - 1)

    def succeeded(self, provider: str, latency_ms: float) -> None:
        old = self.latency_ms.get(provider)
        self.latency_ms[provider] = latency_ms if old is None else old + LATENCY_ALPHA * (latency_ms - old)


def ordered(plan: RouteDecision, load: EdgeLoad, config: GatewayConfig) -> RouteDecision:
    """The plan in this request's order: as it is under a fixed-order strategy, else each group ordered by
    its strategy."""
    if not plan.groups or len(plan.candidates) < 2:
        return plan
    load.turns += 1
    out: list[Candidate] = []
    pairs = zip(plan.groups, plan.candidates)
    for _, members in groupby(pairs, key=lambda gc: gc[0]):
        group = [c for _, c in members]
        out += _order_group(group, plan.strategy, load, config) if len(group) > 1 else group
    return msgspec.structs.replace(plan, candidates=out)


def _order_group(group: list[Candidate], strategy: str, load: EdgeLoad, config: GatewayConfig) -> list[Candidate]:
    if strategy == "round-robin":
        k = load.turns % len(group)
        return group[k:] + group[:k]
    if strategy == "weighted":  # Efraimidis-Spirakis, as the router: a weighted random order, weight 0 last
        def weighted_key(c: Candidate) -> tuple:
            provider = config.provider(c.provider)
            weight = provider.weight if provider is not None else 1
            return (0, -(_RNG.random() ** (1.0 / weight))) if weight > 0 else (1, 0.0)
        return sorted(group, key=weighted_key)
    if strategy == "least-busy":  # stable: the router's order (priority) breaks ties
        return sorted(group, key=lambda c: load.inflight[c.provider])
    if strategy == "lowest-latency":  # unmeasured first, so they get measured
        return sorted(group, key=lambda c: load.latency_ms.get(c.provider, 0.0))
    return group
