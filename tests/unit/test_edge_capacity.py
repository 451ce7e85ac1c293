"""The edge's capacity leases (core/capacity.py) and the gateway admitting routes with limits from them:
in-process, a fake router whose plans are reusable and a fake lease granter keeping a request limit the way
the router's GRANT script does (N at most what is left). The real scripts are tested on Redis in
tests/service/test_capacity_leases.py, the whole stack with 2 edges and 2 routers in
tests/e2e/test_leased_admission.py."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from edge_fakes import Events, FakeRouter, MockResponse, MockTransport
from llmgw_common.capacity import LeaseAsk, LeaseGrant, LeaseReturn
from llmgw_common.config import GatewayConfig
from llmgw_common.keys import KeyLimits, KeyRecord, new_key_id
from llmgw_common.messages import RouteDecision, RouteRequest, Skipped
from llmgw_edge.api.openai_chat import OpenAIChatCodec
from llmgw_edge.core import capacity
from llmgw_edge.core.capacity import CapacityCache, Refusal, RouterUnavailable
from llmgw_edge.core.errors import GatewayError
from llmgw_edge.core.gateway import Deps, Gateway
from llmgw_edge.providers import build_provider

USER = [{"role": "user", "content": "hello"}]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Granter:
    """A request limit per provider, granted as the router grants: N = min(wanted, what is left), minus
    what was given back; 1 request of 10 + 20 tokens at $0.001 each (1,000,000 nano-USD)."""

    def __init__(self, limits: dict[str, int], clock: Clock, ttl_s: float = 2.0):
        self.limits = limits
        self.reserved: dict[str, int] = {p: 0 for p in limits}
        self.clock = clock
        self.ttl_s = ttl_s
        self.asks: list[LeaseAsk] = []
        self.returns: list[LeaseReturn] = []
        self.granted: dict[str, tuple[str, int]] = {}
        self.away = False
        self.refused = 0

    async def ask(self, ask: LeaseAsk) -> LeaseGrant:
        self.asks.append(ask)
        if self.away:
            raise RouterUnavailable("no responders")
        left = self.limits[ask.provider] - self.reserved[ask.provider]
        n = max(0, min(ask.wanted, left))
        if n == 0:
            self.refused += 1
            return LeaseGrant(lease_id=ask.lease_id, n=0, reason="requests_per_minute on provider reached",
                              retry_after_s=7)
        self.reserved[ask.provider] += n
        self.granted[ask.lease_id] = (ask.provider, n)
        return LeaseGrant(lease_id=ask.lease_id, n=n, until_ms=int((self.clock.now + self.ttl_s) * 1000), at_s=1,
                          tokens_in=ask.tokens_in, tokens_out=ask.tokens_out, cost_nano=1_000_000, free=False,
                          per_request=Decimal("0.001"))

    def give_back(self, back: LeaseReturn) -> None:
        self.returns.append(back)
        provider, n = self.granted.pop(back.lease_id)
        self.reserved[provider] -= n - back.admitted


def _config(leases: bool = True) -> GatewayConfig:
    return GatewayConfig.model_validate({"version": 1, "routing": {"retry": {"attempts": 0}, "leases": leases},
                                         "providers": [
        {"id": "free", "type": "openai", "base_url": "http://free.test/v1", "api_key": "k", "free_tier": True,
         "limits": {"requests_per_minute": 3}, "models": [{"name": "m"}]},
        {"id": "paid", "type": "openai", "base_url": "http://paid.test/v1", "api_key": "k",
         "models": [{"name": "m"}]}]})


class Router(FakeRouter):
    """Skips a provider whose limit the granter has granted in full, as the router's admission would."""

    granter: Granter | None = None

    async def decide(self, request: RouteRequest) -> RouteDecision:
        decision = await super().decide(request)
        decision.reusable_s = 60.0  # as the router marks a plan with limits reusable while routing.leases is on
        g = self.granter
        for cand in list(decision.candidates):
            if g is not None and g.limits.get(cand.provider, 0) > 0 and g.reserved[cand.provider] >= g.limits[cand.provider]:
                decision.candidates.remove(cand)
                decision.skipped.append(Skipped(provider=cand.provider, reason=(
                    f"requests_per_minute reached on provider ({g.reserved[cand.provider]}/{g.limits[cand.provider]})"
                    " (42s left)")))
        if decision.skipped:  # its first provider not admitted: a plan for this request only, as the router's
            decision.reusable_s = 0.0
        for later in decision.candidates[1:]:  # the router reserves for the admitted candidate only
            later.reservation = None
        return decision


