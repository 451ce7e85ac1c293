"""Admission leases: a reservation nobody settles becomes an "abandoned" event, once, with the request's
own event id; settled ones (by their usage event, by a failed attempt's release) never do; running streams
renew theirs. Real Redis, NATS and the real scripts; the whole stack for an edge killed mid-request."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from decimal import Decimal

import httpx
import pytest

from fakes import FakeProvider
from llmgw_common import redis_keys
from llmgw_common.config import BreakerConfig, Limits
from llmgw_common.leases import ABANDONED_STATUS, LEASES_KEY, lease_key, lease_member
from llmgw_common.messages import AttemptOutcome, Candidate, UsageEvent
from llmgw_common.redis_conn import connect_redis
from llmgw_common.windows import WindowReader, model_scope
from llmgw_router.abandoned import abandoned_event
from llmgw_router.policy import PlannedCandidate
from llmgw_router.store import Leases, RoutingStore
from llmgw_usage.windows_writer import WindowWriter
from stacks import running_stack, wait_for

pytestmark = pytest.mark.integration

T0 = (int(time.time()) // 86400 + 3) * 86400 * 1000  # ahead of the real clock: no expiry in Redis's past


def _planned(provider: str) -> PlannedCandidate:
    return PlannedCandidate(candidate=Candidate(provider=provider, model="m", upstream_model="up"),
                            limits=[("provider", Limits()), ("model", Limits())], est_tokens_in=40,
                            est_tokens_out=60, est_cost=Decimal("0.002"))


@pytest.fixture
async def redis(infra):
    r = connect_redis(infra.redis_url)
    yield r
    await r.delete(LEASES_KEY)
    await r.aclose()


async def test_an_unsettled_lease_becomes_one_abandoned_event_that_changes_no_window(redis):
    store, leases, provider = RoutingStore(redis), Leases(redis), f"lease-{uuid.uuid4().hex[:8]}"
    admitted = await store.admit([_planned(provider)], "req-1", T0, event_id="evt-1", lease_s=10)
    member = lease_member("req-1", provider)
    assert await redis.zscore(LEASES_KEY, member) == T0 + 10_000
    assert await leases.take_expired(T0 + 9_000) == []  # not due yet
    (taken_member, fields), = await leases.take_expired(T0 + 10_000)
    assert taken_member == member and await leases.take_expired(T0 + 20_000) == []  # taken once
    assert not await redis.exists(lease_key(member))

    event = abandoned_event(fields)
    assert (event.id, event.request_id, event.status, event.provider, event.model) == (
        "evt-1", "req-1", ABANDONED_STATUS, provider, "m")
    assert (event.tokens_in, event.tokens_out, event.cost_usd) == (40, 60, Decimal("0.002"))
    assert event.reservation == admitted.reservation

    reader, writer = WindowReader(redis), WindowWriter(redis)
    scope = model_scope(provider, "m")
    before = await reader.read([scope], T0 // 1000 + 11)
    assert await writer.apply([event], T0 // 1000 + 11) == 1
    assert await reader.read([scope], T0 // 1000 + 11) == before  # the reservation was the whole of it
    # the request's own event turning up late is the same event: applied once
    late = UsageEvent(id="evt-1", request_id="req-1", provider=provider, model="m", tokens_in=45, tokens_out=7,
                      status=200, reservation=admitted.reservation)
    assert await writer.apply([late], T0 // 1000 + 12) == 0


async def test_settled_leases_never_become_abandoned(redis):
    store, leases, provider = RoutingStore(redis), Leases(redis), f"lease-{uuid.uuid4().hex[:8]}"
    # settled by the request's usage event
    r1 = (await store.admit([_planned(provider)], "req-a", T0, event_id="evt-a", lease_s=5)).reservation
    done = UsageEvent(id="evt-a", request_id="req-a", provider=provider, model="m", tokens_in=1, tokens_out=1,
                      status=200, reservation=r1)
    await WindowWriter(redis).apply([done], T0 // 1000 + 1)
    # settled by the release of a failed attempt
    r2 = (await store.admit([_planned(provider)], "req-b", T0, event_id="evt-b", lease_s=5)).reservation
    failed = AttemptOutcome(request_id="req-b", provider=provider, model="m", ok=False, status=503, latency_ms=1,
                            reservation=r2, kind="overloaded")
    await store.record_outcome(failed, "failure", 0, BreakerConfig(), T0 + 1000)
    # still running, and renewed
    await store.admit([_planned(provider)], "req-c", T0, event_id="evt-c", lease_s=5)
    await leases.extend([lease_member("req-c", provider)], T0 + 60_000)
    assert await leases.take_expired(T0 + 30_000) == []
    assert [m for m, _ in await leases.take_expired(T0 + 60_000)] == [lease_member("req-c", provider)]


# ---- an edge killed mid-request -------------------------------------------------------------

@pytest.fixture(scope="module")
def slow_upstream():
    with FakeProvider(models=["slow"], delay_s=4.0) as up:
        yield up


def test_an_edge_killed_mid_request_leaves_an_abandoned_event_and_agreeing_windows(infra, slow_upstream,
                                                                                   tmp_path):
    config = f"""
