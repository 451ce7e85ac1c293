"""Usage service against real servers: nats-server (JetStream), Redis, ClickHouse (chDB or a server).

Every test gets the usage stream purged, the durable consumer deleted, the
window keys removed and its own chDB directory; provider and model names are
unique per test, so a shared ClickHouse server (CLICKHOUSE_URL) works too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import nats.errors
import pytest
from nats.js.errors import NotFoundError

from llmgw_common import redis_keys
from llmgw_common import subjects
from llmgw_common.clickhouse_conn import connect_clickhouse
from llmgw_common.config import GatewayConfig, KeysConfig, UsageConfig
from llmgw_common.messages import (
    Attempt,
    KeyUsage,
    KeyUsageQuery,
    UsageCurrent,
    UsageCurrentQuery,
    UsageEvent,
    UsageHistory,
    UsageHistoryQuery,
    UsageStats,
    UsageStatsQuery,
)
from llmgw_common.nats_conn import RemoteError, connect_nats, ensure_usage_stream, request
from llmgw_common.redis_conn import connect_redis
from llmgw_common.ids import id_time_ms
from llmgw_common.windows import SCOPES_KEY, WindowReader, model_scope, month_of, provider_scope, seen_set
from llmgw_usage import domain
from llmgw_usage.consumer import UsageConsumer
from llmgw_usage.ingest import BatchProcessor
from llmgw_usage.main import UsageSettings, serve
from llmgw_usage.projection import ClickHouseProjection
from llmgw_usage.schema import apply_migrations, load_migrations
from llmgw_usage.store import ClickHouseStore, InsertRejected
from llmgw_usage.windows_writer import WindowWriter

pytestmark = pytest.mark.integration

DEADLINE_S = 90.0  # generous: 2 cores shared with other test runs


# ---- fixtures and helpers ---------------------------------------------------

@dataclass
class Env:
    infra: object
    nc: object
    js: object
    redis: object
    state_dir: Path

    def settings(self, state_dir: Path | None = None) -> UsageSettings:
        d = state_dir or self.state_dir
        return UsageSettings(nats_url=self.infra.nats_url, redis_url=self.infra.redis_url,
                             clickhouse_url=self.infra.clickhouse_url, state_dir=d,
                             config_path=d / "absent.yaml")


async def _delete_window_keys(redis) -> None:
    for pattern in (redis_keys.WINDOW_PREFIX + "*", redis_keys.SEEN_PREFIX + "*", redis_keys.SEEN_SET_PREFIX + "*",
                    redis_keys.CLAIM_PREFIX + "*"):
        batch = []
        async for key in redis.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                await redis.delete(*batch)
                batch = []
        if batch:
            await redis.delete(*batch)
    await redis.delete(SCOPES_KEY)


async def _reset_stream(js) -> None:
    await ensure_usage_stream(js, max_age_s=86400, max_bytes=256 * 1024**2)
    await js.purge_stream(subjects.USAGE_STREAM)
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(subjects.USAGE_STREAM, subjects.USAGE_CONSUMER)


async def migrated(infra, state_dir: Path) -> None:
    """What ``llmgw migrate`` does to a state dir's ClickHouse: the service waits for it, never migrates."""
    store = ClickHouseStore(infra.clickhouse_url, state_dir / "clickhouse")
    try:
        await store.open()
    finally:
        await store.close()


@pytest.fixture
async def env(infra, tmp_path):
    await migrated(infra, tmp_path / "state")
    nc = await connect_nats(infra.nats_url, "test-usage")
    js = nc.jetstream()
    redis = connect_redis(infra.redis_url)
    await _reset_stream(js)
    await _delete_window_keys(redis)
    yield Env(infra, nc, js, redis, tmp_path / "state")
    await redis.aclose()
    await nc.close()


def _config(batch_size: int = 50) -> GatewayConfig:
    return GatewayConfig(usage=UsageConfig(batch_size=batch_size, batch_wait_s=0.2))


@contextlib.asynccontextmanager
async def running_usage(env: Env, config: GatewayConfig | None = None, state_dir: Path | None = None):
    stop = asyncio.Event()
    if state_dir is not None:
        await migrated(env.infra, state_dir)
    task = asyncio.create_task(serve(env.settings(state_dir), config or _config(), stop))
    try:
        await _wait_ready(env.nc, task)
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)


async def _wait_ready(nc, task: asyncio.Task) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        if task.done():
            task.result()  # raises the start-up error
            raise AssertionError("usage service ended during start-up")
        try:
            await request(nc, subjects.USAGE_QUERY_CURRENT, UsageCurrentQuery(), UsageCurrent, timeout=2)
            return
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _publish(js, ev: UsageEvent, msg_id: str | None = None) -> None:
    subject = subjects.usage_event_subject(ev.provider or "none")
    await js.publish(subject, ev.encode(), headers={"Nats-Msg-Id": msg_id or ev.id})


async def _wait_caught_up(js) -> None:
    """Until the durable consumer has every stream message delivered and acknowledged (or terminated)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        stream = await js.stream_info(subjects.USAGE_STREAM)
        try:
            info = await js.consumer_info(subjects.USAGE_STREAM, subjects.USAGE_CONSUMER)
            if (info.num_pending == 0 and info.num_ack_pending == 0
                    and info.ack_floor.stream_seq >= stream.state.last_seq):
                return
        except NotFoundError:
            pass
        assert time.monotonic() < deadline, "usage consumer did not catch up"
        await asyncio.sleep(0.1)


async def _current(nc) -> UsageCurrent:
    return await request(nc, subjects.USAGE_QUERY_CURRENT, UsageCurrentQuery(), UsageCurrent, timeout=10)


async def _history(nc, **kw) -> UsageHistory:
    return await request(nc, subjects.USAGE_QUERY_HISTORY, UsageHistoryQuery(**kw), UsageHistory, timeout=30)


def _scope(cur: UsageCurrent, provider: str, model: str | None = None):
    for s in cur.scopes:
        if s.provider == provider and s.model == model:
            return s
    return None


def _uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _event(provider: str | None, model: str, **kw) -> UsageEvent:
    kw.setdefault("status", 200)
    return UsageEvent(request_id=_uniq("req"), provider=provider, model=model, upstream_model=model, **kw)


@contextlib.contextmanager
def _clickhouse(env: Env, state_dir: Path | None = None):
    """A direct client on the service's ClickHouse (only while the service is stopped, for chDB)."""
    client = connect_clickhouse(env.infra.clickhouse_url, (state_dir or env.state_dir) / "clickhouse")
    try:
        yield client
    finally:
        client.close()