class Harness:
    def __init__(self, leases: bool = True, failing: set[str] | None = None):
        cfg = _config(leases)
        self.clock = Clock()
        self.granter = Granter({"free": 3, "paid": 0}, self.clock)
        self.capacity = CapacityCache("edge-t", self.granter.ask, self.granter.give_back, lambda: 2.0,
                                      clock=self.clock)
        self.router = Router(cfg)
        self.router.granter = self.granter
        self.events = Events()
        self.failing = failing or set()
        self.sent: list[str] = []
        providers = {p.id: build_provider(p, MockTransport(self._answer), Path("/tmp")) for p in cfg.providers}
        self.keys: dict[str, KeyRecord] = {}  # the edge's key mirror: a caller's current key record
        self.gateway = Gateway(Deps(config=cfg, providers=providers, decide=self.router.decide,
                                    report=self.router.report, publish=self.events, capacity=self.capacity,
                                    key_record=lambda key_id: self.keys.get(key_id or "")))

    def _answer(self, request) -> MockResponse:
        provider = request.url.split("//")[1].split(".")[0]
        self.sent.append(provider)
        if provider in self.failing:
            return MockResponse(503, json={"error": {"message": "down"}})
        return MockResponse(json={"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})

    async def ask(self, key_id: str | None = None):
        codec = OpenAIChatCodec()
        exchange = codec.parse(json.dumps({"model": "m", "messages": USER, "max_tokens": 20}).encode(), {})
        exchange.key_id = key_id
        return await self.gateway.handle(exchange, codec)


async def test_a_limited_route_on_a_reused_plan_is_admitted_from_a_lease_then_fails_over_in_order():
    h = Harness()
    providers = [(await h.ask()).headers["x-llmgw-provider"] for _ in range(6)]
    # the first request asked the router (its admission); the next ones were admitted here, from leases of the
    # free tier until its limit of 3 was granted; then a lease was refused (the limit is full) and the router
    # admits again, per request, as it did with leases off: it skips the full free tier in its own words (the
    # counts, the wait) and admits the paid provider; for a moment no lease is asked for again
    assert len(h.router.requests) == 3
    assert providers == ["free", "free", "free", "free", "paid", "paid"]
    leased = [e.reservation for e in h.events[1:4]]
    assert all(r is not None and r.lease and r.provider == "free" and r.tokens_out == 20 for r in leased)
    assert h.granter.reserved["free"] == 3 and sum(a.wanted for a in h.granter.asks) >= 3
    assert h.granter.refused == 1  # the refusal holds for a moment: the sixth request did not ask again
    assert "free skipped: requests_per_minute reached on provider (3/3) (42s left)" in h.events[-1].route_reason


def _key(name: str, limits: KeyLimits | None = None) -> KeyRecord:
    return KeyRecord(id=new_key_id(), name=name, hash="0" * 64, prefix="llmgw-…",
                     created_at=datetime.now(timezone.utc), limits=limits or KeyLimits())


async def test_keys_without_limits_share_the_routes_lease_and_a_key_with_limits_leases_its_own():
    h = Harness()
    h.granter.limits["free"] = 100
    plain_ask = h.granter.ask

    async def ask(a: LeaseAsk) -> LeaseGrant:  # room for the next requests; the key scope as the router names it
        grant = await plain_ask(msgspec.structs.replace(a, wanted=10))
        return msgspec.structs.replace(grant, key_id=a.key_id)

    h.capacity._ask = ask
    a, b, c, limited = _key("a"), _key("b"), _key("c"), _key("limited", KeyLimits(requests_per_day=1000))
    h.keys = {k.id: k for k in (a, b, c, limited)}
    for key in (a, b, c):
        await h.ask(key.id)  # the key's first request: the router's admission and its plan for this key
        await h.ask(key.id)  # admitted here, from the route's lease
    leased = [e for e in h.events if e.reservation is not None and e.reservation.lease]
    assert [e.key_id for e in leased] == [a.id, b.id, c.id]
    # one lease for the three keys: one question, no key in it, and the key scope left to the usage events
    assert [x.key_id for x in h.granter.asks] == [None]
    assert {e.reservation.lease for e in leased} == {h.granter.asks[0].lease_id}
    assert all(e.reservation.key_id is None for e in leased)
    await h.ask(limited.id)
    await h.ask(limited.id)  # a key with limits: a lease of its own, reserved in its key scope too
    assert [x.key_id for x in h.granter.asks] == [None, limited.id]
    assert h.events[-1].reservation.key_id == limited.id
    assert h.events[-1].reservation.lease == h.granter.asks[1].lease_id
    # a key that gains limits (its record changes): its plan is asked for again, then it leases on its own
    h.keys[a.id] = a.model_copy(update={"limits": KeyLimits(cost_per_month=Decimal("5"))})
    await h.ask(a.id)
    await h.ask(a.id)
    assert [x.key_id for x in h.granter.asks] == [None, limited.id, a.id]
    assert h.events[-1].reservation.key_id == a.id and h.events[-1].key_id == a.id


async def test_with_leases_off_a_limited_plan_is_never_admitted_by_the_edge():
    h = Harness(leases=False)
    for _ in range(3):
        await h.ask()
    assert len(h.router.requests) == 3 and h.granter.asks == []


async def test_what_the_edge_admits_from_a_lease_never_passes_what_was_reserved():
    clock = Clock()
    granter = Granter({"free": 100}, clock)
    cache = CapacityCache("e", granter.ask, granter.give_back, lambda: 2.0, clock=clock)
    route = ("free", "m", None)
    await cache.take(route, 10, 20)  # no demand known yet: a lease of one
    first = await cache.take(route, 10, 20)  # demand: a bigger lease, sized with this request's estimate
    assert not isinstance(first, Refusal)
    grant_n = granter.granted[first.lease][1]
    taken = [first]
    for tokens_in in (10, 4, 11, 10, 10, 10, 10, 10, 10, 10):
        got = await cache.take(route, tokens_in, 20)
        if not isinstance(got, Refusal) and got.lease == first.lease:
            taken.append(got)
    assert len(taken) <= grant_n
    assert sum(r.tokens_in for r in taken) <= grant_n * 10 and sum(r.tokens_out for r in taken) <= grant_n * 20
    assert all(r.cost_nano == 1_000_000 for r in taken)  # priced as the router prices: $0.001 a request


async def test_a_failed_attempt_goes_back_into_its_lease_and_its_outcome_releases_nothing():
    h = Harness()
    h.granter.limits["free"] = 100
    for _ in range(5):  # the router's admission and the plan, then leases growing with the demand: 1, 2, 4
        await h.ask()
    held = next(iter(h.capacity._held.values()))
    admitted = held.admitted
    h.failing = {"free"}
    reply = await h.ask()
    assert reply.headers["x-llmgw-provider"] == "paid"  # failed over through the router
    failed = [o for o in h.router.outcomes if not o.ok and o.provider == "free"]
    assert failed and failed[-1].reservation is None  # the lease's give-back settles it, never the outcome
    assert held.admitted == admitted and not held.returned  # taken back: the failed request used nothing


async def test_with_the_router_away_live_leases_serve_then_a_clean_503_with_retry_after():
    h = Harness()
    h.granter.limits["free"] = 100
    h.granter.ttl_s = 30
    for _ in range(3):  # the plan, a first lease of one request, then a bigger one
        await h.ask()
    held = next(iter(h.capacity._held.values()))
    h.granter.away = True
    while held.admitted < held.grant.n:  # the lease keeps serving while the router is away
        assert (await h.ask()).headers["x-llmgw-provider"] == "free"
    reply = await h.ask()  # none left: the route with a limit is skipped, the paid one without a limit serves
    assert reply.headers["x-llmgw-provider"] == "paid" and h.capacity.router_lost
    limited = h.gateway.deps.config.model_dump(mode="json")
    limited["providers"][1]["limits"] = {"requests_per_minute": 5}  # now every candidate has a limit
    h.gateway.deps.config = GatewayConfig.model_validate(limited)
    with pytest.raises(GatewayError) as refused:
        await h.ask()
    assert refused.value.status == 503 and refused.value.headers["retry-after"] == "1"


async def test_leases_go_back_when_they_end_and_at_shutdown():
    clock = Clock()
    granter = Granter({"free": 100, "paid": 100}, clock)
    cache = CapacityCache("e", granter.ask, granter.give_back, lambda: 2.0, clock=clock)
    for _ in range(3):
        await cache.take(("free", "m", None), 10, 20)
    await cache.take(("paid", "m", None), 10, 20)
    clock.now += 5  # past every lease's end: the sweep gives them back with what they admitted
    cache.sweep()
    assert granter.granted == {} and sum(granter.reserved.values()) == 4 and cache.live_leases == 0
    await cache.take(("paid", "m", None), 10, 20)  # demand now known: a lease of more than one
    assert cache.live_leases == 1 and sum(granter.reserved.values()) > 5
    await cache.close()  # at shutdown: what was not admitted goes back
    assert granter.granted == {} and sum(granter.reserved.values()) == 5


async def test_an_estimate_no_lease_message_can_carry_is_left_to_the_router():
    clock = Clock()
    granter = Granter({"free": 100}, clock)
    cache = CapacityCache("e", granter.ask, granter.give_back, lambda: 2.0, clock=clock)
    got = await cache.take(("free", "m", None), 10, 2 * 10**9)
    assert isinstance(got, Refusal) and got.ask_router and granter.asks == []


class ScarceGranter(Granter):
    """Sizes a lease as the router's GRANT script does: one request when what is left is less than twice
    what is asked for (one edge asking), else what is asked for. ``sizes``: each grant's N."""

    sizes: list[int]
    wanted: list[int]

    async def ask(self, ask: LeaseAsk) -> LeaseGrant:
        self.wanted = [*getattr(self, "wanted", []), ask.wanted]
        left = self.limits[ask.provider] - self.reserved[ask.provider]
        if left < 2 * ask.wanted:
            ask = LeaseAsk(lease_id=ask.lease_id, edge=ask.edge, provider=ask.provider, model=ask.model,
                           key_id=ask.key_id, wanted=1, tokens_in=ask.tokens_in, tokens_out=ask.tokens_out)
        grant = await super().ask(ask)
        self.sizes = [*getattr(self, "sizes", []), grant.n]
        return grant


async def test_requests_arriving_together_do_not_inflate_the_demand_into_leases_of_one():
    # two clients in step, a request each every 0.3 s (about 6.7 a second): when a lease of one runs out
    # under one of them, the other asks again a moment later. Demand averaged per question read that as
    # hundreds a second, and the router, seeing that against a limit of 100, granted one request a time
    import asyncio

    clock = Clock()
    granter = ScarceGranter({"free": 100}, clock)
    cache = CapacityCache("e", granter.ask, granter.give_back, lambda: 2.0, clock=clock)
    route = ("free", "m", None)
    for _ in range(10):
        clock.now += 0.3
        cache.sweep()
        got = await asyncio.gather(cache.take(route, 10, 20), cache.take(route, 10, 20))
        assert not any(isinstance(g, Refusal) for g in got)
    wanted = granter.wanted
    assert max(wanted) <= 2 * 7 + 3, wanted  # about the demand of one lease period (2 s), plus those waiting
    assert max(granter.sizes) > 1, (granter.sizes, wanted)  # leases with room for the next requests


async def test_a_lease_that_ends_as_it_is_granted_goes_back_and_the_next_is_asked_for_past_its_bucket():
    clock = Clock()
    granter = Granter({"free": 100}, clock)
    bucket_end = clock.now + capacity.END_MARGIN_S / 2  # the router is in its lease's bucket's last moments

    async def ask(a: LeaseAsk) -> LeaseGrant:
        grant = await granter.ask(a)
        if len(granter.asks) == 1:  # a lease lives no longer than its bucket
            return msgspec.structs.replace(grant, until_ms=int(bucket_end * 1000))
        assert clock.now < bucket_end  # the fake clock stands still; the edge waited the real time
        return grant

    cache = CapacityCache("e", ask, granter.give_back, lambda: 2.0, clock=clock)
    reservation = await cache.take(("free", "m", None), 10, 20)
    # the first lease went back unused, the request was admitted from the second one (not left to the router)
    first, second = granter.asks
    assert (granter.returns[0].lease_id, granter.returns[0].admitted) == (first.lease_id, 0)
    assert not isinstance(reservation, Refusal) and reservation.lease == second.lease_id
    assert len(granter.asks) == 2



async def test_after_a_lease_its_bucket_ended_the_next_is_asked_for_once_the_bucket_has_turned():
    # a lease asked for before that bucket turns (ahead of time, or by a request just before the turn)
    # would end at once: reserved in Redis and given back for nothing
    clock = Clock()
    granter = Granter({"free": 1000}, clock)
    bucket_end = clock.now + 1.0  # before the 2 s ttl

    async def ask(a: LeaseAsk) -> LeaseGrant:
        if granter.asks:  # the edge waited (real time) for the turn: the clock has moved with it
            clock.now = bucket_end + 2 * capacity.BUCKET_TURN_S
        grant = await granter.ask(msgspec.structs.replace(a, wanted=10))  # room for the next requests
        ends = bucket_end if clock.now < bucket_end else bucket_end + 5  # minute windows: 5 s buckets
        return msgspec.structs.replace(grant, until_ms=min(grant.until_ms, int(ends * 1000)))

    cache = CapacityCache("e", ask, granter.give_back, lambda: 2.0, clock=clock)
    route = ("free", "m", None)
    assert not isinstance(await cache.take(route, 10, 20), Refusal)
    clock.now += 0.8  # due for renewal, but a successor would end with it: not asked for
    assert not isinstance(await cache.take(route, 10, 20), Refusal)
    assert len(granter.asks) == 1
    clock.now = bucket_end - capacity.END_MARGIN_S / 2  # the lease stopped admitting; the bucket has not turned
    after = await cache.take(route, 10, 20)
    assert not isinstance(after, Refusal) and after.lease == granter.asks[1].lease_id
    # no lease granted only to go back: the one that ended went back (with the question), the new one serves
    assert len(granter.asks) == 2 and [b.lease_id for b in granter.returns] == [granter.asks[0].lease_id]


async def test_what_a_live_lease_admitted_is_reported_at_the_end_of_its_loop_turn_for_the_windows_views():
    # the windows' views show what was admitted, as per request, not a lease's unused part: the routers learn
    # what each live lease admitted, a report at the end of the event-loop turn (while few), each with a growing seq
    import asyncio

    clock = Clock()
    granter = Granter({"free": 1000}, clock)
    reports: list[list] = []
    cache = CapacityCache("e", granter.ask, granter.give_back, lambda: 2.0, clock=clock, report_use=reports.append)
    route = ("free", "m", None)
    await cache.take(route, 10, 20)  # a lease of one, used up at once: its give-back says it all
    await asyncio.sleep(0)
    assert reports == []
    while not any(lease.grant.n - lease.admitted >= 2 for lease in cache._held.values()):
        await cache.take(route, 10, 20)  # the demand grows: a lease with room left
    reports.clear()
    (held,) = cache._held.values()
    before = held.admitted
    first = await cache.take(route, 10, 20)
    second = await cache.take(route, 7, 20)
    assert not isinstance(first, Refusal) and not isinstance(second, Refusal) and first.lease == held.grant.lease_id
    await asyncio.sleep(0)
    (uses,) = reports  # two admissions, one report
    (use,) = uses
    assert (use.lease_id, use.admitted, use.tokens_out) == (held.grant.lease_id, before + 2, 20 * (before + 2))
    assert cache.release(second)  # a failed attempt: reported too, with a later seq
    await asyncio.sleep(0)
    assert [(u.seq - use.seq, u.admitted, u.tokens_in) for u in reports[-1]] == [(1, before + 1, use.tokens_in - 7)]


def test_a_leased_candidates_reason_gives_this_requests_estimate_as_the_router_would():
    from llmgw_edge.core.gateway import _own_estimate

    plan_reason = "paid, est. $0.004200, strategy cheapest"  # made for the request that asked for the plan
    assert _own_estimate(plan_reason, 1_234_567) == "paid, est. $0.001235, strategy cheapest"
    assert _own_estimate("free tier, strategy cheapest", 0) == "free tier, strategy cheapest"


async def test_new_limits_give_the_routes_leases_back_first():
    # a config reload or a key's new limits: the leases granted under the old ones go back, so the next
    # request is judged under the new limits at once, as per request
    clock = Clock()
    granter = Granter({"free": 100}, clock)
    cache = CapacityCache("e", granter.ask, granter.give_back, lambda: 2.0, clock=clock)
    route = ("free", "m", "key-1")
    old, new = object(), object()
    for _ in range(4):
        await cache.take(route, 10, 20, basis=(old,))
    assert cache.live_leases == 1
    held = next(iter(cache._held))
    got = await cache.take(route, 10, 20, basis=(new,))
    assert not isinstance(got, Refusal) and got.lease != held
    assert held in {b.lease_id for b in granter.returns}


async def test_under_load_lease_use_reports_are_batched_and_the_last_one_still_comes():
    # a report per event-loop turn was one NATS message and one Redis script per request at concurrency 1:
    # after a burst, reports go at most USE_RATE a second, each with every lease used since
    import asyncio

    clock = Clock()
    granter = Granter({"free": 100_000}, clock, ttl_s=3600)
    reports: list[list] = []
    cache = CapacityCache("e", granter.ask, granter.give_back, lambda: 3600.0, clock=clock,
                          report_use=reports.append)
    route = ("free", "m", None)
    while not any(lease.grant.n - lease.admitted >= 500 for lease in cache._held.values()):
        await cache.take(route, 10, 20)  # the demand grows: a lease with room for what follows
    await asyncio.sleep(capacity.USE_BURST / capacity.USE_RATE)  # the burst refills
    reports.clear()
    for _ in range(200):  # requests one after another, one per event-loop turn, far faster than USE_RATE
        assert not isinstance(await cache.take(route, 10, 20), Refusal)
        await asyncio.sleep(0)
    assert int(capacity.USE_BURST) <= len(reports) < 100  # not 200 (under 2 s of this loop on a slow machine)
    await asyncio.sleep(2 / capacity.USE_RATE)
    (held,) = [lease for lease in cache._held.values() if lease.admitted > 1]
    assert reports[-1][-1].admitted == held.admitted  # the last report has everything


async def test_a_question_carries_the_routes_leases_given_back_a_moment_ago():
    # at a bucket's turn the ended lease goes back and the next is asked for within milliseconds: the
    # question carries the give-back, so the router has its unused part back before it grants
    clock = Clock()
    granter = Granter({"free": 1000}, clock)
    cache = CapacityCache("e", granter.ask, granter.give_back, lambda: 2.0, clock=clock)
    route = ("free", "m", None)
    while not any(lease.grant.n - lease.admitted >= 2 for lease in cache._held.values()):
        assert not isinstance(await cache.take(route, 10, 20), Refusal)  # a lease with room left
    (held,) = cache._held.values()
    clock.now = held.until + 0.001  # it ended, not swept yet
    asked = len(granter.asks)
    assert not isinstance(await cache.take(route, 10, 20), Refusal)
    carried = granter.asks[asked].returns
    assert [(b.lease_id, b.admitted) for b in carried] == [(held.grant.lease_id, held.admitted)]
    assert granter.returns[-1].lease_id == held.grant.lease_id  # and given back on its own too
    clock.now += capacity.RETURN_CARRY_S  # later questions carry nothing more
    for lease in list(cache._held.values()):
        clock.now = max(clock.now, lease.until + 0.001)
    cache.sweep()
    clock.now += capacity.RETURN_CARRY_S
    asked = len(granter.asks)
    assert not isinstance(await cache.take(route, 10, 20), Refusal)
    assert granter.asks[asked].returns == []