version: 1
providers:
  - id: slowp
    base_url: {slow_upstream.url}
    models: [{{name: slow, price: {{input_per_mtok: 1, output_per_mtok: 1}}}}]
routing:
  abandoned_after_s: 3
usage:
  batch_wait_s: 0.1
"""
    env = dict(os.environ, NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url, CLICKHOUSE_URL=infra.clickhouse_url)
    with running_stack(tmp_path, config, env) as stack:
        edge = next(c for c in stack.children if c.name == "edge")
        answered: list[int] = []

        def call() -> None:
            try:
                answered.append(httpx.post(f"http://127.0.0.1:{stack.edge_port}/v1/chat/completions", timeout=30,
                                           json={"model": "slow", "messages": [{"role": "user", "content": "x"}]})
                                .status_code)
            except httpx.HTTPError:
                answered.append(0)

        caller = threading.Thread(target=call)
        caller.start()
        wait_for(lambda: slow_upstream.requests and slow_upstream.requests[-1]["body"]["model"] == "slow",
                 timeout=10, interval=0.05)
        os.kill(edge.proc.pid, signal.SIGKILL)  # mid-request: the upstream is still answering
        caller.join(30)
        assert answered == [0]

        with _admin(stack) as ui:
            def abandoned():
                rows = ui.get("/api/requests", params={"provider": "slowp"}).json()["rows"]
                return [r for r in rows if r["status"] == ABANDONED_STATUS]

            (row,) = wait_for(abandoned, timeout=40)
            assert row["tokens_in"] > 0 and row["tokens_out"] > 0 and "abandoned" in row["error"]

            def windows():
                for s in ui.get("/api/usage/current").json()["scopes"]:
                    if s["scope"] == "provider" and s["provider"] == "slowp":
                        return s["windows"]["minute"]
                return None

            minute = wait_for(windows, timeout=10)
            # ClickHouse and the windows agree: one request, its reserved estimate
            assert minute["requests"] == 1 and minute["tokens_in"] == row["tokens_in"]


def _admin(stack) -> httpx.Client:
    try:
        from admin import admin_client  # tests/admin.py: the admin API's credential
    except ImportError:
        return httpx.Client(base_url=f"http://127.0.0.1:{stack.ui_port}", timeout=10)
    return admin_client(stack)


async def test_a_question_asked_again_gets_the_same_admission_not_a_second_reservation(redis):
    store, provider = RoutingStore(redis), f"lease-{uuid.uuid4().hex[:8]}"
    reader, scope = WindowReader(redis), model_scope(provider, "m")
    first = await store.admit([_planned(provider)], "req-q", T0, event_id="evt-q", lease_s=30)
    again = await store.admit([_planned(provider)], "req-q", T0 + 1500, event_id="evt-q", lease_s=30)
    assert again.index == first.index == 0 and again.reservation == first.reservation
    assert (await reader.read([scope], T0 // 1000 + 2))[scope]["minute"]["req"] == 1  # reserved once
    # the next attempt (another provider excluded) is a new question
    other = await store.admit([_planned(provider)], "req-q", T0 + 2000, event_id="evt-q", lease_s=30, attempt=1)
    assert other.index == 0 and (await reader.read([scope], T0 // 1000 + 3))[scope]["minute"]["req"] == 2


async def test_a_batch_of_successes_is_recorded_in_one_round_trip(redis):
    store, provider = RoutingStore(redis), f"lease-{uuid.uuid4().hex[:8]}"
    for rid in ("b1", "b2", "b3"):
        await store.admit([_planned(provider)], rid, T0, event_id=f"evt-{rid}", lease_s=30)
    assert await redis.zcard(f"{redis_keys.INFLIGHT_PREFIX}{provider}") == 3
    items = [(AttemptOutcome(request_id=rid, provider=provider, model="m", ok=True, status=200, latency_ms=ms),
              "ok", 0) for rid, ms in (("b1", 100.0), ("b2", 200.0), ("b3", 300.0))]
    await store.record_outcomes(items, BreakerConfig(), T0 + 500)
    assert await redis.zcard(f"{redis_keys.INFLIGHT_PREFIX}{provider}") == 0
    assert 100.0 < float(await redis.get(f"{redis_keys.LATENCY_PREFIX}{provider}")) < 300.0  # the moving average took all three
    await redis.delete(f"{redis_keys.LATENCY_PREFIX}{provider}")