# ---- schema -----------------------------------------------------------------

def test_migrations_applied_once_and_recorded(infra, tmp_path):
    migs = load_migrations()
    with contextlib.closing(connect_clickhouse(infra.clickhouse_url, tmp_path / "ch")) as client:
        first = apply_migrations(client)
        if not infra.clickhouse_url:  # a fresh chDB directory: everything is new
            assert first == [m.version for m in migs]
        assert apply_migrations(client) == []
        rows = client.query("SELECT version, name, count() AS n, min(applied_at) FROM schema_migrations"
                            " GROUP BY version, name ORDER BY version").result_rows
        assert [(r[0], r[1], r[2]) for r in rows] == [(m.version, m.name, 1) for m in migs]
        assert all(r[3] is not None for r in rows)
        engine = client.query("SELECT engine, partition_key, sorting_key FROM system.tables"
                              " WHERE database = currentDatabase() AND name = 'usage_events'").result_rows
        assert engine == [("ReplacingMergeTree", "toYYYYMM(ts)", "toDate(ts), id")]


def test_cache_write_and_reasoning_columns_added_to_a_database_in_use(infra, tmp_path):
    """0007 on a database that already holds events and rollups: the old rows read 0 for the new counters,
    the views (changed in place, not dropped) keep filling usage_minute and request_log, now with them."""
    provider = _uniq("mig")
    old = [_event(provider, "m", key_id="k", tokens_in=100, tokens_out=10, tokens_cached=5, cost_usd=Decimal("0.1"))
           for _ in range(3)]
    new = [_event(provider, "m", key_id="k", tokens_in=100, tokens_out=10, tokens_cached=5, tokens_cache_write=40 + i,
                  tokens_reasoning=7, cost_usd=Decimal("0.1")) for i in range(2)]
    minute = min(ev.ts for ev in old + new).replace(second=0, microsecond=0)
    for ev in old + new:
        ev.ts = minute + timedelta(seconds=1)

    def insert(client, events):
        body = b"\n".join(domain.event_line(ev) for ev in events).decode()
        client.command(f"INSERT INTO usage_events FORMAT {domain.INSERT_FORMAT} {body}",
                       settings=domain.INSERT_FORMAT_SETTINGS)

    with contextlib.closing(connect_clickhouse(infra.clickhouse_url, tmp_path / "ch")) as ch:
        migs = load_migrations()
        apply_migrations(ch, [m for m in migs if m.version < 7])
        if [v for (v,) in ch.query("SELECT version FROM schema_migrations FINAL").result_rows if v >= 7]:
            pytest.skip("a shared ClickHouse server already past 0007")
        # an event as an older usage service stored it: no such columns yet
        body = "\n".join(json.dumps({k: v for k, v in json.loads(domain.event_line(ev)).items()
                                      if k not in ("tokens_cache_write", "tokens_reasoning")}) for ev in old)
        ch.command(f"INSERT INTO usage_events FORMAT {domain.INSERT_FORMAT} {body}",
                   settings=domain.INSERT_FORMAT_SETTINGS)
        assert apply_migrations(ch, [m for m in migs if m.version <= 7]) == [7]
        insert(ch, new)
        p = {"p": provider}
        assert ch.query("SELECT sum(requests), sum(tokens_cached), sum(tokens_cache_write), sum(tokens_reasoning)"
                        " FROM usage_minute WHERE provider = {p:String}", parameters=p).result_rows == [(5, 25, 81, 14)]
        log = ch.query("SELECT id, tokens_cache_write, tokens_reasoning FROM request_log FINAL"
                       " WHERE provider = {p:String}", parameters=p).result_rows
        assert sorted(log) == sorted([(ev.id, 0, 0) for ev in old] + [(ev.id, 40 + i, 7) for i, ev in enumerate(new)])
        events = ch.query("SELECT sum(tokens_cache_write), sum(tokens_reasoning) FROM usage_events FINAL"
                          " WHERE provider = {p:String}", parameters=p).result_rows
        assert events == [(81, 14)]
        # applying them again changes nothing
        assert apply_migrations(ch, [m for m in migs if m.version <= 7]) == []
        ch.command("OPTIMIZE TABLE usage_minute FINAL")
        assert ch.query("SELECT count(), sum(requests), sum(tokens_cache_write) FROM usage_minute"
                        " WHERE provider = {p:String}", parameters=p).result_rows == [(1, 5, 81)]


def test_an_events_requests_count_in_the_rollups_after_0008_on_a_database_in_use(infra, tmp_path):
    """0008 on a database that already holds events: old rows stand for one request each; an event the
    edge aggregated from refusals counts its ``requests`` in usage_minute (requests and errors), the request
    log and the raw history."""
    key = _uniq("agg")
    old = [_event(None, "m", key_id=key, status=400, error="bad") for _ in range(3)]
    summed = _event(None, "m", key_id=key, status=400, error="bad (and 41 more like it in this second)",
                    requests=42)
    minute = min(ev.ts for ev in old + [summed]).replace(second=0, microsecond=0)
    for ev in old + [summed]:
        ev.ts = minute + timedelta(seconds=1)
    with contextlib.closing(connect_clickhouse(infra.clickhouse_url, tmp_path / "ch")) as ch:
        migs = load_migrations()
        apply_migrations(ch, [m for m in migs if m.version < 8])
        if [v for (v,) in ch.query("SELECT version FROM schema_migrations FINAL").result_rows if v >= 8]:
            pytest.skip("a shared ClickHouse server already past 0008")
        body = "\n".join(json.dumps({k: v for k, v in json.loads(domain.event_line(ev)).items() if k != "requests"})
                         for ev in old)
        ch.command(f"INSERT INTO usage_events FORMAT {domain.INSERT_FORMAT} {body}",
                   settings=domain.INSERT_FORMAT_SETTINGS)
        assert apply_migrations(ch, [m for m in migs if m.version <= 8]) == [8]
        apply_migrations(ch, migs)  # and the later ones, so the schema is the one the next event is written for
        ch.command(f"INSERT INTO usage_events FORMAT {domain.INSERT_FORMAT} {domain.event_line(summed).decode()}",
                   settings=domain.INSERT_FORMAT_SETTINGS)
        p = {"k": key}
        assert ch.query("SELECT sum(requests), sum(errors), sum(free_requests) FROM usage_minute"
                        " WHERE key_id = {k:String}", parameters=p).result_rows == [(45, 45, 0)]
        log = ch.query("SELECT id, requests FROM request_log FINAL WHERE key_id = {k:String}", parameters=p)
        assert sorted(log.result_rows) == sorted([(ev.id, 1) for ev in old] + [(summed.id, 42)])
        # what the raw history and the dashboards count on the events themselves
        assert ch.query("SELECT count(), sum(requests), sumIf(requests, status >= 400) FROM usage_events FINAL"
                        " WHERE key_id = {k:String}", parameters=p).result_rows == [(4, 45, 45)]


