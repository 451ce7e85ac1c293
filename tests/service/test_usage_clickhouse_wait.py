"""The usage service without ClickHouse, or with its schema behind: it starts, keeps the Redis windows current,
leaves ClickHouse's batches in the stream (unacknowledged), says why on ``/readyz``, never runs DDL, and
catches up (each event once) when ClickHouse is there. Real NATS, Redis and chDB; ``llmgw migrate`` through
its command line.

ClickHouse *coming back* is shown with chDB, whose data directory belongs to one process: the test holds the
directory's lock (as another process would), so the service cannot attach, then lets go. A ClickHouse server
that answers later cannot be had here (no server on this machine); a URL to a closed port shows the start
without one, which is the same code path (``ClickHouseLink`` retries whatever ``attach`` raised).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from llmgw_cli.infra import free_port
from llmgw_common import subjects
from llmgw_common.messages import UsageRequests, UsageRequestsQuery
from llmgw_common.nats_conn import RemoteError, request
from llmgw_common.windows import WindowReader, provider_scope
from clickhouse_connect.driver.exceptions import OperationalError

from llmgw_usage.clickhouse_link import ClickHouseLink
from llmgw_usage.consumer import ensure_consumer
from llmgw_usage.main import serve
from llmgw_usage.projection import ClickHouseProjection
from llmgw_usage.schema import required_version
from llmgw_usage.store import ClickHouseStore, _lock_dir
from llmgw_usage.windows_follower import WindowFollower
from llmgw_usage.windows_writer import WindowWriter
from test_usage_service import (  # noqa: F401 - env is a fixture
    DEADLINE_S,
    _clickhouse,
    _config,
    _current,
    _event,
    _publish,
    _scope,
    _uniq,
    _wait_caught_up,
    _wait_ready,
    env,
    migrated,
)

pytestmark = pytest.mark.integration

EVENTS = 300  # while ClickHouse is away; the windows used to stop after about 5 batches


@pytest.fixture
def ops_port(monkeypatch) -> int:
    port = free_port()
    monkeypatch.setenv("LLMGW_METRICS_PORT", str(port))
    monkeypatch.setenv("LLMGW_METRICS_HOST", "127.0.0.1")
    return port


@contextlib.asynccontextmanager
async def usage_service(env, state_dir: Path, clickhouse_url: str | None = None):
    settings = env.settings(state_dir)
    if clickhouse_url is not None:
        settings.clickhouse_url = clickhouse_url
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, _config(batch_size=20), stop))
    try:
        await _wait_ready(env.nc, task)
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)


async def readiness(port: int) -> tuple[int, dict]:
    async with httpx.AsyncClient() as client:
        resp = await client.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
    return resp.status_code, resp.json()


async def until(probe, what: str):
    """Poll ``probe`` until it returns something truthy (eventual, not a speed assertion)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        found = await probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {DEADLINE_S}s: {what}"
        await asyncio.sleep(0.2)


async def window_requests(env, provider: str) -> int:
    scope = _scope(await _current(env.nc), provider)
    return scope.windows["day"].requests if scope else 0


async def unacknowledged(env) -> int:
    info = await env.js.consumer_info(subjects.USAGE_STREAM, subjects.USAGE_CONSUMER)
    return info.num_pending + info.num_ack_pending


def llmgw_migrate(env, state_dir: Path) -> subprocess.CompletedProcess:
    proc_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LLMGW_METRICS"))}
    proc_env.update(REDIS_URL=env.infra.redis_url, CLICKHOUSE_URL=env.infra.clickhouse_url,
                    LLMGW_STATE_DIR=str(state_dir))
    return subprocess.run([sys.executable, "-m", "llmgw_cli.main", "migrate"], env=proc_env, capture_output=True,
                          text=True, timeout=180)


async def test_unmigrated_clickhouse_waits_for_llmgw_migrate(env, tmp_path, ops_port):
    if env.infra.clickhouse_url:
        pytest.skip("needs a ClickHouse of its own to be unmigrated (chDB)")
    fresh = tmp_path / "fresh"
    provider = _uniq("prov")
    waiting = f"waiting for schema {required_version()}, have 0: run llmgw migrate"

    async with usage_service(env, fresh):
        status, body = await until(lambda: _not_ready(ops_port), "/readyz says the schema is behind")
        assert status == 503 and body["status"] == "not ready"
        assert body["checks"]["schema"]["detail"] == waiting
        await _publish(env.js, _event(provider, "m", tokens_in=3))
        await until(lambda: _equals(window_requests(env, provider), 1), "the window counts the event")
        assert await unacknowledged(env) == 1  # not stored in ClickHouse, so not acknowledged
        with pytest.raises(RemoteError) as refused:  # the queries say why, as a 503
            await request(env.nc, subjects.USAGE_QUERY_REQUESTS, UsageRequestsQuery(limit=1), UsageRequests,
                          timeout=10)
        assert refused.value.status == 503 and waiting in str(refused.value)

    with _clickhouse(env, fresh) as ch:  # the service ran no DDL: not even schema_migrations
        assert ch.query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows == []

    async with usage_service(env, fresh):  # waiting again; `llmgw migrate` runs meanwhile, and it proceeds
        await until(lambda: _not_ready(ops_port), "/readyz says the schema is behind")
        done = await asyncio.to_thread(llmgw_migrate, env, fresh)
        assert done.returncode == 0, done.stderr
        assert "applied migrations 0001" in done.stdout
        status, body = await until(lambda: _ready(ops_port), "/readyz 200 once migrated")
        assert body["status"] == "ready", body
        await _wait_caught_up(env.js)
        rows = await request(env.nc, subjects.USAGE_QUERY_REQUESTS, UsageRequestsQuery(provider=provider),
                             UsageRequests, timeout=10)
        assert len(rows.rows) == 1
        assert await window_requests(env, provider) == 1  # redelivered, counted once


