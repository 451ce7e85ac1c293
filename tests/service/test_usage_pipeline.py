"""The usage pipeline as the system of record, against real servers (nats-server, Redis, chDB):
rollups that agree with the raw events under redelivery and replay, replay, a consumer killed
mid-batch, NDJSON export / import, the request log, history top-N, the ui-api routes.

Shares the servers of the session (``infra``) and the per-test reset of ``test_usage_service``
(stream purged, durable consumer deleted, window / seen / claim keys removed, own chDB dir).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import httpx
import pytest
from nats.js.errors import NotFoundError

from admin import ADMIN_HEADERS, UI_TOKENS
from fake_secrets import fake_key
from llmgw_cli.main import build_parser
from llmgw_common import redis_keys
from llmgw_common import subjects
from llmgw_common.messages import (
    Attempt,
    UsageEvent,
    UsageHistory,
    UsageHistoryQuery,
    UsageRequests,
    UsageRequestsQuery,
    UsageSimulate,
    UsageSimulated,
)
from llmgw_common.nats_conn import RemoteError, request
from llmgw_common.windows import WindowReader, model_scope, provider_scope
from llmgw_usage import consumer as consumer_module
from llmgw_usage import domain
from llmgw_usage.ingest import BatchProcessor
from llmgw_usage.domain import BODY_CAP_BYTES
from llmgw_usage.projection import ClickHouseProjection
from llmgw_usage.store import ClickHouseStore
from llmgw_usage.windows_writer import WindowWriter
from test_usage_service import (  # noqa: F401 - env is a fixture
    DEADLINE_S,
    Env,
    _clickhouse,
    _config,
    _delete_window_keys,
    _event,
    _publish,
    _uniq,
    _wait_caught_up,
    env,
    running_usage,
)

pytestmark = pytest.mark.integration


# ---- helpers ------------------------------------------------------------------

def rollup_disagreements(ch, provider_prefix: str) -> list:
    """Per (minute, provider, model, key_id): usage_minute sums vs the same sums over usage_events FINAL.
    Empty when they agree everywhere."""
    metrics = ("requests", "errors", "tokens_in", "tokens_out", "tokens_cached", "cost", "free", "latency",
               "ttft_sum", "ttft_n", "attempts", "tokens_cache_write", "tokens_reasoning")
    raw = ch.query(
        "SELECT toStartOfMinute(ts) AS m, provider AS p, model AS mo, key_id AS k, count(), countIf(status >= 400),"
        " sum(tokens_in), sum(tokens_out), sum(tokens_cached), toString(sum(cost_usd)),"
        " countIf(cost_usd = 0 AND status < 400), round(sum(latency_ms), 3), round(sum(ifNull(ttft_ms, 0)), 3),"
        " countIf(ttft_ms IS NOT NULL), sum(attempts_count), sum(tokens_cache_write), sum(tokens_reasoning)"
        " FROM usage_events FINAL WHERE startsWith(provider, {p:String}) GROUP BY m, p, mo, k",
        parameters={"p": provider_prefix}).result_rows
    rolled = ch.query(
        "SELECT minute, toString(provider), toString(model), toString(key_id), sum(requests), sum(errors),"
        " sum(tokens_in), sum(tokens_out), sum(tokens_cached), toString(sum(cost_usd)), sum(free_requests),"
        " round(sum(latency_ms_sum), 3), round(sum(ttft_ms_sum), 3), sum(ttft_count), sum(attempts),"
        " sum(tokens_cache_write), sum(tokens_reasoning)"
        " FROM usage_minute WHERE startsWith(provider, {p:String}) GROUP BY minute, provider, model, key_id",
        parameters={"p": provider_prefix}).result_rows

    def keyed(rows):
        return {tuple(r[:4]): dict(zip(metrics, [Decimal(x) if i == 5 else x for i, x in enumerate(r[4:])]))
                for r in rows}

    a, b = keyed(raw), keyed(rolled)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b), key=str) if a.get(k) != b.get(k)]


def raw_counts(ch, provider_prefix: str) -> tuple[int, int, int, int]:
    """(rows in usage_events, distinct ids, rows FINAL, rows in request_log FINAL)."""
    p = {"p": provider_prefix}
    rows, ids = ch.query("SELECT count(), uniqExact(id) FROM usage_events WHERE startsWith(provider, {p:String})",
                         parameters=p).result_rows[0]
    final = ch.query("SELECT count() FROM usage_events FINAL WHERE startsWith(provider, {p:String})",
                     parameters=p).result_rows[0][0]
    log = ch.query("SELECT count() FROM request_log FINAL WHERE startsWith(provider, {p:String})",
                   parameters=p).result_rows[0][0]
    return rows, ids, final, log


async def _day_requests(redis, provider: str) -> int:
    totals = await WindowReader(redis).read([provider_scope(provider)], int(time.time()))
    return totals[provider_scope(provider)]["day"]["req"]


async def _history(nc, **kw) -> UsageHistory:
    return await request(nc, subjects.USAGE_QUERY_HISTORY, UsageHistoryQuery(**kw), UsageHistory, timeout=30)


async def _requests(nc, **kw) -> UsageRequests:
    return await request(nc, subjects.USAGE_QUERY_REQUESTS, UsageRequestsQuery(**kw), UsageRequests, timeout=30)


def _totals(hist: UsageHistory) -> tuple:
    return (sum(r.requests for r in hist.rows), sum(r.tokens_in for r in hist.rows),
            sum(r.cost_usd for r in hist.rows), sum(r.errors for r in hist.rows))


def _cli_args(env: Env, *argv: str, state_dir=None):
    common = ["--nats-url", env.infra.nats_url]
    args = build_parser().parse_args([*argv, *common])
    if hasattr(args, "redis_url"):
        args.redis_url = env.infra.redis_url
    if hasattr(args, "clickhouse_url"):
        args.clickhouse_url = env.infra.clickhouse_url
        args.state_dir = str(state_dir or env.state_dir)
    return args


async def _replay(env: Env, *argv: str, state_dir=None) -> int:
    from llmgw_usage import subcommands as events

    return await events._replay(_cli_args(env, "replay", *argv, state_dir=state_dir))


def _mixed_events(provider: str, n: int, base: datetime) -> list[UsageEvent]:
    """n events over a few minutes, models and keys mixed, some errors, some free."""
    out = []
    for i in range(n):
        out.append(_event(provider, f"m{i % 3}", key_id=f"k{i % 2}", tokens_in=10 + i, tokens_out=i % 7,
                          tokens_cached=i % 3, tokens_cache_write=i % 4 * 5, tokens_reasoning=i % 6,
                          cost_usd=Decimal(0) if i % 4 == 0 else Decimal("0.000001") * (i + 1),
                          status=500 if i % 9 == 0 else 200, latency_ms=10.0 + i, ttft_ms=None if i % 5 else 3.5,
                          ts=base + timedelta(seconds=7 * i),
                          attempts=[Attempt(provider=provider, upstream_model="u", status=200, latency_ms=5)]))
    return out


# ---- rollups agree with the raw events ------------------------------------------------

def test_rollup_and_request_log_schema(infra, tmp_path):
    """The names Grafana's dashboards are written against."""
    from llmgw_common.clickhouse_conn import connect_clickhouse
    from llmgw_usage.schema import apply_migrations

    with contextlib.closing(connect_clickhouse(infra.clickhouse_url, tmp_path / "ch")) as ch:
        apply_migrations(ch)
        cols = ch.query("SELECT name, type FROM system.columns WHERE database = currentDatabase()"
                        " AND table = 'usage_minute' ORDER BY position").result_rows
        assert cols == [
            ("minute", "DateTime('UTC')"), ("provider", "LowCardinality(String)"), ("model", "LowCardinality(String)"),
            ("key_id", "LowCardinality(String)"), ("requests", "UInt64"), ("errors", "UInt64"),
            ("tokens_in", "UInt64"), ("tokens_out", "UInt64"), ("tokens_cached", "UInt64"),
            ("tokens_cache_write", "UInt64"), ("tokens_reasoning", "UInt64"), ("cost_usd", "Decimal(18, 9)"),
            ("cache_saved_usd", "Decimal(18, 9)"), ("free_requests", "UInt64"), ("latency_ms_sum", "Float64"),
            ("ttft_ms_sum", "Float64"), ("ttft_count", "UInt64"), ("attempts", "UInt64")]
        for table in ("usage_events", "request_log"):
            tokens = ch.query("SELECT name, type FROM system.columns WHERE database = currentDatabase()"
                              " AND table = {t:String} AND startsWith(name, 'tokens_') ORDER BY position",
                              parameters={"t": table}).result_rows
            assert tokens == [(c, "UInt64") for c in ("tokens_in", "tokens_out", "tokens_cached",
                                                      "tokens_cache_write", "tokens_reasoning")], table
        engines = dict(ch.query("SELECT name, engine FROM system.tables WHERE database = currentDatabase()").result_rows)
        assert engines["usage_minute"] == "SummingMergeTree" and engines["usage_minute_mv"] == "MaterializedView"
        assert engines["request_log"] == "ReplacingMergeTree" and engines["request_log_mv"] == "MaterializedView"
        ttl = dict(ch.query("SELECT name, engine_full FROM system.tables WHERE database = currentDatabase()"
                            " AND name IN ('request_log', 'request_bodies')").result_rows)
        assert "TTL toDateTime(ts) + toIntervalDay(90)" in ttl["request_log"]
        assert "TTL toDateTime(ts) + toIntervalDay(7)" in ttl["request_bodies"]