def test_cache_savings_count_in_the_rollup_after_0009_on_a_database_in_use(infra, tmp_path):
    """0009 on a database that already holds events: their savings read 0 (the prices of their time are not
    known); a new event's cache_saved_usd is summed by usage_minute."""
    provider = _uniq("saved")
    old = [_event(provider, "m", tokens_in=1000, tokens_cached=500) for _ in range(2)]
    new = _event(provider, "m", tokens_in=1000, tokens_cached=500, cache_saved_usd=Decimal("0.00135"))
    with contextlib.closing(connect_clickhouse(infra.clickhouse_url, tmp_path / "ch")) as ch:
        migs = load_migrations()
        apply_migrations(ch, [m for m in migs if m.version < 9])
        if [v for (v,) in ch.query("SELECT version FROM schema_migrations FINAL").result_rows if v >= 9]:
            pytest.skip("a shared ClickHouse server already past 0009")
        body = "\n".join(json.dumps({k: v for k, v in json.loads(domain.event_line(ev)).items()
                                     if k != "cache_saved_usd"}) for ev in old)
        ch.command(f"INSERT INTO usage_events FORMAT {domain.INSERT_FORMAT} {body}",
                   settings=domain.INSERT_FORMAT_SETTINGS)
        assert apply_migrations(ch, migs) == [9]
        ch.command(f"INSERT INTO usage_events FORMAT {domain.INSERT_FORMAT} {domain.event_line(new).decode()}",
                   settings=domain.INSERT_FORMAT_SETTINGS)
        p = {"p": provider}
        assert ch.query("SELECT sum(requests), sum(tokens_cached), toString(sum(cache_saved_usd)) FROM usage_minute"
                        " WHERE provider = {p:String}", parameters=p).result_rows == [(3, 1500, "0.00135")]
        assert sorted(ch.query("SELECT toString(cache_saved_usd) FROM usage_events FINAL WHERE provider = {p:String}",
                               parameters=p).result_rows) == [("0",), ("0",), ("0.00135",)]


def test_insert_repeated_after_a_restart_right_after_the_migrations_counts_once(infra, tmp_path):
    """The process that applied the migrations inserts, is stopped, and the next one repeats that insert from
    the journal with the same token: the views write nothing again. (A view changed with ALTER TABLE ...
    MODIFY QUERY fails this on chDB: it deduplicates differently after the restart; 0007 re-creates them.)"""
    from llmgw_usage.store import _insert_settings, insert_body

    provider = _uniq("again")
    events = [_event(provider, f"m{i % 2}", key_id=f"k{i % 3}", tokens_in=1, tokens_cache_write=2, tokens_reasoning=3)
              for i in range(60)]
    body = insert_body("feed01", (domain.event_line(ev) for ev in events))
    for _ in range(2):  # first process, then its restart
        with contextlib.closing(connect_clickhouse(infra.clickhouse_url, tmp_path / "ch")) as ch:
            apply_migrations(ch)
            ch.raw_insert("usage_events", None, body, settings=_insert_settings("feed01"), fmt=domain.INSERT_FORMAT)
            p = {"p": provider}
            assert ch.query("SELECT sum(requests), sum(tokens_cache_write), sum(tokens_reasoning) FROM usage_minute"
                            " WHERE provider = {p:String}", parameters=p).result_rows == [(60, 120, 180)]
            assert ch.query("SELECT count(), sum(tokens_cache_write) FROM request_log WHERE provider = {p:String}",
                            parameters=p).result_rows == [(60, 120)]


async def test_store_reopen_applies_nothing_new(infra, tmp_path):
    store = ClickHouseStore(infra.clickhouse_url, tmp_path / "ch")
    await store.open()
    await store.close()
    again = ClickHouseStore(infra.clickhouse_url, tmp_path / "ch")
    assert await again.open() == []
    rows = await again.query("SELECT count() FROM schema_migrations FINAL")
    assert rows == [(len(load_migrations()),)]
    await again.close()


# ---- the projection, without the consumer -----------------------------------

class RecordingMsg:
    """A JetStream message as the processor sees it; records what it was answered."""

    def __init__(self, data: bytes, subject: str = "llmgw.usage.event.test"):
        self.data, self.subject = data, subject
        self.acks = self.naks = self.terms = 0

    async def ack(self):
        self.acks += 1

    async def nak(self, delay=None):
        self.naks += 1

    async def term(self):
        self.terms += 1


async def test_batch_applied_twice_counts_once(env, tmp_path):
    provider, model = _uniq("prov"), _uniq("model")
    events = [_event(provider, model, tokens_in=10, tokens_out=2, cost_usd=Decimal("0.000001")) for _ in range(3)]
    store = ClickHouseStore(env.infra.clickhouse_url, tmp_path / "ch")
    await store.open()
    try:
        processor = BatchProcessor(ClickHouseProjection(store, env.redis), WindowWriter(env.redis))
        first = [RecordingMsg(ev.encode()) for ev in events]
        r1 = await processor.process(first)
        assert (r1.stored, r1.applied, r1.terminated, r1.failed) == (3, 3, 0, False)
        second = [RecordingMsg(ev.encode()) for ev in events] + [RecordingMsg(events[0].encode())]
        r2 = await processor.process(second)
        assert (r2.stored, r2.already, r2.applied, r2.failed) == (0, 3, 0, False)
        assert all(m.acks == 1 and m.naks == 0 and m.terms == 0 for m in first + second)

        final = await store.query("SELECT count(), sum(tokens_in), sum(cost_usd) FROM usage_events FINAL"
                                  " WHERE provider = {p:String}", {"p": provider})
        assert final == [(3, 30, Decimal("0.000003"))]
        raw = await store.query("SELECT count() FROM usage_events WHERE provider = {p:String}", {"p": provider})
        assert raw == [(3,)]  # never inserted twice: the rollups (materialized views) see every event once

        totals = await WindowReader(env.redis).read([provider_scope(provider), model_scope(provider, model)],
                                                    int(time.time()))
        for scope in (provider_scope(provider), model_scope(provider, model)):
            assert totals[scope]["hour"] == {"req": 3, "tin": 30, "tout": 6, "cost": 3000}
            assert totals[scope]["day"] == {"req": 3, "tin": 30, "tout": 6, "cost": 3000}
        assert {provider_scope(provider), model_scope(provider, model)} <= await env.redis.smembers(SCOPES_KEY)
        # the ids are ULIDs: remembered in the set of their minute, a day and an hour past it
        seen, _expire_at = seen_set(id_time_ms(events[0].id), int(time.time()))
        assert await env.redis.sismember(seen, events[0].id)
        ttl = await env.redis.ttl(seen)
        assert 86400 + 3600 - 60 < ttl <= 60 + 86400 + 3600
    finally:
        await store.close()


