"""Capacity leases for routes with limits (issue 20), in Redis: grants never pass a limit
(consumed + reserved by live leases <= limit), a small remainder is granted one request at a time and used
to the last, what an edge did not admit goes back when it returns the lease or when the reaper takes a
lease its edge never returned; the usage events of requests admitted from a lease count each request once.
Real Redis and the real scripts (the router's and the usage service's), two edges asking concurrently."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from llmgw_common import redis_keys
from llmgw_common.config import Limits
from llmgw_common.keys import KeyLimits, KeyRecord, new_key_id
from llmgw_common.messages import Candidate, Reservation, UsageEvent
from llmgw_common.redis_conn import connect_redis
from llmgw_common.redis_keys import CAP_LEASE_PREFIX
from llmgw_common.windows import WindowReader, key_scope, model_scope, month_key, provider_scope
from llmgw_router.capacity_leases import CapacityLeases, LeaseRoute
from llmgw_router.policy import PlannedCandidate
from llmgw_router.store import RoutingStore
from llmgw_usage.windows_writer import WindowWriter

pytestmark = pytest.mark.integration

T0 = (int(time.time()) // 86400 + 3) * 86400 * 1000  # ahead of the real clock, at a bucket's start
TTL_MS = 2000
GRACE_MS = 60_000  # a lease its edge never gave back is reaped this long after it ends


@pytest.fixture
async def redis(infra):
    r = connect_redis(infra.redis_url)
    yield r
    await r.aclose()


def _route(provider_limits: Limits | None = None, model_limits: Limits | None = None, tin: int = 40,
           tout: int = 60, cost: str = "0.001") -> LeaseRoute:
    return LeaseRoute(provider=f"cap-{uuid.uuid4().hex[:8]}", model="m", provider_limits=provider_limits or Limits(),
                      model_limits=model_limits or Limits(), est_tokens_in=tin, est_tokens_out=tout, est_cost=Decimal(cost))


async def _drain(leases: CapacityLeases, route: LeaseRoute, edge: str, wanted: int, now_ms: int,
                 key: KeyRecord | None = None) -> list[int]:
    """One edge asking for leases until it is refused; the sizes it got."""
    sizes = []
    while True:
        g = await leases.grant(uuid.uuid4().hex, edge, route, wanted, now_ms, TTL_MS, GRACE_MS, key=key)
        if g.n == 0:
            assert g.reason.endswith("reached")
            return sizes
        sizes.append(g.n)


async def _minute(redis, scope: str, now_ms: int) -> dict[str, int]:
    return (await WindowReader(redis).read([scope], now_ms // 1000))[scope]["minute"]


async def test_two_edges_asking_concurrently_get_exactly_the_limit(redis):
    leases = CapacityLeases(redis)
    route = _route(provider_limits=Limits(requests_per_minute=50))
    a, b = await asyncio.gather(*(_drain(leases, route, edge, 10, T0) for edge in ("edge-a", "edge-b")))
    assert sum(a) + sum(b) == 50
    assert max(a + b) == 10 and a[-1] == b[-1] == 1  # big leases first, single requests near the end
    assert (await _minute(redis, provider_scope(route.provider), T0))["req"] == 50


async def test_a_free_tier_of_20_is_granted_one_request_at_a_time_to_the_last(redis):
    leases = CapacityLeases(redis)
    route = _route(model_limits=Limits(requests_per_minute=20))
    a, b = await asyncio.gather(*(_drain(leases, route, edge, 5, T0) for edge in ("edge-a", "edge-b")))
    assert sum(a) + sum(b) == 20
    # once both edges are known, what is left (< 2 edges x 2 x 5) goes one request at a time (how many each
    # edge got before the other was known depends on how their questions interleave)
    assert a[-1] == b[-1] == 1 and (a + b).count(1) >= 4, (a, b)
    assert (await _minute(redis, model_scope(route.provider, "m"), T0))["req"] == 20


async def test_token_and_cost_limits_are_never_passed(redis):
    leases = CapacityLeases(redis)
    tokens = _route(provider_limits=Limits(tokens_per_minute=1050), tin=40, tout=60)  # room for 10.5 requests
    cost = _route(model_limits=Limits(cost_per_minute=Decimal("0.0105")), cost="0.001")
    for route, scope, field, limit in ((tokens, provider_scope(tokens.provider), None, 1050),
                                       (cost, model_scope(cost.provider, "m"), "cost", 10_500_000)):
        got = await asyncio.gather(*(_drain(leases, route, edge, 4, T0) for edge in ("edge-a", "edge-b")))
        assert sum(map(sum, got)) == 10
        w = await _minute(redis, scope, T0)
        used = w["tin"] + w["tout"] if field is None else w["cost"]
        assert used <= limit and limit - used < (100 if field is None else 1_000_000)  # margin: under one request


async def test_a_key_budget_of_half_a_dollar_at_a_cent_a_request_grants_exactly_50(redis):
    leases = CapacityLeases(redis)
    key = KeyRecord(id=new_key_id(), name="team-a", hash="0" * 64, prefix="llmgw-…",
                    created_at=datetime.now(timezone.utc), limits=KeyLimits(cost_per_month=Decimal("0.50")))
    route = _route(cost="0.01")
    got = await asyncio.gather(*(_drain(leases, route, edge, 10, T0, key) for edge in ("edge-a", "edge-b")))
    assert sum(map(sum, got)) == 50
    assert (await _minute(redis, key_scope(key.id), T0))["cost"] == 500_000_000


async def test_a_lease_ends_with_the_shortest_bucket_it_draws_on_and_at_most_its_ttl(redis):
    leases = CapacityLeases(redis)
    limited = _route(provider_limits=Limits(requests_per_minute=1000))
    g = await leases.grant("l-1", "edge-a", limited, 10, T0 + 4500, TTL_MS, GRACE_MS)
    assert g.until_ms == T0 + 5000  # the minute window's 5-s bucket ends before the TTL does
    g = await leases.grant("l-2", "edge-a", limited, 10, T0 + 1000, TTL_MS, GRACE_MS)
    assert g.until_ms == T0 + 1000 + TTL_MS


async def test_what_an_edge_did_not_admit_goes_back_when_it_returns_the_lease(redis):
    leases = CapacityLeases(redis)
    route = _route(provider_limits=Limits(requests_per_minute=50), tin=40, tout=60)
    scope = provider_scope(route.provider)
    g = await leases.grant("ret-1", "edge-a", route, 10, T0, TTL_MS, GRACE_MS)
    assert g.n == 10 and (await _minute(redis, scope, T0))["req"] == 10
    # the edge admitted 3 requests from it (their estimates): those stay reserved for their usage events
    assert await leases.give_back("ret-1", 3, 120, 180, 3_000_000, T0 + 1000, hold_ms=300) == "returned"
    assert await _minute(redis, scope, T0 + 1000) == {"req": 3, "tin": 120, "tout": 180, "cost": 3_000_000}
    assert await leases.give_back("ret-1", 0, 0, 0, 0, T0 + 1100, 60_000) == "gone"  # given back once
    assert sum(await _drain(leases, route, "edge-b", 10, T0 + 1200)) == 47  # another edge takes the rest
    assert (await _minute(redis, scope, T0 + 1200))["req"] == 3 + 47


async def test_a_lease_its_edge_never_returned_is_given_back_by_the_reaper_once(redis):
    leases = CapacityLeases(redis)
    route = _route(provider_limits=Limits(requests_per_minute=50))
    scope = provider_scope(route.provider)
    g = await leases.grant("dead-1", "edge-dead", route, 10, T0 + 10_000, TTL_MS, GRACE_MS)
    await leases.reap(g.until_ms + GRACE_MS - 1, keep_s=3600)  # its edge may still give it back
    assert await redis.hget(CAP_LEASE_PREFIX + "dead-1", "state") == "live"
    assert (await _minute(redis, scope, g.until_ms))["req"] == 10
    assert await leases.reap(g.until_ms + GRACE_MS, keep_s=3600) >= 1
    assert await redis.hget(CAP_LEASE_PREFIX + "dead-1", "state") == "reaped"
    assert (await _minute(redis, scope, g.until_ms))["req"] == 0  # its capacity is back
    await leases.reap(g.until_ms + GRACE_MS + 5000, keep_s=3600)  # taken once: nothing given back twice
    assert (await _minute(redis, scope, g.until_ms))["req"] == 0
    assert await leases.give_back("dead-1", 2, 0, 0, 0, g.until_ms + GRACE_MS + 100, 60_000) == "gone"  # late
    assert sum(await _drain(leases, route, "edge-b", 10, g.until_ms)) == 50


async def test_a_lease_of_an_edge_that_is_gone_goes_back_as_soon_as_it_ended(redis):
    """The router found its edge process gone (``dead_edges``): no grace, what no event settled goes back."""
    leases, writer = CapacityLeases(redis), WindowWriter(redis)
    route = _route(provider_limits=Limits(requests_per_minute=50))
    scope, lease_id, at_ms = provider_scope(route.provider), uuid.uuid4().hex, T0 + 40_000
    g = await leases.grant(lease_id, "edge-gone", route, 10, at_ms, TTL_MS, GRACE_MS)
    assert (lease_id, "edge-gone") not in await leases.ended(g.until_ms - 1)  # still live: not ended yet
    assert (lease_id, "edge-gone") in await leases.ended(g.until_ms)
    settled = _leased_event(route, lease_id, at_ms + 10, 50, 50, 3_000_000)
    assert await writer.apply([settled], at_ms // 1000) == 1
    assert await leases.reap_dead_edge([lease_id], g.until_ms + 500, keep_s=3600) == 1
    assert await redis.hget(CAP_LEASE_PREFIX + lease_id, "state") == "reaped"
    assert await _minute(redis, scope, g.until_ms) == {"req": 1, "tin": 50, "tout": 50, "cost": 3_000_000}
    assert (lease_id, "edge-gone") not in await leases.ended(g.until_ms + 1000)  # no longer asked about
    assert await leases.reap_dead_edge([lease_id], g.until_ms + 600, keep_s=3600) == 0  # once
    await leases.reap(g.until_ms + GRACE_MS, keep_s=3600)  # the grace reaper gives nothing back twice
    assert (await _minute(redis, scope, g.until_ms))["req"] == 1
    late = _leased_event(route, lease_id, at_ms + 20, 50, 50, 3_000_000)  # an event that still came
    assert await writer.apply([late], at_ms // 1000 + 3) == 1
    assert (await _minute(redis, scope, g.until_ms))["req"] == 2  # counted in full, once


async def test_a_returned_lease_is_not_taken_for_a_dead_edges(redis):
    leases = CapacityLeases(redis)
    route = _route(provider_limits=Limits(requests_per_minute=50))
    scope, lease_id, at_ms = provider_scope(route.provider), uuid.uuid4().hex, T0 + 45_000
    g = await leases.grant(lease_id, "edge-a", route, 10, at_ms, TTL_MS, GRACE_MS)
    assert await leases.give_back(lease_id, 4, 160, 240, 4_000_000, g.until_ms, hold_ms=60_000) == "returned"
    assert (lease_id, "edge-a") not in await leases.ended(g.until_ms + 1000)
    assert await leases.reap_dead_edge([lease_id], g.until_ms + 1000, keep_s=3600) == 0
    assert (await _minute(redis, scope, g.until_ms))["req"] == 4  # what it kept waits for its events


async def test_a_cooling_provider_gets_no_lease(redis):
    leases = CapacityLeases(redis)
    route = _route(provider_limits=Limits(requests_per_minute=50))
    await redis.set(f"{redis_keys.COOLDOWN_PREFIX}{route.provider}", "1", px=10_000)
    g = await leases.grant("cool-1", "edge-a", route, 10, T0, TTL_MS, GRACE_MS)
    assert (g.n, g.reason) == (0, "cooling down after a 429")


def _leased_event(route: LeaseRoute, lease_id: str, at_ms: int, tin: int, tout: int, cost_nano: int,
                  est_in: int = 40, est_out: int = 60, est_cost_nano: int = 1_000_000,
                  key_id: str | None = None, lease_key_id: str | None = None) -> UsageEvent:
    """A request admitted from a lease: its reservation is its own estimate, in the lease's buckets. The
    caller's key ``key_id``; the lease's ``lease_key_id`` (None: a lease the keys without limits share)."""
    reservation = Reservation(provider=route.provider, model=route.model, at_s=at_ms // 1000, tokens_in=est_in,
                              tokens_out=est_out, cost_nano=est_cost_nano, lease=lease_id, key_id=lease_key_id)
    return UsageEvent(id=uuid.uuid4().hex, ts=datetime.fromtimestamp(at_ms / 1000, timezone.utc),
                      request_id=uuid.uuid4().hex, endpoint="chat", provider=route.provider, model=route.model,
                      tokens_in=tin, tokens_out=tout, cost_usd=Decimal(cost_nano) / 10**9, status=200,
                      reservation=reservation, key_id=key_id)


def _key(name: str, limits: KeyLimits | None = None) -> KeyRecord:
    return KeyRecord(id=new_key_id(), name=name, hash="0" * 64, prefix="llmgw-…",
                     created_at=datetime.now(timezone.utc), limits=limits or KeyLimits())


async def _month(redis, key_id: str, at_s: int) -> dict[str, int]:
    got = await redis.hgetall(month_key(key_scope(key_id), at_s)[0])
    return {f: int(got.get(f, 0)) for f in ("req", "tin", "tout", "cost")}


async def test_keys_without_limits_share_a_lease_and_each_counts_its_requests_in_full_once(redis):
    """A lease the keys without limits share reserves in the route's scopes only (the router ignores the key
    scope of an ask that names no key); each request's event settles actual - estimate there and counts in
    full, once, in its own key's windows and calendar month, as a per-request admission of that key does."""
    leases, writer, store = CapacityLeases(redis), WindowWriter(redis), RoutingStore(redis)
    route = _route(model_limits=Limits(requests_per_minute=20))
    a, b, c = _key("open-a"), _key("open-b"), _key("open-c")
    lease_id, at_ms = uuid.uuid4().hex, T0 + 50_000
    now_s, p, m = at_ms // 1000 + 1, provider_scope(route.provider), model_scope(route.provider, "m")
    assert (await leases.grant(lease_id, "edge-a", route, 5, at_ms, TTL_MS, GRACE_MS, key=None)).n == 5
    assert (await _minute(redis, m, at_ms))["req"] == 5
    assert (await _minute(redis, key_scope(a.id), at_ms))["req"] == 0  # no key scope reserved
    events = [_leased_event(route, lease_id, at_ms + 10, 30, 70, 2_000_000, key_id=a.id),
              _leased_event(route, lease_id, at_ms + 20, 50, 10, 3_000_000, key_id=a.id),
              _leased_event(route, lease_id, at_ms + 30, 40, 60, 1_000_000, key_id=b.id)]
    assert await writer.apply(events[:1], now_s) == 1  # one before the lease is given back
    assert await leases.give_back(lease_id, 3, 120, 180, 3_000_000, at_ms + 1000, hold_ms=60_000) == "returned"
    assert await writer.apply(events, now_s) == 2  # the rest after; the first not twice
    assert await writer.apply(events, now_s + 1) == 0  # redelivered: nothing twice
    assert await _minute(redis, m, at_ms + 1000) == {"req": 3, "tin": 120, "tout": 140, "cost": 6_000_000}
    assert await _minute(redis, p, at_ms + 1000) == {"req": 3, "tin": 120, "tout": 140, "cost": 6_000_000}
    served_a = {"req": 2, "tin": 80, "tout": 80, "cost": 5_000_000}
    served_b = {"req": 1, "tin": 40, "tout": 60, "cost": 1_000_000}
    assert await _minute(redis, key_scope(a.id), at_ms + 1000) == served_a
    assert await _minute(redis, key_scope(b.id), at_ms + 1000) == served_b
    assert await _month(redis, a.id, at_ms // 1000) == served_a
    assert await _month(redis, b.id, at_ms // 1000) == served_b
    # the same request admitted per request by the router, for key c (no limits): its key scope reads the same
    pc = PlannedCandidate(candidate=Candidate(provider=route.provider, model="m", upstream_model="m"),
                          limits=[("provider", Limits()), ("model", route.model_limits)],
                          est_tokens_in=40, est_tokens_out=60, est_cost=Decimal("0.001"))
    admitted = await store.admit([pc], uuid.uuid4().hex, at_ms + 40, key=c)
    assert admitted.index == 0 and admitted.reservation.key_id == c.id  # reserved in the key's scope
    per_request = UsageEvent(id=uuid.uuid4().hex, ts=datetime.fromtimestamp((at_ms + 40) / 1000, timezone.utc),
                             request_id=uuid.uuid4().hex, endpoint="chat", provider=route.provider, model="m",
                             tokens_in=40, tokens_out=60, cost_usd=Decimal("0.001"), status=200, key_id=c.id,
                             reservation=admitted.reservation)
    assert await writer.apply([per_request], now_s) == 1
    assert await _minute(redis, key_scope(c.id), at_ms + 1000) == served_b
    assert await _month(redis, c.id, at_ms // 1000) == served_b


async def test_a_late_event_of_a_reaped_shared_lease_counts_in_full_once_in_its_key(redis):
    leases, writer = CapacityLeases(redis), WindowWriter(redis)
    route = _route(provider_limits=Limits(requests_per_minute=50))
    key = _key("open-late")
    lease_id, at_ms = uuid.uuid4().hex, T0 + 55_000
    g = await leases.grant(lease_id, "edge-dead", route, 4, at_ms, TTL_MS, GRACE_MS)
    settled = _leased_event(route, lease_id, at_ms + 10, 30, 30, 2_000_000, key_id=key.id)
    late = _leased_event(route, lease_id, at_ms + 20, 20, 20, 1_000_000, key_id=key.id)
    assert await writer.apply([settled], at_ms // 1000) == 1
    await leases.reap(g.until_ms + GRACE_MS, keep_s=3600)  # all but the settled request goes back
    assert await writer.apply([late], at_ms // 1000 + 2) == 1  # the lease was reaped: in full
    assert await writer.apply([late, settled], at_ms // 1000 + 3) == 0
    both = {"req": 2, "tin": 50, "tout": 50, "cost": 3_000_000}
    assert await _minute(redis, provider_scope(route.provider), g.until_ms) == both
    assert await _minute(redis, key_scope(key.id), g.until_ms) == both  # once each, not twice
    assert await _month(redis, key.id, at_ms // 1000) == both


async def test_each_request_of_a_returned_lease_is_counted_once_at_its_actual_usage(redis):
    leases, writer = CapacityLeases(redis), WindowWriter(redis)
    route = _route(provider_limits=Limits(requests_per_minute=50))
    scope, lease_id, now_s = provider_scope(route.provider), uuid.uuid4().hex, T0 // 1000 + 20
    assert (await leases.grant(lease_id, "edge-a", route, 10, T0 + 20_000, TTL_MS, GRACE_MS)).n == 10
    events = [_leased_event(route, lease_id, T0 + 20_100 + j, 30 + j, 70, 2_000_000) for j in range(3)]
    assert await writer.apply(events[:1], now_s) == 1  # one settles before the lease is given back
    assert await leases.give_back(lease_id, 3, 120, 180, 3_000_000, T0 + 21_000, hold_ms=60_000) == "returned"
    assert await writer.apply(events, now_s) == 2  # the other two after; the first is not applied twice
    assert await _minute(redis, scope, T0 + 21_000) == {"req": 3, "tin": 30 + 31 + 32, "tout": 210,
                                                        "cost": 6_000_000}


async def test_a_dead_edges_requests_count_once_whether_their_events_come_before_or_after_the_reaper(redis):
    leases, writer = CapacityLeases(redis), WindowWriter(redis)
    route = _route(provider_limits=Limits(requests_per_minute=50))
    scope, lease_id = provider_scope(route.provider), uuid.uuid4().hex
    at_ms, now_s = T0 + 30_000, T0 // 1000 + 30
    g = await leases.grant(lease_id, "edge-dead", route, 10, at_ms, TTL_MS, GRACE_MS)
    before, after, never = (_leased_event(route, lease_id, at_ms + 10 + j, 50, 50, 3_000_000) for j in range(3))
    del never  # admitted by the edge, which died before it could report it: nobody was answered
    assert await writer.apply([before], now_s) == 1  # settled on the lease: actual - estimate
    await leases.reap(g.until_ms + GRACE_MS, keep_s=3600)  # gives back all but the settled request
    assert await _minute(redis, scope, g.until_ms) == {"req": 1, "tin": 50, "tout": 50, "cost": 3_000_000}
    assert await writer.apply([after], now_s + 2) == 1  # the lease was given back: it counts in full
    assert await writer.apply([after, before], now_s + 3) == 0  # redelivered: nothing twice
    assert await _minute(redis, scope, g.until_ms) == {"req": 2, "tin": 100, "tout": 100, "cost": 6_000_000}


async def test_a_lease_given_back_before_its_grant_arrives_is_never_granted(redis):
    """The edge's question went unanswered in time (a frozen NATS or router): it gives the lease id back, and
    the question arriving afterwards reserves nothing."""
    leases = CapacityLeases(redis)
    route = _route(provider_limits=Limits(requests_per_minute=50))
    assert await leases.give_back("late-1", 0, 0, 0, 0, T0, hold_ms=60_000) == "gone"
    g = await leases.grant("late-1", "edge-a", route, 10, T0 + 100, TTL_MS, GRACE_MS)
    assert g.n == 0 and g.reason == "given back before it was granted"
    assert (await _minute(redis, provider_scope(route.provider), T0 + 100))["req"] == 0
    assert (await leases.grant("late-2", "edge-a", route, 10, T0 + 200, TTL_MS, GRACE_MS)).n == 10


async def test_what_a_returned_lease_kept_and_no_event_settled_goes_back_after_the_hold(redis):
    """An edge gives a lease back with the requests it admitted, then dies before their events (or an attempt
    fails after the give-back): ``hold_ms`` later the reaper returns their estimates, and a late event counts
    in full. A returned lease whose requests all reported is dropped: nothing is kept for it."""
    leases, writer = CapacityLeases(redis), WindowWriter(redis)
    route = _route(provider_limits=Limits(requests_per_minute=50))
    scope, now_s, at_ms = provider_scope(route.provider), T0 // 1000 + 40, T0 + 40_000
    reported, dead = uuid.uuid4().hex, uuid.uuid4().hex
    assert (await leases.grant(reported, "edge-a", route, 5, at_ms, TTL_MS, GRACE_MS)).n == 5
    assert (await leases.grant(dead, "edge-dead", route, 3, at_ms, TTL_MS, GRACE_MS)).n == 3
    events = [_leased_event(route, reported, at_ms + 10 + j, 40, 60, 1_000_000) for j in range(2)]
    assert await writer.apply(events, now_s) == 2
    assert await leases.give_back(reported, 2, 80, 120, 2_000_000, at_ms + 500, hold_ms=1000) == "returned"
    # the dead edge's last requests: 3 admitted (the lease used up and given back), none of them reported
    assert await leases.give_back(dead, 3, 120, 180, 3_000_000, at_ms + 500, hold_ms=1000) == "returned"
    assert (await _minute(redis, scope, at_ms + 500))["req"] == 2 + 3
    assert await leases.reap(at_ms + 1499, keep_s=3600) == 0  # held: their events may still come
    assert (await _minute(redis, scope, at_ms + 1499))["req"] == 2 + 3
    assert await leases.reap(at_ms + 1500, keep_s=3600) == 1  # the dead edge's 3: given back
    assert not await redis.exists(CAP_LEASE_PREFIX + reported)  # its requests all reported: dropped
    assert await redis.hget(CAP_LEASE_PREFIX + dead, "state") == "reaped"
    assert await _minute(redis, scope, at_ms + 1500) == {"req": 2, "tin": 80, "tout": 120, "cost": 2_000_000}
    late = _leased_event(route, dead, at_ms + 20, 10, 10, 500_000)
    assert await writer.apply([late], now_s + 2) == 1  # given back already: it counts in full, once
    assert await _minute(redis, scope, at_ms + 1600) == {"req": 3, "tin": 90, "tout": 130, "cost": 2_500_000}
    assert sum(await _drain(leases, route, "edge-b", 10, at_ms + 1600)) == 47  # the rest, to the last


async def test_the_views_show_what_was_admitted_from_a_live_lease_not_what_it_holds_unused(redis):
    # admission reads the whole lease (consumed + reserved by live leases <= limit); the views (router state,
    # /api/usage/current, a key's usage) read what its edge reported admitted, as the per-request admission
    # showed each request from its admission: a user sees the same counts with leases on or off
    leases = CapacityLeases(redis)
    key = KeyRecord(id=new_key_id(), name="team-v", hash="0" * 64, prefix="llmgw-…",
                    created_at=datetime.now(timezone.utc), limits=KeyLimits(cost_per_month=Decimal("5")))
    route = _route(provider_limits=Limits(requests_per_minute=50), tin=40, tout=60, cost="0.01")
    scope, kscope = provider_scope(route.provider), key_scope(key.id)
    month = month_key(kscope, T0 / 1000)[0]
    raw, views = WindowReader(redis), WindowReader(redis, admitted=True)
    lease = uuid.uuid4().hex
    g = await leases.grant(lease, "edge-a", route, 10, T0, TTL_MS, GRACE_MS, key=key)
    assert g.n == 10 and (await _minute(redis, scope, T0))["req"] == 10
    at = T0 // 1000

    async def shown() -> tuple[dict, dict, dict]:
        got = await views.read([scope, kscope], at)
        return got[scope]["minute"], got[kscope]["day"], await views.read_month(month)

    assert [w["req"] for w in await shown()] == [0, 0, 0]  # nothing admitted from it yet
    assert await redis.zscore(redis_keys.CAP_LEASE_ENDS, lease) == g.until_ms  # the live leases the views read
    # the edge admitted 3 from it (their estimates: 40 + 60 tokens, a cent each)
    assert await leases.note_use([(lease, 2, 3, 120, 180, 30_000_000)]) == 1
    assert await leases.note_use([(lease, 1, 1, 40, 60, 10_000_000)]) == 0  # an older report: ignored
    admitted = {"req": 3, "tin": 120, "tout": 180, "cost": 30_000_000}
    assert await shown() == (admitted, admitted, admitted)
    assert (await raw.read([scope], at))[scope]["minute"]["req"] == 10  # admission still counts the lease whole
    assert (await raw.read_month(month))["req"] == 10
    # given back: the unused part leaves the windows, and both readings agree
    assert await leases.give_back(lease, 3, 120, 180, 30_000_000, T0 + 1000, hold_ms=60_000) == "returned"
    assert await shown() == (admitted, admitted, admitted)
    assert (await raw.read([scope], at))[scope]["minute"] == admitted
    assert await redis.zscore(redis_keys.CAP_LEASE_ENDS, lease) is None
    assert await leases.note_use([(lease, 3, 4, 0, 0, 0)]) == 0  # a report after the give-back: ignored