async def test_rollups_agree_with_raw_events_after_duplicates(env):
    provider = _uniq("dup")
    base = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=30)
    events = _mixed_events(provider, 40, base)
    async with running_usage(env):
        for ev in events:
            await _publish(env.js, ev)
        await _wait_caught_up(env.js)
        # the same events again under other message ids: JetStream stores them a second time
        for ev in events[::3]:
            await _publish(env.js, ev, msg_id=_uniq("again"))
        await _wait_caught_up(env.js)
    # a consumer re-created from the start reads everything once more (what a lost consumer would do)
    await env.js.delete_consumer(subjects.USAGE_STREAM, subjects.USAGE_CONSUMER)
    async with running_usage(env):
        await _wait_caught_up(env.js)
        assert _totals(await _history(env.nc, provider=provider, bucket_s=86400))[0] == 40
    with _clickhouse(env) as ch:
        assert raw_counts(ch, provider) == (40, 40, 40, 40)  # no duplicate row ever reached the views
        assert rollup_disagreements(ch, provider) == []
        assert ch.query("SELECT sum(requests), sum(tokens_cache_write), sum(tokens_reasoning) FROM usage_minute"
                        " WHERE provider = {p:String}", parameters={"p": provider}).result_rows == [
            (40, sum(ev.tokens_cache_write for ev in events), sum(ev.tokens_reasoning for ev in events))]


async def test_two_writers_racing_insert_each_event_once(env, tmp_path):
    """A claim held by another writer makes the events busy (not inserted); after it is released they are
    inserted once, and a second pass finds them all there."""
    provider = _uniq("race")
    events = [domain.event_row(_event(provider, "m", tokens_in=i)) for i in range(20)]
    store = ClickHouseStore(env.infra.clickhouse_url, tmp_path / "ch")
    await store.open()
    try:
        # claims as with a ClickHouse server shared by replicas (chDB needs none: one process, one thread)
        other = ClickHouseProjection(store, env.redis, exclusive=False)
        other.owner = "another-replica"  # as if another process held the claims
        mine = ClickHouseProjection(store, env.redis, exclusive=False)
        mine.owner = "this-replica"
        held, busy = await other.claim([ev.id for ev in events[:10]])
        assert len(held) == 10 and not busy
        first = await mine.project(events)
        assert (first.inserted, first.already, len(first.busy)) == (10, 0, 10)
        assert first.busy == {ev.id for ev in events[:10]}
        await other.release(held)
        second = await mine.project(events)
        assert (second.inserted, second.already, second.busy) == (10, 10, set())
        assert await store.query("SELECT count(), uniqExact(id) FROM usage_events WHERE provider = {p:String}",
                                 {"p": provider}) == [(20, 20)]
        assert await store.query("SELECT sum(requests) FROM usage_minute WHERE provider = {p:String}",
                                 {"p": provider}) == [(20,)]
        assert not await env.redis.keys(redis_keys.CLAIM_PREFIX + "*")
    finally:
        await store.close()