async def test_existing_ids_finds_ids_of_any_characters(env, tmp_path):
    odd = [_uniq(p) for p in ("tab\t", "line\n", "back\\slash", "quote'\"", "ünï€ode", "nul\x00")]
    rows = [domain.event_row(_event("prov", "model", id=i)) for i in odd]
    store = ClickHouseStore(env.infra.clickhouse_url, tmp_path / "ch")
    await store.open()
    try:
        assert await store.existing_ids(rows) == set()
        assert await store.insert_new(rows[:4]) == 4
        assert await store.existing_ids(rows) == set(odd[:4])
        assert await store.insert_new(rows) == 2  # only the two it did not hold
    finally:
        await store.close()


async def test_odd_messages_are_stored_normalized_and_invalid_ones_terminated(env, tmp_path):
    """Messages go to ClickHouse as they were sent when the strict decode takes them. One it refuses goes by
    pydantic's rules: "stream": "yes" is read as true and stored normalized; "latency_ms": "abc" is no valid
    event and is terminated, as is an event without an id. Only the events stored reach the windows."""
    provider = _uniq("prov")
    good, yes, bad = (_event(provider, "m", tokens_in=n, cost_usd=Decimal("0.000001")) for n in (1, 2, 4))
    odd = json.loads(yes.encode())
    odd["stream"] = "yes"
    broken = json.loads(bad.encode())
    broken["latency_ms"] = "abc"
    anonymous = json.loads(_event(provider, "m", tokens_in=8).encode())
    del anonymous["id"]  # UsageEvent's default would give it a new id at every redelivery
    msgs = [RecordingMsg(good.encode()), RecordingMsg(json.dumps(odd).encode()),
            RecordingMsg(json.dumps(broken).encode()), RecordingMsg(json.dumps(anonymous).encode())]
    store = ClickHouseStore(env.infra.clickhouse_url, tmp_path / "ch")
    await store.open()
    try:
        result = await BatchProcessor(ClickHouseProjection(store, env.redis), WindowWriter(env.redis)).process(msgs)
        assert (result.failed, result.stored, result.terminated, result.applied) == (False, 2, 2, 2)
        assert [(m.acks, m.terms) for m in msgs] == [(1, 0), (1, 0), (0, 1), (0, 1)]
        rows = await store.query("SELECT id, stream, tokens_in FROM usage_events WHERE provider = {p:String} "
                                 "ORDER BY tokens_in", {"p": provider})
        assert rows == [(good.id, False, 1), (yes.id, True, 2)]
        assert not list(store.journal_dir.glob("*"))  # the refused insert left nothing to recover
        totals = await WindowReader(env.redis).read([provider_scope(provider)], int(time.time()))
        assert (totals[provider_scope(provider)]["day"]["req"], totals[provider_scope(provider)]["day"]["tin"]) == (2, 3)
    finally:
        await store.close()


class RefusingStore:
    """The real store, but ClickHouse "refuses" every insert holding one of ``poison`` (as it would a value
    it cannot parse: nothing stored), or any insert of events still as they were sent (``refuse_raw``)."""

    def __init__(self, store, poison: set[str], refuse_raw: bool):
        self._store, self._poison, self._refuse_raw = store, poison, refuse_raw
        self.inserts: list[int] = []

    def __getattr__(self, name):
        return getattr(self._store, name)

    async def insert_new(self, rows):
        self.inserts.append(len(rows))
        if any(row.id in self._poison for row in rows) or (
                self._refuse_raw and not all(isinstance(row.event, UsageEvent) for row in rows)):
            raise InsertRejected("Code: 27. DB::Exception: Cannot parse input")
        return await self._store.insert_new(rows)


async def test_an_event_clickhouse_never_takes_is_isolated_and_terminated(env, tmp_path):
    """ClickHouse refuses the batch as sent, then even normalized: it is halved until the one event it
    refuses is alone; that one is terminated (it would block the stream forever), the others are stored,
    counted in the windows and acked."""
    provider = _uniq("prov")
    events = [_event(provider, "m", tokens_in=n + 1) for n in range(8)]
    msgs = [RecordingMsg(ev.encode()) for ev in events]
    real = ClickHouseStore(env.infra.clickhouse_url, tmp_path / "ch")
    await real.open()
    store = RefusingStore(real, poison={events[5].id}, refuse_raw=True)
    try:
        result = await BatchProcessor(ClickHouseProjection(store, env.redis, exclusive=True),
                                      WindowWriter(env.redis)).process(msgs)
        assert (result.failed, result.stored, result.terminated, result.applied) == (False, 7, 1, 7)
        assert [(m.acks, m.terms) for m in msgs] == [(0, 1) if i == 5 else (1, 0) for i in range(8)]
        # as sent, normalized, then halves: 0-3 stored, 4-7 refused, 4-5 refused, 4 stored, 5 refused, 6-7 stored
        assert store.inserts == [8, 8, 4, 4, 2, 1, 1, 2]
        rows = await real.query("SELECT tokens_in FROM usage_events WHERE provider = {p:String} ORDER BY tokens_in",
                                {"p": provider})
        assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 7, 8]
        totals = await WindowReader(env.redis).read([provider_scope(provider)], int(time.time()))
        assert totals[provider_scope(provider)]["day"]["tin"] == 30
    finally:
        await real.close()


