"""The sliding windows at their bucket edges: a request counts for at least a window's length and at most
one bucket longer, so a limit of N per window never admits more than N within any window's length.

Real Redis (``infra.redis_url``) and the real Lua scripts: the router's admission and release
(``RoutingStore``), the usage writer's reconciliation (``WindowWriter``) and the reader behind
``/debug/router`` and ``/api/usage/current`` (``WindowReader``). Time is moved, not waited for: the
store and the reader take ``now``; the clock starts a few hours ahead of the real one, so no bucket is
given an expiry in Redis's past.
"""

from __future__ import annotations

import heapq
import random
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmgw_common.config import BreakerConfig, Limits
from llmgw_common.messages import AttemptOutcome, Candidate, UsageEvent
from llmgw_common.redis_conn import connect_redis
from llmgw_common.windows import KEY_PREFIX, WINDOWS, WindowReader, model_scope, provider_scope
from llmgw_router.policy import PlannedCandidate
from llmgw_router.store import RoutingStore
from llmgw_usage import domain
from llmgw_usage.windows_writer import WindowWriter

pytestmark = pytest.mark.integration

BY_NAME = {w.name: w for w in WINDOWS}
# a day-bucket edge (so every bucket edge) a few hours ahead of the real clock
BASE_S = (int(time.time()) // 86400 + 1) * 86400 + 86400


# ---- the arithmetic alone ---------------------------------------------------

@pytest.mark.parametrize("w", WINDOWS, ids=lambda w: w.name)
def test_layout(w):
    assert w.seconds % w.bucket_s == 0
    first, last = w.read_range(BASE_S + 3)
    assert (last - first) // w.bucket_s + 1 == w.keys_read == w.buckets + 1
    assert {w.name: w.keys_read for w in WINDOWS} == {"minute": 13, "hour": 61, "day": 97}


@settings(max_examples=300, deadline=None)
@given(w=st.sampled_from(WINDOWS), at_ms=st.integers(0, 10**6 * 1000), later_ms=st.integers(0, 2 * 86400 * 1000))
def test_a_request_counts_for_at_least_the_window_and_at_most_one_bucket_longer(w, at_ms, later_ms):
    """The pure arithmetic, for a request admitted at ``at_ms`` and a check ``later_ms`` after it."""
    at_s, now_s = at_ms // 1000, (at_ms + later_ms) // 1000
    start = w.bucket_start(at_s)
    first, last = w.read_range(now_s)
    counted = first <= start <= last
    if later_ms < w.seconds * 1000:
        assert counted
        assert w.expire_at(start) > now_s  # its key is still there
    if later_ms >= (w.seconds + w.bucket_s) * 1000:
        assert not counted
    if counted:
        assert w.expire_at(start) > now_s


def test_the_usage_writer_uses_the_same_buckets_and_expiries():
    at, scopes = BASE_S + 4, ("p:x", "m:x/y")
    for now in (at, at + 59, at + 61, at + 3599, at + 3601, at + 86399, at + 86401, at + 90000):
        expected = [(f"{KEY_PREFIX}{s}:{w.bucket_s}:{w.bucket_start(at)}", w.expire_at(w.bucket_start(at)))
                    for s in scopes for w in WINDOWS if w.expire_at(w.bucket_start(at)) > now]
        assert domain.live_buckets(scopes, at, now) == expected
        # written while a window still sums it, and only then
        for w in WINDOWS:
            first, last = w.read_range(now)
            assert (first <= w.bucket_start(at) <= last) == any(f":{w.bucket_s}:" in k for k, _ in expected)


# ---- real Redis --------------------------------------------------------------

@pytest.fixture
async def redis(infra):
    r = connect_redis(infra.redis_url)
    yield r
    keys = [k async for k in r.scan_iter(f"{KEY_PREFIX}*win-test-*", count=1000)]
    if keys:
        await r.delete(*keys)
    await r.aclose()


def _provider() -> str:
    return f"win-test-{uuid.uuid4().hex[:10]}"


def _planned(provider: str, model_limits: Limits, est_in: int = 10, est_out: int = 20,
             cost: str = "0.001") -> PlannedCandidate:
    return PlannedCandidate(candidate=Candidate(provider=provider, model="m", upstream_model="m"),
                            limits=[("provider", Limits()), ("model", model_limits)],
                            est_tokens_in=est_in, est_tokens_out=est_out, est_cost=Decimal(cost))


async def _admit(store: RoutingStore, pc: PlannedCandidate, now_ms: int):
    return await store.admit([pc], f"r-{uuid.uuid4().hex[:8]}", now_ms)


# where in its bucket the request is admitted: first ms, second ms, middle, last second, last ms
EDGES = ["first-ms", "second-ms", "middle", "last-second", "last-ms"]


def _offset_ms(edge: str, bucket_s: int) -> int:
    return {"first-ms": 0, "second-ms": 1, "middle": bucket_s * 500 + 123, "last-second": (bucket_s - 1) * 1000,
            "last-ms": bucket_s * 1000 - 1}[edge]


@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("name", ["minute", "hour", "day"])
async def test_counted_until_the_window_has_passed_released_one_bucket_later_at_most(redis, name, edge):
    w = BY_NAME[name]
    store, reader, provider = RoutingStore(redis), WindowReader(redis), _provider()
    pc = _planned(provider, Limits(**{f"requests_per_{name}": 1}))
    t = BASE_S * 1000 + 7 * w.bucket_s * 1000 + _offset_ms(edge, w.bucket_s)

    first = await _admit(store, pc, t)
    assert first.index == 0 and first.reservation.at_s == t // 1000

    # still counted (and blocking) until the very last ms of the window's length
    for later in (1, w.bucket_s * 1000 - 1, w.seconds * 1000 - w.bucket_s * 1000, w.seconds * 1000 - 1000,
                  w.seconds * 1000 - 1):
        refused = await _admit(store, pc, t + later)
        assert refused.index is None, f"{name} window let go {later} ms after admission"
        assert f"requests_per_{name} reached on model (1/1)" in refused.reasons[0]
        totals = await reader.read([model_scope(provider, "m")], (t + later) // 1000)
        assert totals[model_scope(provider, "m")][name]["req"] == 1

    # released one bucket after the window's length at the latest
    release_ms = t + (w.seconds + w.bucket_s) * 1000
    totals = await reader.read([model_scope(provider, "m")], release_ms // 1000)
    assert totals[model_scope(provider, "m")][name]["req"] == 0
    again = await _admit(store, pc, release_ms)
    assert again.index == 0


@pytest.mark.parametrize("name,n,span_s,attempts,seed", [
    ("minute", 3, 240, 400, 1), ("minute", 5, 300, 400, 2), ("minute", 1, 180, 300, 3),
    ("hour", 4, 4 * 3600, 300, 4), ("day", 3, 4 * 86400, 200, 5),
])
async def test_a_limit_of_n_never_admits_more_than_n_within_any_window(redis, name, n, span_s, attempts, seed):
    """Property-style, bounded: attempts at random ms over a few windows, half of them near bucket edges,
    plus, after every admission, one probe just before the window's length has passed and one after."""
    w = BY_NAME[name]
    rng = random.Random(seed)
    store, provider = RoutingStore(redis), _provider()
    pc = _planned(provider, Limits(**{f"requests_per_{name}": n}))
    base_ms, window_ms, bucket_ms = BASE_S * 1000, w.seconds * 1000, w.bucket_s * 1000
    pending = []
    for _ in range(attempts):
        if rng.random() < 0.5:  # near a bucket edge
            edge = rng.randrange(0, span_s // w.bucket_s + 1) * bucket_ms
            pending.append(base_ms + max(0, edge + rng.randint(-1500, 1500)))
        else:
            pending.append(base_ms + rng.randrange(0, span_s * 1000))
    heapq.heapify(pending)
    admitted, refused = [], []
    while pending:
        t = heapq.heappop(pending)
        if (await _admit(store, pc, t)).index == 0:
            admitted.append(t)
            if t < base_ms + span_s * 1000:
                heapq.heappush(pending, t + window_ms - rng.randint(1, bucket_ms))
                heapq.heappush(pending, t + window_ms + rng.randint(0, bucket_ms))
        else:
            refused.append(t)
    for a in admitted:  # never more than n within any interval of the window's length
        assert sum(1 for b in admitted if a <= b < a + window_ms) <= n, f"over {n} per {name} from {a - base_ms} ms"
    for r in refused:  # refused only while n admissions are less than one window and one bucket old
        assert sum(1 for b in admitted if r - window_ms - bucket_ms < b <= r) >= n
    assert len(admitted) >= n and refused


@pytest.mark.parametrize("edge", ["first-ms", "last-ms"])
async def test_reconciliation_lands_in_the_reservation_buckets(redis, edge):
    """Usage adds actual - estimated into the buckets of the reservation's ``at_s``: the windows show the
    real amounts for as long as the request counts, and nothing else is written."""
    store, reader, writer, provider = RoutingStore(redis), WindowReader(redis), WindowWriter(redis), _provider()
    pc = _planned(provider, Limits(tokens_per_minute=6_000), est_in=100, est_out=4000, cost="0.004")
    t = BASE_S * 1000 + 3 * 900_000 + _offset_ms(edge, 5)
    admission = await _admit(store, pc, t)
    r = admission.reservation
    assert r.at_s == t // 1000
    event = UsageEvent(ts=datetime.fromtimestamp(r.at_s + 3, tz=timezone.utc), request_id="req", provider=provider,
                       model="m", upstream_model="m", tokens_in=120, tokens_out=30, cost_usd=Decimal("0.000150"),
                       status=200, reservation=r)
    assert await writer.apply([event], now_s=r.at_s + 4) == 1

    scopes = [provider_scope(provider), model_scope(provider, "m")]
    keys = sorted([k async for k in redis.scan_iter(f"{KEY_PREFIX}*{provider}*")])
    assert keys == sorted(f"{KEY_PREFIX}{s}:{w.bucket_s}:{w.bucket_start(r.at_s)}" for s in scopes for w in WINDOWS)
    real = {"req": 1, "tin": 120, "tout": 30, "cost": 150_000}
    for later_s in (0, 4, 59):
        totals = await reader.read(scopes, r.at_s + later_s)
        assert all(totals[s][w.name] == real for s in scopes for w in WINDOWS)
    # the request keeps counting in the hour and day windows after the minute let it go
    totals = await reader.read(scopes, r.at_s + 65)
    assert totals[scopes[1]]["minute"]["req"] == 0 and totals[scopes[1]]["hour"] == real
    # reconciled, the minute holds 150 tokens, not 4_100: another estimate of 4_100 fits under 6_000 again
    assert (await _admit(store, pc, t + 10_000)).index == 0


async def test_a_failed_attempt_gives_back_its_reservation_from_its_own_bucket(redis):
    store, reader, provider = RoutingStore(redis), WindowReader(redis), _provider()
    pc = _planned(provider, Limits(requests_per_minute=1))
    t = BASE_S * 1000 + 4_999  # the last ms of a 5-s bucket
    admission = await _admit(store, pc, t)
    assert (await _admit(store, pc, t + 30_000)).index is None
    outcome = AttemptOutcome(request_id="x", provider=provider, model="m", ok=False, status=503, latency_ms=5.0,
                             reservation=admission.reservation)
    # the release comes 30 s later, from another bucket: it still finds the reservation's bucket
    await store.record_outcome(outcome, "failure", 0, BreakerConfig(failures=100), t + 30_000)
    totals = await reader.read([model_scope(provider, "m")], (t + 30_000) // 1000)
    assert totals[model_scope(provider, "m")]["minute"] == {"req": 0, "tin": 0, "tout": 0, "cost": 0}
    assert (await _admit(store, pc, t + 30_001)).index == 0