async def test_busy_messages_are_not_acked_but_windows_count_them(env, tmp_path):
    provider = _uniq("busy")
    events = [_event(provider, "m") for _ in range(4)]

    class Msg:
        def __init__(self, data):
            self.data, self.subject, self.acks, self.naks = data, "llmgw.usage.event.x", 0, 0

        async def ack(self):
            self.acks += 1

        async def nak(self, delay=None):
            self.naks += 1

        async def term(self):
            raise AssertionError("not expected")

    store = ClickHouseStore(env.infra.clickhouse_url, tmp_path / "ch")
    await store.open()
    try:
        other = ClickHouseProjection(store, env.redis, exclusive=False)
        other.owner = "another-replica"
        await other.claim([events[0].id])
        projection = ClickHouseProjection(store, env.redis, exclusive=False)
        projection.owner = "this-replica"
        msgs = [Msg(ev.encode()) for ev in events]
        result = await BatchProcessor(projection, WindowWriter(env.redis)).process(msgs)
        assert (result.stored, result.busy, result.applied) == (3, 1, 4)
        assert [(m.acks, m.naks) for m in msgs] == [(0, 1), (1, 0), (1, 0), (1, 0)]
        assert await _day_requests(env.redis, provider) == 4
    finally:
        await store.close()


# ---- a consumer killed mid-batch --------------------------------------------------------

async def test_crash_between_insert_and_ack_loses_and_doubles_nothing(env, tmp_path, monkeypatch):
    """The first batch is committed to ClickHouse and Redis, then the process 'dies' before acking:
    JetStream redelivers it, and it is counted once."""
    monkeypatch.setattr(consumer_module, "ACK_WAIT_S", 1.0)  # redeliver unacked messages quickly
    provider = _uniq("crash")
    events = [_event(provider, "m", tokens_in=i, cost_usd=Decimal("0.001")) for i in range(30)]
    for ev in events:
        await _publish(env.js, ev)

    class CrashOnce(BatchProcessor):
        crashed = 0
        handled = 0

        async def process(self, msgs):
            self.handled += len(msgs)
            if not self.crashed:
                self.crashed = len(msgs)
                unique = [UsageEvent.decode(m.data) for m in msgs]
                await self._projection.project([domain.event_row(ev) for ev in unique])
                await self._writer.apply(unique, int(time.time()))
                raise RuntimeError("killed after the insert, before the ack")
            return await super().process(msgs)

    store = ClickHouseStore(env.infra.clickhouse_url, tmp_path / "ch")
    await store.open()
    c = None
    try:
        processor = CrashOnce(ClickHouseProjection(store, env.redis), WindowWriter(env.redis))
        c = consumer_module.UsageConsumer(env.js, processor, batch_size=10, batch_wait_s=0.2)
        await c.start()
        await _wait_caught_up(env.js)
        await c.stop()
        c = None
        assert processor.crashed > 0
        # the crashed batch came back (with a 1 s ack wait other batches may have come back too)
        assert processor.handled >= 30 + processor.crashed
        rows = await store.query("SELECT count(), uniqExact(id), sum(tokens_in) FROM usage_events"
                                 " WHERE provider = {p:String}", {"p": provider})
        assert rows == [(30, 30, sum(range(30)))]
        assert await store.query("SELECT sum(requests), sum(tokens_in) FROM usage_minute WHERE provider = {p:String}",
                                 {"p": provider}) == [(30, sum(range(30)))]
        assert await _day_requests(env.redis, provider) == 30
    finally:
        if c is not None:
            await c.stop()
        await store.close()


async def test_insert_cut_short_between_table_and_views_is_completed_at_restart(env, tmp_path):
    """What a process killed inside an insert can leave: the events stored, their rollup rows not (a view is
    not atomic with its table). The restart repeats the journaled insert with its token: the rollups catch
    up, nothing is stored twice. An insert cut short before anything landed is forgotten: its events were
    never acknowledged, so they come back from the stream and go in then. A journal file from before inserts
    were JSON rows (a JSON array of events) is completed the same way."""
    from llmgw_common.clickhouse_conn import connect_clickhouse
    from llmgw_usage import domain
    from llmgw_usage.store import _insert_settings, insert_body

    provider = _uniq("cut")
    landed = [_event(provider, "m", tokens_in=i, key_id="k") for i in range(20)]
    lost = [_event(provider, "m", tokens_in=100 + i, key_id="k") for i in range(5)]
    store = ClickHouseStore(env.infra.clickhouse_url, tmp_path / "ch")
    await store.open()

    def crash_mid_insert():
        client = store._require()
        store.journal_dir.mkdir(parents=True, exist_ok=True)
        old_journal = "[" + ",".join(ev.model_dump_json() for ev in landed[10:]) + "]"
        (store.journal_dir / "a1.ndjson").write_bytes(insert_body("a1", (domain.event_line(e) for e in landed[:10])))
        (store.journal_dir / "c3.json").write_text(old_journal)
        (store.journal_dir / "b2.ndjson").write_bytes(insert_body("b2", (domain.event_line(e) for e in lost)))
        client.command("DETACH TABLE usage_minute_mv")  # the rollup's view never ran for these inserts
        try:
            for token, events in (("a1", landed[:10]), ("c3", landed[10:])):
                client.raw_insert("usage_events", None, insert_body(token, (domain.event_line(e) for e in events)),
                                  settings=_insert_settings(token), fmt=domain.INSERT_FORMAT)
        finally:
            client.command("ATTACH TABLE usage_minute_mv")

    try:
        await store._run(crash_mid_insert)
        broken = await store.query("SELECT (SELECT count() FROM usage_events WHERE provider = {p:String}),"
                                   " (SELECT sum(requests) FROM usage_minute WHERE provider = {p:String})",
                                   {"p": provider})
        assert broken == [(20, 0)]
    finally:
        await store.close()
    store = ClickHouseStore(env.infra.clickhouse_url, tmp_path / "ch")  # the restart
    await store.open()
    try:
        projection = ClickHouseProjection(store, env.redis)
        assert await projection.recover() == 3
        assert not list(store.journal_dir.iterdir())
        assert await projection.recover() == 0
        rows = await store.query("SELECT count(), sum(tokens_in) FROM usage_events WHERE provider = {p:String}",
                                 {"p": provider})
        assert rows == [(20, sum(range(20)))]  # the lost insert is not redone from the journal
        res = await projection.project([domain.event_row(ev) for ev in landed + lost])  # the redelivery
        assert (res.inserted, res.already) == (5, 20)
    finally:
        await store.close()
    with contextlib.closing(connect_clickhouse(env.infra.clickhouse_url, tmp_path / "ch")) as ch:
        assert raw_counts(ch, provider) == (25, 25, 25, 25)
        assert rollup_disagreements(ch, provider) == []
        assert ch.query("SELECT sum(requests), sum(tokens_in) FROM usage_minute WHERE provider = {p:String}",
                        parameters={"p": provider}).result_rows == [(25, sum(range(20)) + sum(range(100, 105)))]