async def test_batch_not_acked_when_clickhouse_fails(env, tmp_path):
    store = ClickHouseStore(env.infra.clickhouse_url, tmp_path / "ch")
    await store.open()
    await store.close()  # ClickHouse gone: the batch must be redelivered, not acknowledged
    provider = _uniq("prov")
    good = _event(provider, "m", tokens_in=5)
    ancient = _event(provider, "m", ts=datetime(1, 1, 1, tzinfo=timezone.utc))  # could never be inserted
    msgs = [RecordingMsg(good.encode()), RecordingMsg(b"\xff garbage"), RecordingMsg(ancient.encode())]
    result = await BatchProcessor(ClickHouseProjection(store, env.redis), WindowWriter(env.redis)).process(msgs)
    assert result.failed and result.terminated == 2
    assert (msgs[0].acks, msgs[0].naks) == (0, 1)
    assert all((m.terms, m.acks, m.naks) == (1, 0, 0) for m in msgs[1:])
    # the live windows went ahead (the router keeps seeing real usage while ClickHouse is down) ...
    totals = await WindowReader(env.redis).read([provider_scope(provider)], int(time.time()))
    assert totals[provider_scope(provider)]["day"]["req"] == 1
    assert not await env.redis.keys(redis_keys.CLAIM_PREFIX + "*")  # claims released after the failed insert

    # ... and the redelivery, once ClickHouse is back, stores the event without counting it again in Redis
    store = ClickHouseStore(env.infra.clickhouse_url, tmp_path / "ch")
    await store.open()
    try:
        again = RecordingMsg(good.encode())
        result = await BatchProcessor(ClickHouseProjection(store, env.redis), WindowWriter(env.redis)).process([again])
        assert (result.failed, result.stored, result.applied, again.acks) == (False, 1, 0, 1)
        totals = await WindowReader(env.redis).read([provider_scope(provider)], int(time.time()))
        assert totals[provider_scope(provider)]["day"]["req"] == 1
        assert await store.query("SELECT count() FROM usage_events WHERE provider = {p:String}",
                                 {"p": provider}) == [(1,)]
    finally:
        await store.close()


# ---- the running service ----------------------------------------------------

async def test_events_reach_clickhouse_and_windows(env):
    p1, p2, model = _uniq("prov"), _uniq("prov"), _uniq("model")
    events = []
    for i in range(12):
        events.append(_event(p1, model, tokens_in=100 + i, tokens_out=10, cost_usd=Decimal("0.000250001"),
                             key_id="key-a", ttft_ms=12.5, tokens_cached=20, tokens_cache_write=30 + i,
                             tokens_reasoning=4,
                             attempts=[Attempt(provider=p1, upstream_model=model, status=200, latency_ms=5)]))
    for i in range(5):
        events.append(_event(p2, model, tokens_in=7, tokens_out=3, cost_usd=Decimal("0"), status=200 if i else 500,
                             error=None if i else "upstream error"))
    nobody = _event(None, model, status=503, error="no provider available")
    events.append(nobody)

    async with running_usage(env):
        published_at = time.monotonic()
        for ev in events:
            await _publish(env.js, ev)
        await _wait_caught_up(env.js)

        hist = await _history(env.nc, model=model, bucket_s=86400)
        by_provider = {}
        for row in hist.rows:
            agg = by_provider.setdefault(row.provider, [0, 0, 0, 0, Decimal(0)])
            for i, v in enumerate((row.requests, row.errors, row.tokens_in, row.tokens_out, row.cost_usd)):
                agg[i] += v
        assert by_provider[p1] == [12, 0, sum(100 + i for i in range(12)), 120, Decimal("0.003000012")]
        assert by_provider[p2] == [5, 1, 35, 15, Decimal("0")]
        assert by_provider[""] == [1, 1, 0, 0, Decimal("0")]  # stored although nobody served it
        for rows in (hist.rows, hist.totals):  # per bucket, and per group over the whole range
            parts = {}
            for row in rows:
                agg = parts.setdefault(row.provider, [0, 0, 0])
                for i, v in enumerate((row.tokens_cached, row.tokens_cache_write, row.tokens_reasoning)):
                    agg[i] += v
            assert parts[p1] == [240, sum(30 + i for i in range(12)), 48] and parts[p2] == [0, 0, 0]

        cur = await _current(env.nc)
        elapsed = time.monotonic() - published_at
        for scope in (_scope(cur, p1), _scope(cur, p1, model)):
            assert scope is not None
            for name in ("hour", "day"):
                w = scope.windows[name]
                assert (w.requests, w.tokens_in, w.tokens_out) == (12, sum(100 + i for i in range(12)), 120)
                assert w.cost_usd == Decimal("0.003000012")
            if elapsed < 50:  # the minute window may legitimately have moved on on a very slow machine
                assert scope.windows["minute"].requests == 12
        p2_scope = _scope(cur, p2)
        assert p2_scope.scope == "provider" and p2_scope.windows["day"].requests == 5
        assert _scope(cur, p2, model).scope == "model"
        assert all(s.provider for s in cur.scopes)  # the unserved event counts in no scope

    with _clickhouse(env) as ch:
        rows = ch.query("SELECT provider, key_id, attempts_count, attempts, ttft_ms, cost_usd, ts, tokens_cached,"
                        " tokens_cache_write, tokens_reasoning FROM usage_events"
                        " FINAL WHERE id = {id:String}", parameters={"id": events[1].id}).result_rows
        assert len(rows) == 1
        provider, key_id, n_attempts, attempts, ttft, cost, ts, cached, cache_write, reasoning = rows[0]
        assert (provider, key_id, n_attempts, ttft, cost) == (p1, "key-a", 1, 12.5, Decimal("0.000250001"))
        assert (cached, cache_write, reasoning) == (20, 31, 4)
        assert f'"provider":"{p1}"' in attempts
        assert abs(ts.replace(tzinfo=timezone.utc) - events[1].ts) < timedelta(milliseconds=1)
        err = ch.query("SELECT provider, status, error FROM usage_events FINAL WHERE id = {id:String}",
                       parameters={"id": nobody.id}).result_rows
        assert err == [("", 503, "no provider available")]


async def test_redelivered_and_replayed_events_count_once(env):
    provider, model = _uniq("prov"), _uniq("model")
    ev = _event(provider, model, tokens_in=40, tokens_out=4, cost_usd=Decimal("0.5"))
    other = _event(provider, model, tokens_in=1, tokens_out=1, cost_usd=Decimal("0.25"))

    async def check():
        hist = await _history(env.nc, provider=provider, bucket_s=86400)
        assert sum(r.requests for r in hist.rows) == 2
        assert sum(r.tokens_in for r in hist.rows) == 41
        assert sum(r.cost_usd for r in hist.rows) == Decimal("0.75")
        day = _scope(await _current(env.nc), provider).windows["day"]
        assert (day.requests, day.tokens_in, day.cost_usd) == (2, 41, Decimal("0.75"))

    async with running_usage(env):
        await _publish(env.js, ev)
        await _publish(env.js, other)
        await _wait_caught_up(env.js)
        # the same event again under another Nats-Msg-Id: JetStream stores it a second time
        await _publish(env.js, ev, msg_id=_uniq("retry"))
        await _wait_caught_up(env.js)
        stream = await env.js.stream_info(subjects.USAGE_STREAM)
        assert stream.state.messages == 3
        await check()

    # replay: a new consumer reads the whole stream again into the same projections
    await env.js.delete_consumer(subjects.USAGE_STREAM, subjects.USAGE_CONSUMER)
    async with running_usage(env):
        await _wait_caught_up(env.js)
        await check()

    with _clickhouse(env) as ch:
        final = ch.query("SELECT count() FROM usage_events FINAL WHERE provider = {p:String}",
                         parameters={"p": provider}).result_rows
        raw = ch.query("SELECT count() FROM usage_events WHERE provider = {p:String}",
                       parameters={"p": provider}).result_rows
        assert final == [(2,)]
        assert raw[0][0] >= 2


