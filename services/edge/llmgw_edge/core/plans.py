"""Plans the edge reuses: a route without limits needs no capacity, so no router round trip per request.

When the router marks a decision reusable (``RouteDecision.reusable_s``: nothing in the plan draws on a
limit, and only the model, the caller's key, the prompt class and the capabilities the request uses chose
and ordered it), every later request with the same model, key, prompt class and capabilities is routed on
that plan here. A plan is dropped when a router
announces a change (``llmgw.router.changed``: pin, smart, config, prices, a cooldown or an open breaker), when
the edge's own config changes or the caller's key record does; one whose provider failed here is asked for
again (the router knows what that failure changed),
and at the latest ``reusable_s`` after it was made (``routing.plan_max_age_s``: a safety net, not the way
changes arrive); the first request that finds it aged out asks for it again, and the others keep routing on
it for up to ``REFRESH_S`` meanwhile (instead of every concurrent request asking, each one admitted by the
router one by one on a route with limits). While the router cannot be reached, a plan of any age keeps its route serving: it draws on
no limit, so serving it can never pass one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import msgspec

from llmgw_common.messages import RouteDecision, RouteRequest

MAX_PLANS = 10_000  # (model, key, prompt class, endpoint, needs) combinations; past it the cache starts over
AWAY_S = 1.0  # after the router could not be reached: old plans serve at once this long, without asking
REFRESH_S = 0.5  # an aged-out plan serves this long while one request asks for it again

PlanKey = tuple[str, str | None, str | None, str, tuple[str, ...]]


@dataclass(slots=True)
class _Plan:
    decision: RouteDecision
    fresh_until: float  # 0: a provider of it failed here (``expire``): every request asks until a new one
    key_record: object  # the caller's key record it was made for (None: no key): a changed key asks again
    refreshing_until: float = 0.0  # aged out and asked for again by one request: the others use it till then


class PlanCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._plans: dict[PlanKey, _Plan] = {}
        self._clock = clock
        # bumped by every drop: a plan asked for before a drop and answered after it is not kept
        self.generation = 0
        self._away_until = 0.0
        self.router_lost = False  # the last question to the router found nobody (health says so)

    @staticmethod
    def _key(request: RouteRequest) -> PlanKey:
        # the capabilities it needs: the router skipped the models without them for this plan
        return request.model, request.key_id, request.prompt_class, request.endpoint, tuple(request.needs)

    def fresh(self, request: RouteRequest, key_record: object) -> RouteDecision | None:
        """The plan to route this request on without asking, if there is one."""
        plan = self._plans.get(self._key(request))
        if plan is None or plan.key_record is not key_record:
            return None
        now = self._clock()
        if now < plan.fresh_until or now < self._away_until or now < plan.refreshing_until:
            return plan.decision
        if plan.fresh_until > 0:  # aged out: this request asks, the others wait no round trip meanwhile
            plan.refreshing_until = now + REFRESH_S
        return None

    def stale(self, request: RouteRequest, key_record: object) -> RouteDecision | None:
        """A plan of any age, once the router could not be reached (and for ``AWAY_S`` after, without asking)."""
        plan = self._plans.get(self._key(request))
        if plan is None or plan.key_record is not key_record:
            return None
        self._away_until = self._clock() + AWAY_S
        self.router_lost = True
        return plan.decision

    def keep(self, request: RouteRequest, key_record: object, decision: RouteDecision, generation: int) -> None:
        """Keep a reusable decision as the plan for its requests, unless a drop came while it was asked for."""
        self.router_lost = False  # a router answered
        if decision.reusable_s <= 0 or generation != self.generation or not decision.candidates:
            return
        plan = msgspec.structs.replace(decision, candidates=list(decision.candidates))
        # the admission of the request that asked belongs to that request alone
        first = plan.candidates[0]
        if first.reservation is not None or first.probe:
            plan.candidates[0] = msgspec.structs.replace(first, reservation=None, probe=False)
        if len(self._plans) >= MAX_PLANS:
            self._plans.clear()
        self._plans[self._key(request)] = _Plan(plan, self._clock() + decision.reusable_s, key_record)

    def expire(self, provider: str) -> None:
        """A provider failed here: plans that hold it are asked for again (kept for when the router is away)."""
        for plan in self._plans.values():
            if any(c.provider == provider for c in plan.decision.candidates):
                plan.fresh_until = plan.refreshing_until = 0.0
        self.generation += 1

    def drop_all(self) -> None:
        self._plans.clear()
        self.generation += 1
        self._away_until = 0.0
        self.router_lost = False  # a router announced a change: it is back

    @property
    def serving_without_router(self) -> bool:
        """Routes are served from old plans: the last question to the router found nobody."""
        return self.router_lost

    def __len__(self) -> int:
        return len(self._plans)