async def test_usage_process_killed_and_restarted(env, tmp_path):
    """``llmgw usage`` as a real process, SIGKILLed while it works through a backlog, then restarted on the
    same data: every event once in ClickHouse (raw, rollups, request log) and in the windows."""
    provider = _uniq("kill")
    n = 3000
    acks = []
    for i in range(n):
        ev = _event(provider, f"m{i % 2}", tokens_in=1, key_id=f"k{i % 3}")
        acks.append(await env.js.publish_async(subjects.usage_event_subject(provider), ev.encode(),
                                               headers={"Nats-Msg-Id": ev.id}))
    await asyncio.gather(*acks)
    (tmp_path / "llmgw.yaml").write_text("version: 1\nusage:\n  batch_wait_s: 0.2\n  batch_size: 100\n")
    proc_env = dict(os.environ, NATS_URL=env.infra.nats_url, REDIS_URL=env.infra.redis_url,
                    CLICKHOUSE_URL=env.infra.clickhouse_url, LLMGW_CONFIG=str(tmp_path / "llmgw.yaml"),
                    LLMGW_STATE_DIR=str(env.state_dir),
                    # what the killed process held comes back after 2 s, not 30
                    LLMGW_USAGE_ACK_WAIT_S="2")

    def start(log_name: str) -> subprocess.Popen:
        with open(tmp_path / log_name, "wb") as log_file:
            return subprocess.Popen([sys.executable, "-c", "from llmgw_usage.main import run; run()"],
                                    env=proc_env, stdout=log_file, stderr=subprocess.STDOUT)

    first_seq = (await env.js.stream_info(subjects.USAGE_STREAM)).state.first_seq
    proc = start("first.log")
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:  # kill it once it is busy: some events committed, many still to come
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            with contextlib.suppress(NotFoundError):  # until the process created it
                info = await env.js.consumer_info(subjects.USAGE_STREAM, subjects.USAGE_CONSUMER)
                if info.ack_floor.stream_seq >= first_seq + 300:
                    break
            assert time.monotonic() < deadline, "the usage process never got going"
            await asyncio.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        info = await env.js.consumer_info(subjects.USAGE_STREAM, subjects.USAGE_CONSUMER)
        assert info.ack_floor.stream_seq < first_seq + n - 1, "killed too late to prove anything"
        proc = start("second.log")
        await _wait_caught_up(env.js)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.get_running_loop().run_in_executor(None, proc.wait, DEADLINE_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with _clickhouse(env) as ch:
        assert raw_counts(ch, provider) == (n, n, n, n)
        assert rollup_disagreements(ch, provider) == []
    assert await _day_requests(env.redis, provider) == n


# ---- replay ---------------------------------------------------------------------------------

async def test_replay_twice_changes_nothing_and_restores_flushed_windows(env, tmp_path):
    provider = _uniq("replay")
    now = datetime.now(timezone.utc)
    events = _mixed_events(provider, 30, now - timedelta(hours=3))
    events += [_event(provider, "recent", tokens_in=5, cost_usd=Decimal("0.25")) for _ in range(5)]

    async def snapshot():
        hist = await _history(env.nc, provider=provider, bucket_s=3600, group_by=["provider", "model", "key_id"])
        day = await _day_requests(env.redis, provider)
        totals = await WindowReader(env.redis).read([provider_scope(provider), model_scope(provider, "recent")],
                                                     int(time.time()))
        return [r.model_dump() for r in hist.rows], day, totals[model_scope(provider, "recent")]["day"]

    async with running_usage(env):
        for ev in events:
            await _publish(env.js, ev)
        await _wait_caught_up(env.js)
        before = await snapshot()
        assert before[1] == 35 and before[2]["cost"] == 5 * 250_000_000
        # through the running usage service (it owns the chDB directory), twice
        assert await _replay(env, "--target", "all") == 0
        assert await _replay(env, "--target", "all", "--since", "1d") == 0
        assert await snapshot() == before
        # a Redis flush: the windows are rebuilt from the stream, and only once
        await _delete_window_keys(env.redis)
        assert await _day_requests(env.redis, provider) == 0
        assert await _replay(env, "--target", "redis", "--dry-run") == 0
        assert await _day_requests(env.redis, provider) == 0  # a dry run writes nothing
        assert await _replay(env, "--target", "redis") == 0
        assert await snapshot() == before
        assert await _replay(env, "--target", "redis") == 0
        assert await snapshot() == before
    with _clickhouse(env) as ch:
        assert raw_counts(ch, provider) == (35, 35, 35, 35)
        assert rollup_disagreements(ch, provider) == []

    # no usage service running: the replay opens ClickHouse itself, here a new empty chDB, and rebuilds it
    fresh = tmp_path / "rebuilt"
    assert await _replay(env, "--target", "clickhouse", state_dir=fresh) == 0
    assert await _replay(env, "--target", "clickhouse", state_dir=fresh) == 0
    with _clickhouse(env, fresh) as ch:
        assert raw_counts(ch, provider) == (35, 35, 35, 35)
        assert rollup_disagreements(ch, provider) == []
        old_rows = sorted(ch.query("SELECT minute, toString(model), toString(key_id), sum(requests),"
                                   " toString(sum(cost_usd)) FROM usage_minute WHERE provider = {p:String}"
                                   " GROUP BY minute, model, key_id", parameters={"p": provider}).result_rows)
    with _clickhouse(env) as ch:
        assert sorted(ch.query("SELECT minute, toString(model), toString(key_id), sum(requests),"
                               " toString(sum(cost_usd)) FROM usage_minute WHERE provider = {p:String}"
                               " GROUP BY minute, model, key_id", parameters={"p": provider}).result_rows) == old_rows


async def test_replay_and_export_time_range_is_event_time_and_errors_are_clear(env, tmp_path, capsys):
    provider = _uniq("range")
    first = [_event(provider, "a") for _ in range(5)]
    for ev in first:
        await _publish(env.js, ev)
    await asyncio.sleep(1.1)
    cut = datetime.now(timezone.utc)
    await asyncio.sleep(0.1)
    second = [_event(provider, "b") for _ in range(7)]
    for ev in second:
        await _publish(env.js, ev)
    # a backfill: stored now, stamped three days ago (as `llmgw events import` of an old file does)
    old = _event(provider, "old", ts=cut - timedelta(days=3))
    await _publish(env.js, old)
    from llmgw_usage import subcommands as cli_events
    from llmgw_usage.replay import CLOCK_SKEW_S, resolve_range, seq_at_time

    info = (await env.js.stream_info(subjects.USAGE_STREAM)).state
    assert await seq_at_time(env.js, cut) == info.first_seq + 5  # the stream's own order: store time
    rng = await resolve_range(env.js, cut, None)  # read from CLOCK_SKEW_S before `cut`, to the end
    assert rng.start_seq == await seq_at_time(env.js, cut - timedelta(seconds=CLOCK_SKEW_S))
    assert rng.end_seq == info.last_seq + 1

    async def exported(*argv: str) -> list[str]:
        out = io.BytesIO()
        assert await cli_events._export(_cli_args(env, "events", "export", *argv), out) == 0
        return [ev.model for line in out.getvalue().splitlines() if (ev := UsageEvent.decode(line)).provider == provider]

    # the range is on the events' own time, wherever they are in the stream
    assert await exported("--since", cut.isoformat()) == ["b"] * 7
    assert await exported("--until", cut.isoformat()) == ["a"] * 5 + ["old"]
    assert await exported("--since", "4d", "--until", "2d") == ["old"]
    assert "outside the time range" in capsys.readouterr().err
    # only the events stamped from `cut` on reach the windows
    assert await _replay(env, "--target", "redis", "--since", cut.isoformat()) == 0
    totals = await WindowReader(env.redis).read([model_scope(provider, "a"), model_scope(provider, "b")],
                                                int(time.time()))
    assert totals[model_scope(provider, "a")]["day"]["req"] == 0
    assert totals[model_scope(provider, "b")]["day"]["req"] == 7
    capsys.readouterr()
    assert await _replay(env, "--target", "redis", "--since", "2h", "--until", "3h") == 2
    assert "--until must be after --since" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="not a time"):
        await _replay(env, "--since", "yesterday-ish")
    # a chDB directory held by another process is refused with a message that says what to do
    held = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", "import asyncio, sys, time\nfrom llmgw_usage.store import "
                               "ClickHouseStore\nasyncio.run(ClickHouseStore('', sys.argv[1]).open())\n"
                               "print('ready', flush=True)\ntime.sleep(60)", str(held / "clickhouse")],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"ready"
        capsys.readouterr()
        code = await _replay(env, "--target", "clickhouse", state_dir=held)
        err = capsys.readouterr().err
        if env.infra.clickhouse_url:
            assert code == 0
        else:
            assert code == 2 and f"in use by another process (pid {holder.pid})" in err and "stop it first" in err
    finally:
        holder.kill()
        holder.wait()