async def test_malformed_messages_are_terminated_and_do_not_block(env):
    provider, model = _uniq("prov"), _uniq("model")
    subject = subjects.usage_event_subject(provider)
    good = [_event(provider, model, tokens_in=1) for _ in range(4)]
    async with running_usage(env):
        await _publish(env.js, good[0])
        await env.js.publish(subject, b"{not json at all", headers={"Nats-Msg-Id": _uniq("bad")})
        await env.js.publish(subject, b'{"model": "x", "status": "not-a-number"}', headers={"Nats-Msg-Id": _uniq("bad")})
        await env.js.publish(subject, b"", headers={"Nats-Msg-Id": _uniq("bad")})
        for ev in good[1:]:
            await _publish(env.js, ev)
        await _wait_caught_up(env.js)
        hist = await _history(env.nc, provider=provider, bucket_s=86400)
        assert sum(r.requests for r in hist.rows) == 4
        info = await env.js.consumer_info(subjects.USAGE_STREAM, subjects.USAGE_CONSUMER)
        stream = await env.js.stream_info(subjects.USAGE_STREAM)
        assert stream.state.messages == 7
        assert info.num_ack_pending == 0 and info.num_redelivered == 0
        assert info.delivered.stream_seq == info.ack_floor.stream_seq == stream.state.last_seq


async def test_history_buckets_and_filters(env):
    pa, pb, m1, m2 = _uniq("prov"), _uniq("prov"), _uniq("model"), _uniq("model")
    now = int(time.time())
    base = now - now % 3600 - 3 * 3600  # an hour boundary, 3 to 4 hours ago

    def at(offset_s: int, **kw) -> UsageEvent:
        return _event(kw.pop("provider", pa), kw.pop("model", m1),
                      ts=datetime.fromtimestamp(base + offset_s, tz=timezone.utc), **kw)

    events = [
        at(10, tokens_in=1, tokens_out=1, cost_usd=Decimal("0.1")),
        at(50, tokens_in=2, tokens_out=2, cost_usd=Decimal("0.2"), status=500),
        at(70, tokens_in=3, tokens_out=3, cost_usd=Decimal("0.3")),
        at(3600 + 5, tokens_in=4, tokens_out=4, cost_usd=Decimal("0.4"), status=429),
        at(15, model=m2, tokens_in=5, tokens_out=5, cost_usd=Decimal("0.5")),
        at(20, provider=pb, model=m1, tokens_in=6, tokens_out=6, cost_usd=Decimal("0.6")),
    ]
    async with running_usage(env):
        for ev in events:
            await _publish(env.js, ev)
        await _wait_caught_up(env.js)

        def ts(offset):
            return datetime.fromtimestamp(base + offset, tz=timezone.utc)

        minute = await _history(env.nc, provider=pa, model=m1, bucket_s=60)
        assert [(r.bucket, r.requests, r.errors, r.tokens_in, r.cost_usd) for r in minute.rows] == [
            (ts(0), 2, 1, 3, Decimal("0.3")),
            (ts(60), 1, 0, 3, Decimal("0.3")),
            (ts(3600), 1, 1, 4, Decimal("0.4")),
        ]
        hourly = await _history(env.nc, provider=pa, bucket_s=3600)
        assert [(r.bucket, r.model, r.requests, r.tokens_out) for r in hourly.rows] == sorted([
            (ts(0), m1, 3, 6), (ts(0), m2, 1, 5), (ts(3600), m1, 1, 4)])
        windowed = await _history(env.nc, provider=pa, model=m1, bucket_s=60, since=ts(60), until=ts(3600))
        assert [(r.bucket, r.requests) for r in windowed.rows] == [(ts(60), 1)]
        by_model = await _history(env.nc, model=m1, bucket_s=86400, since=ts(0), until=ts(7200))
        assert {(r.provider, r.requests) for r in by_model.rows} == {(pa, 4), (pb, 1)}
        limited = await _history(env.nc, provider=pa, model=m1, bucket_s=60, limit=2)
        assert len(limited.rows) == 2

        # three hours old: only the day window still holds them
        scope = _scope(await _current(env.nc), pa)
        assert scope.windows["minute"].requests == 0 and scope.windows["hour"].requests == 0
        assert scope.windows["day"].requests == 5 and scope.windows["day"].cost_usd == Decimal("1.5")


async def _stats(nc, **kw) -> UsageStats:
    return await request(nc, subjects.USAGE_QUERY_STATS, UsageStatsQuery(**kw), UsageStats, timeout=30)