async def test_usage_starts_while_clickhouse_is_unavailable_and_catches_up(env, tmp_path, ops_port):
    if env.infra.clickhouse_url:
        pytest.skip("holds a chDB directory as another process would")
    state_dir = tmp_path / "busy"
    await migrated(env.infra, state_dir)
    provider = _uniq("prov")
    held = _lock_dir(state_dir / "clickhouse")  # another process has the ClickHouse: unavailable
    try:
        async with usage_service(env, state_dir):
            # many more than a few batches (of 20): the windows keep up with all of them
            acks = [await env.js.publish_async(subjects.usage_event_subject(provider),
                                               _event(provider, "m", tokens_in=i + 1).encode())
                    for i in range(EVENTS)]
            await asyncio.gather(*acks)
            await until(lambda: _equals(window_requests(env, provider), EVENTS), f"the windows count all {EVENTS}")
            assert await unacknowledged(env) == EVENTS
            status, body = await readiness(ops_port)
            assert status == 200 and body["status"] == "degraded", body  # ready: the windows run
            assert "in use by another process" in body["checks"]["clickhouse"]["detail"]

            os.close(held)  # ClickHouse is there again
            held = None
            await _wait_caught_up(env.js)
            assert await window_requests(env, provider) == EVENTS  # the follower's and the consumer's: once
            status, body = await until(lambda: _ready(ops_port), "/readyz ready again")
            assert body["status"] == "ready"
    finally:
        if held is not None:
            os.close(held)
    with _clickhouse(env, state_dir) as ch:
        rows = ch.query("SELECT count(), uniqExact(id) FROM usage_events WHERE provider = {p:String}",
                        parameters={"p": provider}).result_rows
    assert rows == [(EVENTS, EVENTS)]  # each event stored, once


async def test_usage_starts_with_the_clickhouse_server_unreachable(env, tmp_path, ops_port):
    provider = _uniq("prov")
    async with usage_service(env, tmp_path / "down", clickhouse_url=f"http://127.0.0.1:{free_port()}"):
        await _publish(env.js, _event(provider, "m"))
        await until(lambda: _equals(window_requests(env, provider), 1), "the window counts the event")
        status, body = await readiness(ops_port)
        assert status == 200 and body["status"] == "degraded", body
        assert body["checks"]["clickhouse"]["detail"].startswith("ClickHouse unavailable")
        assert body["checks"]["schema"]["ok"]  # unknown, not behind
        assert await unacknowledged(env) == 1
    # the event stays in the stream for the next usage service that reaches ClickHouse
    info = await env.js.consumer_info(subjects.USAGE_STREAM, subjects.USAGE_CONSUMER)
    assert info.num_pending + info.num_ack_pending + info.num_redelivered >= 1


async def test_clickhouse_lost_after_attaching_closes_the_gate_and_attaches_again(env, tmp_path):
    """What the service does when an insert cannot reach ClickHouse any more (``BatchProcessor`` calls
    ``lost`` on a connection error; called here by hand, as no ClickHouse server can be stopped on this
    machine): the consumer's gate closes, the store lets go, the follower keeps the windows current, and the
    store is attached again once ClickHouse is there."""
    if env.infra.clickhouse_url:
        pytest.skip("holds a chDB directory as another process would")
    state_dir = tmp_path / "lost"
    await migrated(env.infra, state_dir)
    await ensure_consumer(env.js, 20)
    store = ClickHouseStore("", state_dir / "clickhouse")
    projection = ClickHouseProjection(store, env.redis)
    link = ClickHouseLink(store, projection, WindowFollower(env.js, WindowWriter(env.redis), lambda: 20), retry_s=0.2)
    provider = _uniq("prov")
    held = None
    trying = None
    try:
        assert await link.try_once() and link.gate.is_set()
        link.lost(OperationalError("connection refused"))
        assert not link.gate.is_set() and projection.paused == "ClickHouse unavailable: OperationalError: " \
                                                                "connection refused"
        await until(lambda: _equals(_true(not store.is_open), True), "the store let go")
        held = _lock_dir(state_dir / "clickhouse")  # still away
        trying = asyncio.create_task(link.keep_trying())
        await _publish(env.js, _event(provider, "m"))
        await until(lambda: _equals(day_requests_in_redis(env, provider), 1), "the follower counts the event")
        assert not link.gate.is_set()
        os.close(held)
        held = None
        await until(lambda: _equals(_true(link.gate.is_set()), True), "attached again")
        assert link.attached and projection.paused is None and store.is_open
    finally:
        if trying is not None:
            trying.cancel()
            await asyncio.gather(trying, return_exceptions=True)
        if held is not None:
            os.close(held)
        await store.close()


async def day_requests_in_redis(env, provider: str) -> int:
    totals = await WindowReader(env.redis).read([provider_scope(provider)], int(time.time()))
    return totals[provider_scope(provider)]["day"]["req"]


async def _true(value: bool) -> bool:
    return value


async def _not_ready(port: int):
    status, body = await readiness(port)
    return (status, body) if status == 503 and not body["checks"]["schema"]["ok"] else None


async def _ready(port: int):
    status, body = await readiness(port)
    return (status, body) if status == 200 and body["status"] == "ready" else None


async def _equals(value, expected) -> bool:
    return await value == expected