# ---- NDJSON export / import ---------------------------------------------------------------

async def test_export_import_round_trip_and_bad_lines(env, tmp_path, capsys):
    from llmgw_usage import subcommands as cli_events

    provider = _uniq("nd")
    events = [_event(provider, "m", tokens_in=i, request_body="hi" if i == 0 else None) for i in range(12)]
    async with running_usage(env):
        for ev in events:
            await _publish(env.js, ev)
        await _wait_caught_up(env.js)
        out = io.BytesIO()
        assert await cli_events._export(_cli_args(env, "events", "export"), out) == 0
        lines = out.getvalue().splitlines()
        assert [UsageEvent.decode(line).id for line in lines] == [ev.id for ev in events]

        # the same file back, plus bad lines: bad ones reported by number, good ones published, nothing doubled
        good_extra = _event(provider, "m", tokens_in=100)
        bad = [b"{not json", b'{"request_id": "r", "model": "m"}', b'{"request_id": "r", "model": "m", "status": "x"}',
               _event(provider, "m", ts=datetime(1, 1, 1, tzinfo=timezone.utc)).encode()]
        content = lines[:6] + [bad[0], b"", bad[1]] + lines[6:] + [bad[2], good_extra.encode(), bad[3], lines[0]]
        path = tmp_path / "events.ndjson"
        path.write_bytes(b"\n".join(content) + b"\n")
        capsys.readouterr()
        args = _cli_args(env, "events", "import", str(path))
        with open(path, "rb") as source:
            assert await cli_events._import(args, source) == 1  # 1: some lines were skipped
        err = capsys.readouterr().err
        bad_lines = sorted(int(line.split(":")[1]) for line in err.splitlines() if ": skipped: " in line)
        assert bad_lines == [7, 9, 16, 18]
        assert "status" in err and "out of range" in err
        assert "imported 13 events" in err and "4 bad lines skipped" in err and "1 repeated ids" in err
        await _wait_caught_up(env.js)
        hist = await _history(env.nc, provider=provider, bucket_s=86400)
        assert _totals(hist)[:2] == (13, sum(range(12)) + 100)
        # importing it again changes nothing either
        with open(path, "rb") as source:
            await cli_events._import(args, source)
        await _wait_caught_up(env.js)
        assert _totals(await _history(env.nc, provider=provider, bucket_s=86400))[:2] == (13, sum(range(12)) + 100)
    assert await _day_requests(env.redis, provider) == 13