async def test_errors_and_latency_per_provider_and_model_beyond_the_live_windows(env):
    """The overview's 24 h and 7 d: requests and errors from the rollup, 429s and p50/p95 latency and time
    to first token (successful requests only) from the request log, per provider and per model."""
    pa, pb, m1, m2 = _uniq("prov"), _uniq("prov"), _uniq("model"), _uniq("model")
    now = datetime.now(timezone.utc)
    days_ago = now - timedelta(days=3)  # beyond the live day window, within 7 d

    def ev(provider, model, latency, ttft=None, status=200, ts=now - timedelta(minutes=5)):
        return _event(provider, model, ts=ts, latency_ms=latency, ttft_ms=ttft, status=status)

    events = [ev(pa, m1, latency, ttft=latency / 10) for latency in range(100, 1100, 100)]  # 10 ok, 100..1000 ms
    events += [ev(pa, m1, 5, status=429), ev(pa, m1, 7, status=429), ev(pa, m1, 9000, status=502)]
    # a second's refusals summed into one event (the edge's flood bound): three 429s, not one
    events += [_event(pa, m1, ts=now - timedelta(minutes=5), latency_ms=0, status=429, requests=3)]
    events += [ev(pa, m2, 300, ts=days_ago), ev(pa, m2, 50, status=500, ts=days_ago)]
    events += [ev(pb, m1, 40, ttft=4)]
    async with running_usage(env):
        for e in events:
            await _publish(env.js, e)
        await _wait_caught_up(env.js)

        week = await _stats(env.nc, since=now - timedelta(days=7), until=now + timedelta(minutes=1))
        rows = {(r.provider, r.model): r for r in week.rows if r.provider in (pa, pb)}
        a1 = rows[(pa, m1)]
        assert (a1.requests, a1.errors, a1.rate_limited) == (16, 6, 5)
        assert a1.error_rate == pytest.approx(6 / 16, abs=1e-4)
        # over the ten successful ones (100..1000 ms), the failures' 5, 7 and 9000 ms left out
        assert a1.latency_p50_ms == pytest.approx(550, abs=1) and a1.latency_p95_ms == pytest.approx(955, abs=1)
        assert a1.ttft_p50_ms == pytest.approx(55, abs=0.2) and a1.ttft_p95_ms == pytest.approx(95.5, abs=0.2)
        a2 = rows[(pa, m2)]
        assert (a2.requests, a2.errors, a2.rate_limited, a2.latency_p50_ms, a2.ttft_p50_ms) == (2, 1, 0, 300, None)
        whole = rows[(pa, None)]
        assert (whole.requests, whole.errors, whole.rate_limited) == (18, 7, 5)
        assert whole.latency_p50_ms == pytest.approx(500, abs=1)  # the median of the 11 successful ones of pa
        # each provider (busiest first) followed by its models (busiest first)
        order = [(r.provider, r.model) for r in week.rows if r.provider in (pa, pb)]
        assert order == [(pa, None), (pa, m1), (pa, m2), (pb, None), (pb, m1)]
        assert rows[(pb, None)].ttft_p95_ms == 4

        day = await _stats(env.nc, since=now - timedelta(hours=24))
        assert {(r.provider, r.model) for r in day.rows if r.provider == pa} == {(pa, None), (pa, m1)}
        assert day.since.second == 0 and day.until >= now
        limited = await _stats(env.nc, since=now - timedelta(days=7), limit=1)
        assert len(limited.rows) == 1 and limited.truncated
        with pytest.raises(RemoteError) as err:
            await _stats(env.nc, since=now, until=now - timedelta(hours=1))
        assert err.value.status == 400 and "until must be after since" in str(err.value)


async def test_cache_hit_rate_and_savings_per_provider_and_model(env):
    """Prompt caching on the overview: the share of prompt tokens read from a cache and what those reads
    saved (UsageEvent.cache_saved_usd, summed by the rollup), per provider and per model."""
    pa, m1, m2 = _uniq("prov"), _uniq("model"), _uniq("model")
    now = datetime.now(timezone.utc) - timedelta(minutes=2)
    events = [_event(pa, m1, ts=now, tokens_in=1000, tokens_cached=900, cache_saved_usd=Decimal("0.00243")),
              _event(pa, m1, ts=now, tokens_in=1000, tokens_cached=0),
              _event(pa, m2, ts=now, tokens_in=500, tokens_cached=100, cache_saved_usd=Decimal("0.0001"))]
    async with running_usage(env):
        for e in events:
            await _publish(env.js, e)
        await _wait_caught_up(env.js)
        stats = await _stats(env.nc, since=now - timedelta(hours=1), until=now + timedelta(minutes=5))
    rows = {(r.provider, r.model): r for r in stats.rows if r.provider == pa}
    assert (rows[(pa, m1)].tokens_cached, rows[(pa, m1)].cache_hit_rate) == (900, 0.45)
    assert rows[(pa, m1)].cache_saved_usd == Decimal("0.00243")
    assert (rows[(pa, m2)].cache_hit_rate, rows[(pa, m2)].cache_saved_usd) == (0.2, Decimal("0.0001"))
    whole = rows[(pa, None)]
    assert (whole.tokens_in, whole.tokens_cached, whole.cache_saved_usd) == (2500, 1000, Decimal("0.00253"))
    assert whole.cache_hit_rate == 0.4


async def test_a_keys_month_day_by_day_in_its_budget_time_zone(env):
    """Spend per day of the calendar month in keys.budget_timezone (a UTC evening is the next day in
    Kolkata), every day of the month listed, nothing from before the month."""
    tz = "Asia/Kolkata"
    key_id = uuid.uuid4().hex[:12]
    now = time.time()
    _label, start, end = month_of(now, tz)
    zone = ZoneInfo(tz)

    def at(ts_s: float, cost: str) -> UsageEvent:
        return _event("p", "m", key_id=key_id, ts=datetime.fromtimestamp(ts_s, timezone.utc), cost_usd=Decimal(cost),
                      tokens_in=10, tokens_out=5)

    events = [at(start - 600, "1"), at(start + 1800, "0.25"), at(start + 1900, "0.5"), at(now - 60, "0.125")]
    config = GatewayConfig(usage=UsageConfig(batch_size=50, batch_wait_s=0.2), keys=KeysConfig(budget_timezone=tz))
    async with running_usage(env, config):
        for e in events:
            await _publish(env.js, e)
        await _wait_caught_up(env.js)
        usage = await request(env.nc, subjects.USAGE_QUERY_KEY, KeyUsageQuery(key_id=key_id), KeyUsage, timeout=30)

    first = datetime.fromtimestamp(start, zone).date()
    assert usage.timezone == tz and usage.days is not None
    assert [d.day for d in usage.days] == [first + timedelta(days=n) for n in range(len(usage.days))]
    assert usage.days[-1].day == datetime.fromtimestamp(end - 1, zone).date()
    expected: dict = {}
    for ts_s, cost in ((start + 1800, "0.25"), (start + 1900, "0.5"), (now - 60, "0.125")):
        day = datetime.fromtimestamp(ts_s, zone).date()
        expected[day] = expected.get(day, Decimal(0)) + Decimal(cost)
    assert {d.day: d.cost_usd for d in usage.days if d.requests} == expected
    assert sum(d.requests for d in usage.days) == 3 and usage.days[0].tokens_in >= 20
    assert sum(d.cost_usd for d in usage.days) == usage.month_totals.cost_usd == Decimal("0.875")


