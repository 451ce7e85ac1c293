"""The router on Redis with Sentinel (1 primary, 1 replica, 3 sentinels on loopback): its primary killed
(-9) under load, the routers follow the primary the sentinels promote; meanwhile a decision fails fast with
a Redis connection error (what the router's endpoint answers as a 503, "router cannot reach its shared
state"), and the limit is never passed: an admission counts only once a replica holds it (WAIT)."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis_topologies import SentinelSet
from two_routers import TwoRouters

from llmgw_common.config import parse_config
from llmgw_common.redis_conn import NotReplicated
from llmgw_common.windows import WindowReader, provider_scope

pytestmark = pytest.mark.integration

T0 = (int(time.time()) // 86400 + 2) * 86400 * 1000  # ahead of the real clock, at a minute's start
LIMIT = 50
WORKERS = 8


@pytest.fixture
def sentinels(tmp_path):
    topology = SentinelSet(tmp_path).start()
    yield topology
    topology.stop()


async def test_the_primary_killed_under_load_the_routers_follow_the_new_one_and_never_pass_the_limit(sentinels):
    provider = f"st-{uuid.uuid4().hex[:8]}"
    config = parse_config({"providers": [{"id": provider, "base_url": "http://127.0.0.1:9/v1",
                                          "limits": {"requests_per_minute": LIMIT},
                                          "models": [{"name": "m", "price": {"per_request": "0.01"}}]}]})
    routers = TwoRouters(sentinels.url, config, now_ms=T0)
    admitted = refused = 0
    failed: list[BaseException] = []  # decisions that met Redis away
    killed = asyncio.Event()
    kill_at = back_at = 0.0  # monotonic: the kill, the first decision answered after it
    old_primary = sentinels.primary.port
    counter = iter(range(10**6))

    async def worker() -> None:
        nonlocal admitted, refused, kill_at, back_at
        while refused < 2 * WORKERS or not killed.is_set():  # after the kill, go on until the limit refuses
            started = time.monotonic()
            try:
                decision = await routers.decide(next(counter))
            except (RedisConnectionError, RedisTimeoutError) as exc:
                failed.append(exc)
                await asyncio.sleep(0.05)
                continue
            if killed.is_set() and started > kill_at and not back_at:
                back_at = time.monotonic()
            if decision.error is None:
                admitted += 1
                if admitted >= LIMIT // 2 and not killed.is_set():
                    killed.set()
                    kill_at = time.monotonic()
                    sentinels.primary.kill()  # SIGKILL, with decisions in flight on both routers
            else:
                assert decision.error.status == 429, decision.error
                refused += 1
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(WORKERS))), timeout=60)
        assert sentinels.primary_port() == sentinels.replica.port != old_primary
        totals = await WindowReader(routers.clients[0]).read([provider_scope(provider)], T0 // 1000)
    finally:
        await routers.aclose()
    counted = totals[provider_scope(provider)]["minute"]["req"]
    print(f"sentinel failover: {admitted} admitted, {refused} refused at the limit, {len(failed)} failed "
          f"in the {back_at - kill_at:.1f} s the primary was away; the new primary counts {counted}")
    assert failed, "the kill did not reach a decision"
    # the new primary holds the whole limit: every admission the routers saw (each on the replica before it
    # counted), plus those whose reply the dying primary never sent (failed to the router: counted, not used)
    assert counted == LIMIT
    assert LIMIT - WORKERS <= admitted <= LIMIT  # at most one decision per worker was in flight at the kill


async def test_an_admission_no_replica_acknowledged_is_refused_not_used(sentinels):
    provider = f"st-{uuid.uuid4().hex[:8]}"
    config = parse_config({"providers": [{"id": provider, "base_url": "http://127.0.0.1:9/v1",
                                          "limits": {"requests_per_minute": LIMIT},
                                          "models": [{"name": "m", "price": {"per_request": "0.01"}}]}]})
    routers = TwoRouters(sentinels.url, config, now_ms=T0)
    try:
        assert (await routers.decide(0)).error is None
        sentinels.replica.proc.send_signal(signal.SIGSTOP)  # connected, but it acknowledges nothing
        try:
            with pytest.raises(NotReplicated):  # the router's endpoint answers it 503, as Redis away
                await routers.decide(1)
        finally:
            sentinels.replica.proc.send_signal(signal.SIGCONT)
        assert (await routers.decide(2)).error is None
        totals = await WindowReader(routers.clients[0]).read([provider_scope(provider)], T0 // 1000)
        assert totals[provider_scope(provider)]["minute"]["req"] == 3  # the refused one stays counted: never over
    finally:
        await routers.aclose()