# ---- request log ----------------------------------------------------------------------------

async def test_request_log_pages_filters_and_bodies(env):
    provider, other = _uniq("log"), _uniq("log")
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=20)
    events = []
    for i in range(25):  # pairs share a timestamp: the event id breaks the tie
        events.append(_event(provider, "m", ts=base + timedelta(seconds=i // 2), key_id="ka" if i % 2 else "kb",
                             status=502 if i % 5 == 0 else 200, error="upstream 502" if i % 5 == 0 else None,
                             tokens_in=1000 + i, tokens_out=200 + i, tokens_cached=100 + i,
                             tokens_cache_write=300 + i, tokens_reasoning=50 + i,
                             attempts=[Attempt(provider="x", upstream_model="u", status=503, latency_ms=3, retries=1),
                                       Attempt(provider=provider, upstream_model="u", status=200, latency_ms=9)]))
    key = fake_key()
    secret = f"Authorization: Bearer {key}"
    events.append(_event(other, "m", ts=base, request_body=f"hello {secret}", response_body="x" * (BODY_CAP_BYTES + 50)))
    async with running_usage(env):
        for ev in events:
            await _publish(env.js, ev)
        await _wait_caught_up(env.js)

        expected = sorted((ev for ev in events if ev.provider == provider), key=lambda e: (e.ts, e.id), reverse=True)
        seen, cursor, pages = [], None, 0
        while True:
            page = await _requests(env.nc, provider=provider, limit=10, cursor=cursor)
            pages += 1
            seen += page.rows
            cursor = page.next_cursor
            if cursor is None:
                break
        assert pages == 3 and [r.id for r in seen] == [ev.id for ev in expected]
        row = seen[0]
        assert row.retries == 2 and len(row.attempts) == 2 and row.attempts[0].retries == 1
        for r, ev in zip(seen, expected):
            assert (r.tokens_in, r.tokens_out, r.tokens_cached, r.tokens_cache_write, r.tokens_reasoning) == (
                ev.tokens_in, ev.tokens_out, ev.tokens_cached, ev.tokens_cache_write, ev.tokens_reasoning)
        assert row.request_body is None

        errors = await _requests(env.nc, provider=provider, status_class="error", limit=100)
        assert {r.id for r in errors.rows} == {ev.id for ev in events[:25] if ev.status == 502}
        assert all(r.error == "upstream 502" for r in errors.rows) and errors.next_cursor is None
        assert len((await _requests(env.nc, provider=provider, status=200, key_id="ka")).rows) == 10
        window = await _requests(env.nc, provider=provider, since=base + timedelta(seconds=3),
                                 until=base + timedelta(seconds=5))
        assert {r.id for r in window.rows} == {ev.id for ev in events[6:10]}

        with_body = (await _requests(env.nc, provider=other, include_bodies=True)).rows[0]
        assert with_body.request_body.startswith("hello ") and key not in with_body.request_body
        assert "[REDACTED]" in with_body.request_body
        assert len(with_body.response_body.encode()) == BODY_CAP_BYTES

        with pytest.raises(RemoteError) as err:
            await _requests(env.nc, cursor="not-a-cursor")
        assert err.value.status == 400 and "cursor" in str(err.value)
        resp = await env.nc.request(subjects.USAGE_QUERY_REQUESTS, b'{"limit": 0}', timeout=10)
        assert resp.headers["Nats-Service-Error-Code"] == "400"


async def test_request_log_pages_never_exceed_the_max_payload(env):
    """Events with every field as large as an event may have it: one page of them would pass the NATS max
    payload (1 MB). The usage service cuts the page by bytes and gives a cursor; /api/requests answers 200
    with it, and following the cursors gives every row once, newest first."""
    provider = _uniq("big")
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5)
    long_attempt = Attempt(provider="p" * domain.MAX_ID_CHARS, upstream_model="u" * domain.MAX_ID_CHARS, status=503,
                           error="a" * domain.MAX_ATTEMPT_ERROR_CHARS, latency_ms=1.0)
    events = [_event(provider, "m", ts=base + timedelta(seconds=i), error="e" * domain.MAX_ERROR_CHARS,
                     route_reason="r" * domain.MAX_ERROR_CHARS, attempts=[long_attempt] * domain.MAX_ATTEMPTS,
                     request_body="q" * BODY_CAP_BYTES, response_body="s" * BODY_CAP_BYTES) for i in range(14)]
    assert all(len(ev.encode()) <= domain.MAX_EVENT_BYTES for ev in events)
    assert sum(len(ev.encode()) for ev in events) > 1024 * 1024
    async with running_usage(env), _ui(env) as ui:
        for ev in events:
            await _publish(env.js, ev)
        await _wait_caught_up(env.js)

        raw = await env.nc.request(subjects.USAGE_QUERY_REQUESTS, UsageRequestsQuery(
            provider=provider, limit=100, include_bodies=True).encode(), timeout=30)
        assert len(raw.data) <= env.nc.max_payload and not (raw.headers or {}).get("Nats-Service-Error-Code")

        seen, cursor, pages = [], None, 0
        while True:
            params = {"provider": provider, "limit": 100, "include_bodies": "true"}
            if cursor:
                params["cursor"] = cursor
            resp = await ui.get("/api/requests", params=params)
            assert resp.status_code == 200, resp.text[:300]
            page = resp.json()
            pages += 1
            assert len(page["rows"]) < 14 or page["next_cursor"] is None
            seen += page["rows"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages >= 2
        assert [r["id"] for r in seen] == [ev.id for ev in reversed(events)]
        row = seen[0]
        assert len(row["attempts"]) == domain.MAX_ATTEMPTS and len(row["error"]) == domain.MAX_ERROR_CHARS
        assert len(row["response_body"]) == BODY_CAP_BYTES and row["truncated"] is False


async def test_history_and_current_are_paged_and_followed_by_ui_api(env, monkeypatch):
    """With replies cut to a few rows (a tiny budget), the usage service answers history and the current
    windows in pages; following the cursors gives the same answer as one reply, and ui-api follows them."""
    from llmgw_common.messages import UsageCurrent, UsageCurrentQuery
    from llmgw_usage import queries

    provider = _uniq("page")
    base = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=10)
    events = [_event(provider, f"m{i % 9}", ts=base + timedelta(seconds=20 * i), tokens_in=i + 1,
                     key_id=f"k{i % 2}") for i in range(30)]
    async with running_usage(env), _ui(env) as ui:
        for ev in events:
            await _publish(env.js, ev)
        await _wait_caught_up(env.js)
        ask = dict(provider=provider, group_by=["model", "key_id"], bucket_s=60)
        full = await _history(env.nc, **ask)
        assert full.next_cursor is None and len(full.rows) > 20 and len(full.totals) == 18
        full_current = await request(env.nc, subjects.USAGE_QUERY_CURRENT, UsageCurrentQuery(), UsageCurrent,
                                     timeout=30)
        assert full_current.next_cursor is None and len(full_current.scopes) >= 10  # provider, 9 models (, keys)

        monkeypatch.setattr(queries, "reply_budget", lambda _max_payload: 2500)  # a few rows per reply
        rows, totals, cursor, pages = [], [], None, 0
        while True:
            page = await _history(env.nc, **ask, cursor=cursor)
            pages += 1
            assert len(page.model_dump_json()) < 2500 + 1000
            rows += page.rows
            totals += page.totals
            cursor = page.next_cursor
            if cursor is None:
                break
        assert pages >= 4
        assert [r.model_dump() for r in totals] == [r.model_dump() for r in full.totals]
        assert [r.model_dump() for r in rows] == [r.model_dump() for r in full.rows]
        limited = await _history(env.nc, **ask, limit=7, cursor=None)
        got = list(limited.rows)
        while limited.next_cursor:
            limited = await _history(env.nc, **ask, limit=7, cursor=limited.next_cursor)
            got += limited.rows
        assert [r.model_dump() for r in got] == [r.model_dump() for r in full.rows[:7]]  # limit: over all pages

        via_ui = (await ui.get("/api/usage/history", params={"provider": provider, "group_by": "model,key_id",
                                                             "bucket_s": 60})).json()
        assert via_ui["next_cursor"] is None
        assert via_ui["rows"] == [r.model_dump(mode="json") for r in full.rows]
        assert via_ui["totals"] == [r.model_dump(mode="json") for r in full.totals]
        current = (await ui.get("/api/usage/current")).json()
        assert current["next_cursor"] is None
        assert [(s["scope"], s["provider"], s["model"]) for s in current["scopes"]] == [
            (s.scope, s.provider, s.model) for s in full_current.scopes]
        bad = await ui.get("/api/usage/history", params={"provider": provider, "cursor": "garbage"})
        assert bad.status_code == 400 and "cursor" in bad.json()["error"]["message"]