async def test_bad_queries_get_400(env):
    async with running_usage(env):
        with pytest.raises(RemoteError) as err:
            await _history(env.nc, bucket_s=86400, since=datetime.now(timezone.utc),
                           until=datetime.now(timezone.utc) - timedelta(hours=1))
        assert err.value.status == 400
        for body in (b"{not json", b'{"bucket_s": 5}', b'{"limit": 0}', b"[]"):
            resp = await env.nc.request(subjects.USAGE_QUERY_HISTORY, body, timeout=10)
            assert resp.headers["Nats-Service-Error-Code"] == "400", body
            assert "Traceback" not in resp.headers["Nats-Service-Error"]
        resp = await env.nc.request(subjects.USAGE_QUERY_CURRENT, b"{nope", timeout=10)
        assert resp.headers["Nats-Service-Error-Code"] == "400"
        # an empty body is a valid (default) query
        empty = await env.nc.request(subjects.USAGE_QUERY_HISTORY, b"", timeout=30)
        assert not (empty.headers or {}).get("Nats-Service-Error-Code")
        UsageHistory.decode(empty.data)


async def test_two_replicas_share_the_work(env, tmp_path):
    if not env.infra.clickhouse_url:
        pytest.skip("two replicas need a ClickHouse server (one chDB directory belongs to one process)")
    provider = _uniq("prov")
    async with running_usage(env, state_dir=tmp_path / "r1"), running_usage(env, state_dir=tmp_path / "r2"):
        for _ in range(40):
            await _publish(env.js, _event(provider, "m"))
        await _wait_caught_up(env.js)
        hist = await _history(env.nc, provider=provider, bucket_s=86400)
        assert sum(r.requests for r in hist.rows) == 40
        assert _scope(await _current(env.nc), provider).windows["day"].requests == 40


async def test_consumers_sharing_the_durable_split_the_work(env, tmp_path):
    """Two consumer loops on the one durable consumer (as two replicas would run): every event counted once."""
    provider = _uniq("prov")
    store = ClickHouseStore(env.infra.clickhouse_url, tmp_path / "ch")
    await store.open()
    consumers = []
    try:
        for _ in range(2):
            c = UsageConsumer(env.js, BatchProcessor(ClickHouseProjection(store, env.redis), WindowWriter(env.redis)),
                              batch_size=7, batch_wait_s=0.2)
            await c.start()
            consumers.append(c)
        for i in range(120):
            await _publish(env.js, _event(provider, "m", tokens_in=i))
        await _wait_caught_up(env.js)
    finally:
        for c in consumers:
            await c.stop()
    assert sum(c.batches for c in consumers) >= 120 // 7
    rows = await store.query("SELECT count(), sum(tokens_in) FROM usage_events FINAL WHERE provider = {p:String}",
                             {"p": provider})
    await store.close()
    assert rows == [(120, sum(range(120)))]
    totals = await WindowReader(env.redis).read([provider_scope(provider)], int(time.time()))
    assert totals[provider_scope(provider)]["day"]["req"] == 120


async def test_service_survives_a_nats_restart(env):
    nats_server = env.infra.require_own("nats")
    provider = _uniq("prov")
    async with running_usage(env):
        await _publish(env.js, _event(provider, "m"))
        await _wait_caught_up(env.js)

        nats_server.kill()
        await asyncio.sleep(1.0)
        await asyncio.get_running_loop().run_in_executor(None, nats_server.start)

        deadline = time.monotonic() + DEADLINE_S
        while True:  # JetStream needs a moment after the port opens, and clients must reconnect
            try:
                await _publish(env.js, _event(provider, "m"))
                break
            except Exception:
                assert time.monotonic() < deadline, "could not publish after the NATS restart"
                await asyncio.sleep(0.25)
        await _wait_caught_up(env.js)
        while True:  # the query endpoints answer again once the service reconnected
            try:
                hist = await _history(env.nc, provider=provider, bucket_s=86400)
                break
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.25)
        assert sum(r.requests for r in hist.rows) == 2


async def test_service_stops_cleanly(env):
    async with running_usage(env) as task:
        await _publish(env.js, _event(_uniq("prov"), "m"))
        await _wait_caught_up(env.js)
    assert task.done() and task.exception() is None
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "usage-consumer"]
    assert not [t for t in threading.enumerate() if t.name.startswith("usage-clickhouse")]
    with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
        await env.nc.request(subjects.USAGE_QUERY_CURRENT, UsageCurrentQuery().encode(), timeout=2)
    # the chDB directory is free again: this process can open it (one engine per process)
    with _clickhouse(env) as ch:
        assert ch.query("SELECT count() FROM usage_events FINAL").result_rows[0][0] >= 1


async def test_serve_fails_fast_and_cleans_up_when_redis_is_down(env, infra):
    from llmgw_cli.infra import free_port

    settings = env.settings()
    settings.redis_url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(Exception):  # noqa: B017 - whichever start-up failure: the point is what it leaves behind
        await asyncio.wait_for(serve(settings, _config(), asyncio.Event()), DEADLINE_S)
    assert not [t for t in threading.enumerate() if t.name.startswith("usage-clickhouse")]
    with _clickhouse(env) as ch:  # closed again despite the failure
        assert ch.query("SELECT count() FROM schema_migrations FINAL").result_rows[0][0] == len(load_migrations())



async def test_run_entry_point_stops_on_sigterm(env, tmp_path):
    """``llmgw usage`` as a real process: settings from the environment, ready, SIGTERM, exit 0."""
    import os
    import signal
    import subprocess
    import sys

    provider = _uniq("prov")
    (tmp_path / "llmgw.yaml").write_text("version: 1\nusage:\n  batch_wait_s: 0.2\n  batch_size: 20\n")
    proc_env = dict(os.environ, NATS_URL=env.infra.nats_url, REDIS_URL=env.infra.redis_url,
                    CLICKHOUSE_URL=env.infra.clickhouse_url, LLMGW_CONFIG=str(tmp_path / "llmgw.yaml"),
                    LLMGW_STATE_DIR=str(tmp_path / "proc-state"))
    await migrated(env.infra, tmp_path / "proc-state")
    log_path = tmp_path / "usage.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-c", "from llmgw_usage.main import run; run()"], env=proc_env,
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                await _current(env.nc)
                break
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                assert time.monotonic() < deadline, log_path.read_text()
                await asyncio.sleep(0.2)
        await _publish(env.js, _event(provider, "m"))
        await _wait_caught_up(env.js)
        assert _scope(await _current(env.nc), provider).windows["day"].requests == 1
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, DEADLINE_S)
        assert code == 0, log_path.read_text()
        log = log_path.read_text()
        assert "usage service ready" in log and "usage service stopping" in log
        assert "Traceback" not in log
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