# ---- history: rollups, filters, top-N ---------------------------------------------------------

async def test_history_top_n_from_rollups_and_raw_fallback(env):
    provider = _uniq("top")
    now = int(time.time())
    base = datetime.fromtimestamp(now - now % 3600 - 2 * 3600, tz=timezone.utc)
    costs = {"cheap": "0.001", "mid": "0.01", "dear": "0.1", "free": "0"}
    events = []
    for i in range(24):
        model = list(costs)[i % 4]
        events.append(_event(provider, model, ts=base + timedelta(seconds=50 * i), cost_usd=Decimal(costs[model]),
                             tokens_in=100 if model == "free" else 1, key_id=f"key{i % 2}",
                             status=429 if i % 6 == 0 else 200))
    async with running_usage(env):
        for ev in events:
            await _publish(env.js, ev)
        await _wait_caught_up(env.js)

        by_cost = await _history(env.nc, provider=provider, group_by=["model"], top=2, order_by="cost", bucket_s=300,
                                 since=base, until=base + timedelta(hours=1))
        assert by_cost.source == "usage_minute"
        assert [(t.model, t.requests, t.cost_usd) for t in by_cost.totals] == [
            ("dear", 6, Decimal("0.6")), ("mid", 6, Decimal("0.06"))]
        assert {r.model for r in by_cost.rows} == {"dear", "mid"} and all(r.provider == "" for r in by_cost.rows)
        assert sum(r.requests for r in by_cost.rows) == 12
        by_tokens = await _history(env.nc, provider=provider, group_by=["model"], top=1, order_by="tokens")
        assert [t.model for t in by_tokens.totals] == ["free"] and by_tokens.totals[0].free_requests == 6

        # the same question from the rollups and from the raw events (an unaligned range forces raw)
        aligned = await _history(env.nc, provider=provider, group_by=["model", "key_id"], bucket_s=600,
                                 since=base, until=base + timedelta(hours=1))
        unaligned = await _history(env.nc, provider=provider, group_by=["model", "key_id"], bucket_s=600,
                                   since=base - timedelta(milliseconds=1), until=base + timedelta(hours=1))
        assert (aligned.source, unaligned.source) == ("usage_minute", "usage_events")
        assert [r.model_dump() for r in aligned.rows] == [r.model_dump() for r in unaligned.rows]
        assert aligned.rows and all(r.key_id in ("key0", "key1") for r in aligned.rows)

        errors = await _history(env.nc, provider=provider, status_class="error", group_by=[], bucket_s=86400)
        assert errors.source == "usage_events" and _totals(errors)[0] == 4 and _totals(errors)[3] == 4
        by_key = await _history(env.nc, provider=provider, key_id="key1", group_by=["key_id"], bucket_s=86400)
        assert [(r.key_id, r.requests) for r in by_key.totals] == [("key1", 12)]


# ---- ui-api -------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def _ui(env: Env):
    from llmgw_ui_api.main import UiApiSettings, create_app

    app = create_app(UiApiSettings(**UI_TOKENS, NATS_URL=env.infra.nats_url,
                                   LLMGW_CONFIG=str(env.state_dir / "absent.yaml"),
                                   LLMGW_UI_QUERY_TIMEOUT_S="30"))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ui",
                                     headers=ADMIN_HEADERS) as client:
            yield client


async def test_ui_api_usage_routes(env):
    provider = _uniq("ui")
    events = [_event(provider, f"m{i % 2}", tokens_in=i, cost_usd=Decimal("0.5") if i % 2 else Decimal(0),
                     status=500 if i == 3 else 200) for i in range(6)]
    async with running_usage(env), _ui(env) as ui:
        for ev in events:
            await _publish(env.js, ev)
        await _wait_caught_up(env.js)

        hist = (await ui.get("/api/usage/history", params={"provider": provider, "bucket_s": 86400,
                                                             "group_by": "model", "top": 1, "order_by": "cost"})).json()
        assert [t["model"] for t in hist["totals"]] == ["m1"] and hist["source"] == "usage_minute"
        errors = (await ui.get("/api/usage/history", params={"provider": provider, "status": "error",
                                                               "bucket_s": 86400})).json()
        assert sum(r["requests"] for r in errors["rows"]) == 1
        page = (await ui.get("/api/requests", params={"provider": provider, "limit": 4})).json()
        assert len(page["rows"]) == 4 and page["next_cursor"]
        rest = (await ui.get("/api/requests", params={"provider": provider, "cursor": page["next_cursor"]})).json()
        assert [r["id"] for r in page["rows"] + rest["rows"]] == [ev.id for ev in reversed(events)]
        assert rest["next_cursor"] is None
        failed = (await ui.get("/api/requests", params={"provider": provider, "status": "error"})).json()
        assert [r["status"] for r in failed["rows"]] == [500]
        assert (await ui.get("/api/usage/current")).status_code == 200

        for path, params in [
            ("/api/usage/history", {"bucket_s": 5}), ("/api/usage/history", {"group_by": "colour"}),
            ("/api/usage/history", {"top": 0}), ("/api/usage/history", {"since": "not a date"}),
            ("/api/usage/history", {"since": "2025-01-02T00:00:00Z", "until": "2025-01-01T00:00:00Z"}),
            ("/api/usage/history", {"status": "meh"}), ("/api/usage/history", {"providr": "x"}),
            ("/api/requests", {"cursor": "%%%"}), ("/api/requests", {"limit": "many"}),
            ("/api/requests", {"status": "teapot"}), ("/api/requests", {"limit": 10_000}),
        ]:
            resp = await ui.get(path, params=params)
            assert resp.status_code == 400, (path, params, resp.text)
            assert resp.json()["error"]["message"] and "Traceback" not in resp.text

        # simulate is off unless the usage service runs with LLMGW_DEV_SIMULATE=1
        resp = await ui.post("/api/dev/simulate", json={"count": 3})
        assert resp.status_code == 403 and "LLMGW_DEV_SIMULATE=1" in resp.json()["error"]["message"]
        assert (await ui.post("/api/dev/simulate", content=b"{oops")).status_code == 400


async def test_dev_simulate_publishes_synthetic_events(env):
    provider = _uniq("sim")
    env_settings = env.settings()
    env_settings.dev_simulate = True
    stop = asyncio.Event()
    from llmgw_usage.main import serve

    task = asyncio.create_task(serve(env_settings, _config(), stop))
    try:
        from test_usage_service import _wait_ready

        await _wait_ready(env.nc, task)
        async with _ui(env) as ui:
            resp = await ui.post("/api/dev/simulate", json={"count": 50, "providers": [provider, f"{provider}-free"],
                                                            "spread_s": 120, "seed": 1, "error_rate": 0.2})
            assert resp.status_code == 200, resp.text
            assert resp.json()["published"] == 50
            bad = await ui.post("/api/dev/simulate", json={"count": 0})
            assert bad.status_code == 400 and "count" in bad.json()["error"]["message"]
        await _wait_caught_up(env.js)
        reply = await request(env.nc, subjects.USAGE_SIMULATE, UsageSimulate(count=1, providers=[provider]),
                              UsageSimulated, timeout=10)
        assert reply.published == 1
        await _wait_caught_up(env.js)
        hist = await _history(env.nc, bucket_s=86400, group_by=["provider"])
        by_provider = {r.provider: r for r in hist.rows}
        assert by_provider[provider].requests + by_provider[f"{provider}-free"].requests == 51
        assert by_provider[f"{provider}-free"].cost_usd == 0
        log = await _requests(env.nc, provider=provider, limit=1)
        assert log.rows[0].route_reason == "simulated" and log.rows[0].request_id.startswith("sim-")
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)


def test_bench_ingest_runs_and_writes_its_section(tmp_path, capsys):
    """A small run of `python -m llmgw_bench ingest`: its own servers, the real consumer, the checks, the results
    file."""
    from llmgw_bench.__main__ import main

    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- bench:results:start -->\nHTTP\n<!-- bench:results:end -->\n")
    thresholds = gc.get_threshold()
    assert main(["ingest", "--events", "300", "--batch-size", "100", "--runs", "2", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert "run 2: ingested 300 events" in captured.out and "median of 2:" in captured.out
    assert captured.err.count("verified: 300 events once") == 2
    doc = out.read_text()
    assert "HTTP" in doc and "| 2 | 300 | 100 / 0.5s |" in doc and doc.count("bench-ingest:results:start") == 1
    assert gc.get_threshold() == thresholds and not gc.get_freeze_count()  # the collector as it was


def test_cli_parser_knows_the_commands():
    parser = build_parser()
    args = parser.parse_args(["replay", "--since", "2h", "--target", "redis", "--dry-run"])
    assert (args.since, args.target, args.dry_run) == ("2h", "redis", True)
    args = parser.parse_args(["events", "import", "f.ndjson"])
    assert args.file == "f.ndjson"
    with pytest.raises(SystemExit):
        parser.parse_args(["replay", "--target", "postgres"])
