"""Usage service, pure parts: ClickHouse JSON rows, bucket math, Lua arguments, query building. No servers."""

from __future__ import annotations

import base64
import io
import functools
import json
import operator
import types
import typing
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import msgspec
import pytest

from fake_secrets import fake_key
from llmgw_common.ids import id_time_ms
from llmgw_usage.progress import Progress
from llmgw_common import redis_keys
from ulid import ULID
from llmgw_common.messages import COUNT_TOKENS_ENDPOINT, Attempt, Reservation, UsageEvent, UsageHistoryQuery, UsageRequestsQuery, UsageSimulate
from llmgw_common.windows import SCOPES_KEY, SEEN_PREFIX, SEEN_SET_PREFIX, SEEN_TTL_S, WINDOWS, seen_set, model_scope, provider_scope
from llmgw_usage import domain, queries
from llmgw_usage.domain import body_rows, cap_body
from llmgw_usage.ingest import decode_row
from llmgw_usage.replay import parse_when
from llmgw_usage.consumer import consumer_config, max_ack_pending_for
from llmgw_usage.schema import load_migrations, split_statements
from llmgw_usage.simulate import synthetic_events

T0 = datetime(2025, 3, 14, 15, 9, 26, 535000, tzinfo=timezone.utc)
T0_S = int(T0.timestamp())


def _event(**kw) -> UsageEvent:
    base = dict(id="01JTESTEVENT0000000000000A", ts=T0, request_id="req-1", provider="groq", model="llama",
                upstream_model="llama-3.1-8b", tokens_in=120, tokens_out=30, tokens_cached=20,
                tokens_cache_write=40, tokens_reasoning=12, cost_usd=Decimal("0.000123456"), latency_ms=250.5, ttft_ms=80.0, status=200)
    base.update(kw)
    return UsageEvent(**base)


# ---- rows -------------------------------------------------------------------

def _line(ev: UsageEvent) -> dict:
    return json.loads(domain.event_line(ev))


def test_event_line_holds_the_stored_fields():
    ev = _event(attempts=[Attempt(provider="a", upstream_model="m", status=503, error="upstream 503", latency_ms=10),
                          Attempt(provider="groq", upstream_model="llama-3.1-8b", status=200, latency_ms=240)],
                key_id="key-7", route_reason="free first", stream=True, request_body="secret prompt")
    row = _line(ev)
    assert set(row) == domain.ROW_FIELDS  # bodies and the reservation are not usage_events columns
    assert row["id"] == ev.id and row["request_id"] == "req-1"
    assert datetime.fromisoformat(row["ts"].replace("Z", "+00:00")) == T0
    assert row["provider"] == "groq" and row["model"] == "llama" and row["upstream_model"] == "llama-3.1-8b"
    assert row["key_id"] == "key-7" and row["stream"] is True
    assert (row["tokens_in"], row["tokens_out"], row["tokens_cached"]) == (120, 30, 20)
    assert (row["tokens_cache_write"], row["tokens_reasoning"]) == (40, 12)
    assert Decimal(row["cost_usd"]) == Decimal("0.000123456")
    assert row["ttft_ms"] == 80.0 and row["status"] == 200 and row["error"] is None
    assert row["attempts"][0] == {"provider": "a", "upstream_model": "m", "status": 503, "error": "upstream 503",
                                  "latency_ms": 10.0, "retries": 0}
    assert row["route_reason"] == "free first" and row["schema_version"] == 1


def test_event_line_naive_timestamp_is_utc_and_values_are_clamped():
    ev = _event(ts=datetime(2025, 1, 1, 12, 0, 0), tokens_in=-5, cost_usd=Decimal("1e12"), status=70000,
                schema_version=-1, tokens_cache_write=-3, tokens_reasoning=2**64)
    row = _line(ev)
    assert row["schema_version"] == 0
    assert row["tokens_cache_write"] == 0 and row["tokens_reasoning"] == 2**64 - 1
    assert datetime.fromisoformat(row["ts"].replace("Z", "+00:00")) == datetime(2025, 1, 1, 12, tzinfo=timezone.utc)
    assert row["tokens_in"] == 0 and row["status"] == 65535
    assert Decimal(row["cost_usd"]) == domain.COST_MAX


def test_event_line_converts_other_timezones():
    cet = timezone(timedelta(hours=1))
    row = _line(_event(ts=datetime(2025, 1, 1, 13, 0, tzinfo=cet)))
    assert datetime.fromisoformat(row["ts"].replace("Z", "+00:00")) == datetime(2025, 1, 1, 12, tzinfo=timezone.utc)


def test_ingest_event_is_usage_event_field_for_field():
    """IngestEvent decodes every UsageEvent field, same names, same types (nested: Attempt's, Reservation's)."""
    nested = {domain.IngestReservation: Reservation, domain.IngestAttempt: Attempt}

    def same(struct, model):
        hints = typing.get_type_hints(struct)
        assert set(hints) == set(model.model_fields), struct
        for name, hint in hints.items():
            expected = model.model_fields[name].annotation
            for mine, theirs in nested.items():
                hint = _swap(hint, mine, theirs)
            assert hint == expected, (struct, name)

    same(domain.IngestEvent, UsageEvent)
    for mine, theirs in nested.items():
        same(mine, theirs)


def _swap(hint, mine, theirs):
    args = typing.get_args(hint)
    if hint is mine:
        return theirs
    if not args:
        return hint
    swapped = tuple(_swap(a, mine, theirs) for a in args)
    origin = typing.get_origin(hint)
    if origin is types.UnionType:
        return functools.reduce(operator.or_, swapped)
    return origin[swapped]


def test_ingest_event_decodes_what_usage_event_decodes():
    ev = _event(reservation=Reservation(provider="p", model="m", at_s=5, tokens_in=1, tokens_out=2, cost_nano=3),
                request_body="hi")
    ev.attempts = [Attempt(provider="p", upstream_model="u", status=429, error="busy", latency_ms=1.5, retries=2)]
    ing = domain.decode_ingest(ev.encode())
    assert msgspec.to_builtins(ing) == json.loads(ev.encode())


@pytest.mark.parametrize("change", [{"tokens_in": "5"}, {"status": 200.0}, {"id": None}, {"cost_usd": [1]},
                                    {"endpoint": 5}, {"stream": "yes"}, {"attempts": [{"provider": "p"}]},
                                    {"insert_token": "x"}, {"some_future_field": 1}])
def test_ingest_decode_is_strict_so_odd_events_take_the_usage_event_way(change):
    data = json.dumps({**json.loads(_event().encode()), **change}).encode()
    with pytest.raises(ValueError):
        domain.decode_ingest(data)


@pytest.mark.parametrize("change, passes", [
    ({}, True),
    ({"tokens_in": -1}, False),
    ({"tokens_cache_write": -1}, False),
    ({"tokens_reasoning": 2**64}, False),
    ({"tokens_cache_write": 2**64 - 1, "tokens_reasoning": 0}, True),
    ({"status": 70000}, False),
    ({"schema_version": -1}, False),  # ClickHouse refuses it: normalized (clamped) instead
    ({"cost_usd": Decimal("0.0000000001")}, False),  # more decimals than Decimal(18, 9) keeps
    ({"cost_usd": Decimal("1E-7")}, True),
    ({"cost_usd": Decimal("1e10")}, False),
])
def test_raw_line_only_for_values_clickhouse_stores_as_they_are(change, passes):
    data = _event(**change).encode()
    ev = domain.decode_ingest(data)
    assert (domain.raw_line(ev, data) == data) is passes


def test_an_event_from_before_the_cache_write_and_reasoning_counters_still_ingests():
    """An event without tokens_cache_write / tokens_reasoning (an older edge) decodes strictly, goes to
    ClickHouse as it is (the columns default to 0) and reads back as 0 in both decoders."""
    old = json.loads(_event().encode())
    del old["tokens_cache_write"], old["tokens_reasoning"]
    data = json.dumps(old).encode()
    ev = domain.decode_ingest(data)
    assert (ev.tokens_cache_write, ev.tokens_reasoning) == (0, 0)
    assert domain.raw_line(ev, data) == data
    pyd = UsageEvent.decode(data)
    assert (pyd.tokens_cache_write, pyd.tokens_reasoning) == (0, 0)
    assert (_line(pyd)["tokens_cache_write"], _line(pyd)["tokens_reasoning"]) == (0, 0)
    row = decode_row(data)
    assert row.line == data and row.event.tokens_cached == 20


def test_raw_line_refuses_what_would_break_the_insert_token():
    data = _event().encode()
    ev = domain.decode_ingest(data)
    assert domain.raw_line(ev, data) == data
    assert domain.raw_line(ev, b" " + data) is None  # the store adds the token right after the brace


@pytest.mark.parametrize("extra", [b'"insert_token": "x"', b'"insert\\u005ftoken": "x"', b'"a_newer_field": 1'])
def test_an_event_with_a_key_it_does_not_know_is_stored_normalized(extra):
    data = _event().encode()[:-1] + b", " + extra + b"}"
    row = decode_row(data)
    assert row.line != data and b"insert" not in row.line and b"newer" not in row.line
    assert row.id == json.loads(data)["id"] and row.event.tokens_in == json.loads(data)["tokens_in"]


def test_cost_nano_matches_clamp_cost():
    for cost in ("0", "0.000123456", "1E-7", "0.0000000015", "-2", "1e12", "NaN", "999999999.999999999"):
        assert domain.cost_nano(Decimal(cost)) == int(domain.clamp_cost(Decimal(cost)) * 1_000_000_000), cost


@pytest.mark.parametrize("cost, expected", [
    (Decimal("0.0000000014"), Decimal("0.000000001")),
    (Decimal("0.0000000015"), Decimal("0.000000002")),
    (Decimal("-2"), Decimal("-2.000000000")),
    (Decimal("NaN"), Decimal("0")),
])
def test_clamp_cost(cost, expected):
    assert domain.clamp_cost(cost) == expected


def test_dedupe_keeps_first_of_each_id():
    a, b = _event(id="A"), _event(id="B")
    assert [e.id for e in domain.dedupe([a, b, _event(id="A", tokens_in=1)])] == ["A", "B"]
    assert domain.dedupe([a, b, a])[0] is a


# ---- windows ----------------------------------------------------------------

@pytest.mark.parametrize("ts, bucket, start", [(0, 5, 0), (4, 5, 0), (5, 5, 5), (1_700_000_123, 60, 1_700_000_100),
                                               (1_700_000_123, 900, 1_700_000_100), (1_700_000_999, 900, 1_700_000_100)])
def test_bucket_start(ts, bucket, start):
    assert domain.bucket_start(ts, bucket) == start
    assert start % bucket == 0 and 0 <= ts - start < bucket


def test_window_updates_for_a_fresh_event():
    ev = _event()
    updates = domain.window_updates(ev, now_s=T0_S + 1)
    assert len(updates) == 2 * len(WINDOWS)
    keys = {u.key for u in updates}
    for scope in (provider_scope("groq"), model_scope("groq", "llama")):
        for w in WINDOWS:
            start = T0_S - T0_S % w.bucket_s
            assert f"{redis_keys.WINDOW_PREFIX}{scope}:{w.bucket_s}:{start}" in keys
    by_key = {u.key: u for u in updates}
    minute = by_key[f"{redis_keys.WINDOW_PREFIX}p:groq:5:{T0_S - T0_S % 5}"]
    assert minute.expire_at == T0_S - T0_S % 5 + 60 + 5
    assert (minute.tokens_in, minute.tokens_out, minute.cost_nano) == (120, 30, 123_456)


def test_window_updates_skip_expired_buckets():
    ev = _event()
    # two hours later: the minute and hour buckets can no longer count, the day bucket still does
    updates = domain.window_updates(ev, now_s=T0_S + 7200)
    assert {u.key.split(":")[-2] for u in updates} == {"900"}
    # two days later: nothing
    assert domain.window_updates(ev, now_s=T0_S + 2 * 86400) == []
    # exactly at the expiry moment the bucket is skipped; one second before it is kept
    start = T0_S - T0_S % 5
    assert any(u.key.endswith(f":5:{start}") for u in domain.window_updates(ev, now_s=start + 64))
    assert not any(u.key.endswith(f":5:{start}") for u in domain.window_updates(ev, now_s=start + 65))


def test_events_nobody_served_touch_no_window():
    ev = _event(provider=None, status=503)
    assert domain.event_scopes(ev) == ()
    assert domain.window_updates(ev, T0_S) == []
    assert domain.window_script_args([ev], T0_S) is None


def test_a_count_tokens_call_counts_in_no_window_unless_it_was_reserved():
    # planned, never admitted: no request, no tokens in any window; it is still a row of the request log
    counted = _event(endpoint=COUNT_TOKENS_ENDPOINT, tokens_out=0)
    assert domain.window_updates(counted, T0_S + 1) == []
    assert domain.window_script_args([counted], T0_S + 1) is None
    # one an older edge had admitted settles its reservation like any other
    reserved = _event(endpoint=COUNT_TOKENS_ENDPOINT, reservation=Reservation(
        provider="groq", model="llama", at_s=T0_S, tokens_in=120, tokens_out=4096, cost_nano=0))
    assert domain.window_updates(reserved, T0_S + 1)


def test_window_script_args_group_events_that_share_buckets():
    a, b = _event(id="A"), _event(id="B", provider="openai", model="gpt")
    c = _event(id="C", ts=T0 + timedelta(seconds=1))  # same scopes and 5 s bucket (:25-:29) as A
    args = domain.window_script_args([a, b, c], now_s=T0_S + 2)
    assert args[:3] == [SEEN_TTL_S, SCOPES_KEY, SEEN_PREFIX]
    groups, seen_sets, flat = json.loads(args[3]), json.loads(args[4]), json.loads(args[5])
    assert [g[1] for g in groups] == [["p:groq", "m:groq/llama"], ["p:openai", "m:openai/gpt"]]
    for buckets, _scopes in groups:
        assert len(buckets) == 12 and all(k.startswith(redis_keys.WINDOW_PREFIX) for k in buckets[::2])
        assert all(isinstance(at, int) for at in buckets[1::2])
    events = [flat[j: j + 7] for j in range(0, len(flat), 7)]
    # ids that are not ULIDs: no seen set (0), each is remembered under a key of its own
    assert seen_sets == [] and [e[:3] for e in events] == [["A", 0, 1], ["B", 0, 2], ["C", 0, 1]]
    assert events[0][3:] == [1, 120, 30, 123_456]


def test_ulid_events_share_the_seen_set_of_their_ids_minute():
    made_ms = T0_S * 1000 - 1  # the ids' minute, whatever the events' own times
    ids = [str(ULID.from_timestamp(made_ms / 1000)) for _ in range(3)]
    assert all(id_time_ms(i) == made_ms for i in ids) and id_time_ms("A") is None
    events = [_event(id=i, ts=T0 + timedelta(seconds=k * 61)) for k, i in enumerate(ids)]
    args = domain.window_script_args(events, now_s=T0_S + 200)
    seen_sets, flat = json.loads(args[4]), json.loads(args[5])
    minute = (made_ms // 1000) - (made_ms // 1000) % 60
    # kept SEEN_TTL_S past the later of its minute's end and now (an event applied late)
    assert seen_sets == [[f"{SEEN_SET_PREFIX}{minute}", T0_S + 200 + SEEN_TTL_S]]
    assert [flat[j + 1] for j in range(0, len(flat), 7)] == [1, 1, 1]
    assert seen_set(made_ms, T0_S - 3600) == (f"{SEEN_SET_PREFIX}{minute}", minute + 60 + SEEN_TTL_S)


def test_current_from_totals():
    totals = {
        "p:groq": {"minute": {"req": 2, "tin": 10, "tout": 5, "cost": 1_500_000_000},
                   "hour": {"req": 3, "tin": 11, "tout": 6, "cost": 1}, "day": {"req": 3, "tin": 11, "tout": 6, "cost": 1}},
        "m:groq/llama/3": {"minute": {"req": 1, "tin": 1, "tout": 1, "cost": 0}},
    }
    cur = domain.current_from_totals(totals, at=T0)
    assert [s.scope for s in cur.scopes] == ["model", "provider"]
    model, prov = cur.scopes
    assert (model.provider, model.model) == ("groq", "llama/3")
    assert prov.provider == "groq" and prov.model is None
    assert prov.windows["minute"].requests == 2 and prov.windows["minute"].cost_usd == Decimal("1.5")
    assert prov.windows["hour"].cost_usd == Decimal("0.000000001")
    assert cur.at == T0


# ---- history and request log queries (queries.py) -------------------------

def test_history_plan_uses_the_rollup_when_it_gives_the_same_answer():
    since = datetime(2025, 1, 1, tzinfo=timezone.utc)
    plan = queries.history_plan(UsageHistoryQuery(since=since, until=since + timedelta(hours=1), bucket_s=300))
    assert plan.source == "usage_minute"
    sql, params = plan.rows_sql()
    assert "FROM usage_minute " in sql and "sum(requests)" in sql and "FINAL" not in sql
    assert params["since_ms"] == int(since.timestamp() * 1000) and params["bucket_s"] == 300
    # raw events when the rollup cannot answer exactly: status filter, unaligned range, odd buckets
    for q in (UsageHistoryQuery(status_class="error"), UsageHistoryQuery(since=since + timedelta(seconds=1)),
              UsageHistoryQuery(until=since + timedelta(milliseconds=5)), UsageHistoryQuery(bucket_s=90)):
        plan = queries.history_plan(q)
        assert plan.source == "usage_events" and "usage_events FINAL" in plan.rows_sql()[0], q
    assert "status >= 400" in queries.history_plan(UsageHistoryQuery(status_class="error")).rows_sql()[0]
    assert "status < 400" in queries.history_plan(UsageHistoryQuery(status_class="ok")).rows_sql()[0]


def test_history_plan_binds_values_and_ranks_top_groups():
    q = UsageHistoryQuery(provider="groq", model="llama'; DROP TABLE x", key_id="k", group_by=["model"], top=3,
                          order_by="cost", limit=5)
    plan = queries.history_plan(q)
    sql, params = plan.rows_sql()
    assert "DROP" not in sql and "DROP" not in plan.top_sql  # values travel as bound parameters
    assert params["model"].startswith("llama'") and params["provider"] == "groq" and params["key_id"] == "k"
    assert "(model) IN (SELECT model FROM usage_minute" in sql and "ORDER BY sum(cost_usd) DESC" in sql
    assert "LIMIT 3)" in sql and "LIMIT 5" in sql
    assert "toString(model) AS g_model" in sql and "g_provider" not in sql
    assert plan.top_sql.endswith("LIMIT 3 OFFSET 0") and "GROUP BY model" in plan.top_sql
    with pytest.raises(queries.QueryError):
        queries.history_plan(UsageHistoryQuery(since=T0, until=T0))


def test_history_rows_fill_missing_dimensions():
    plan = queries.history_plan(UsageHistoryQuery(group_by=["model"]))
    rows = queries.history_rows([(1_700_000_100, "llama", 3, 1, 30, 12, "0.000000123", 4, 1, 99.5, 6, 5)], plan)
    r = rows[0]
    assert r.bucket == datetime.fromtimestamp(1_700_000_100, tz=timezone.utc)
    assert (r.provider, r.model, r.key_id, r.requests, r.errors, r.tokens_in, r.tokens_out) == (
        "", "llama", "", 3, 1, 30, 12)
    assert (r.cost_usd, r.tokens_cached, r.free_requests, r.latency_ms_sum) == (Decimal("0.000000123"), 4, 1, 99.5)
    assert (r.tokens_cache_write, r.tokens_reasoning) == (6, 5)
    sql = plan.rows_sql()[0]
    assert "sum(tokens_cache_write)" in sql and "sum(tokens_reasoning)" in sql
    raw = queries.history_plan(UsageHistoryQuery(group_by=["model"], status_class="ok"))
    assert raw.source == "usage_events" and "sum(tokens_cache_write)" in raw.rows_sql()[0]


def test_existing_ids_sql_carries_ids_as_one_base64_literal():
    evs = [domain.event_row(_event(id="a'b", ts=T0)), domain.event_row(_event(id="x", ts=T0 + timedelta(hours=1)))]
    sql = queries.existing_ids_sql(evs)
    assert "a'b" not in sql and "base64Decode('" in sql
    literal = sql.split("base64Decode('")[1].split("'")[0]
    assert json.loads(base64.b64decode(literal)) == ["a'b", "x"]
    assert f"toInt64({int(T0.timestamp() * 1000) - 1000})" in sql


def test_request_rows_carry_every_token_counter():
    sql, _ = queries.requests_sql(UsageRequestsQuery())
    assert "tokens_cached, tokens_cache_write, tokens_reasoning, toString(cost_usd)" in sql
    raw = (T0, "id1", "req-1", "chat.completions", "k", "p", "m", "u", True, 200, None, 1, 12.5, None, "", 0,
           1000, 300, 200, 500, 120, "0.00123", [("p", "u", 200, None, 12.0, 0)])
    rows, cursor = queries.request_rows([raw], 10, {}, False)
    r = rows[0]
    assert r.requests == 1
    assert (r.tokens_in, r.tokens_out, r.tokens_cached, r.tokens_cache_write, r.tokens_reasoning) == (
        1000, 300, 200, 500, 120)
    assert r.cost_usd == Decimal("0.00123") and r.attempts[0].provider == "p" and cursor is None


def test_request_cursor_round_trip_and_rejects_garbage():
    cursor = queries.encode_cursor(T0, "01JEVENT")
    assert queries.decode_cursor(cursor) == (int(T0.timestamp() * 1000), "01JEVENT")
    for bad in ("%%%", "bm9jb2xvbg", queries.encode_cursor(T0, "x")[:-3] + "!!!"):
        with pytest.raises(queries.QueryError):
            queries.decode_cursor(bad)
    sql, params = queries.requests_sql(UsageRequestsQuery(cursor=cursor, provider="p", status=502, limit=10))
    assert "(ts, id) < (" in sql and "ORDER BY ts DESC, id DESC LIMIT 11" in sql
    assert params["cursor_id"] == "01JEVENT" and params["status"] == 502 and params["provider"] == "p"


# ---- bodies, simulate, replay helpers -----------------------------------------

def test_bodies_are_redacted_and_capped():
    key = fake_key()
    text, cut = cap_body(f"key: Authorization: Bearer {key} ok")
    assert key not in text and "[REDACTED]" in text and not cut
    text, cut = cap_body("é" * 10, cap=5)  # never cut inside a character
    assert cut and text == "éé"
    assert cap_body(None) == ("", False)
    rows = body_rows([_event(), _event(id="b", request_body="x", response_body=None)])
    assert rows == [[T0, "b", "x", "", False]]


def test_synthetic_events_are_marked_and_reproducible():
    q = UsageSimulate(count=20, providers=["p-free", "p"], seed=3, error_rate=0.3, spread_s=60)
    a, b = synthetic_events(q, T0), synthetic_events(q, T0)
    assert [(e.provider, e.tokens_in, e.status, e.ts) for e in a] == [(e.provider, e.tokens_in, e.status, e.ts)
                                                                       for e in b]
    assert all(e.route_reason == "simulated" and e.request_id.startswith("sim-") for e in a)
    assert all(e.cost_usd == 0 for e in a if e.provider == "p-free" or e.status >= 400)
    assert all(T0 - timedelta(seconds=60) <= e.ts <= T0 for e in a)


def test_parse_when():
    now = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
    assert parse_when("2h", now) == now - timedelta(hours=2)
    assert parse_when("90s", now) == now - timedelta(seconds=90)
    assert parse_when("1w", now) == now - timedelta(days=7)
    assert parse_when("2025-01-31", now) == datetime(2025, 1, 31, tzinfo=timezone.utc)
    assert parse_when("2025-01-31T12:00:00Z", now) == datetime(2025, 1, 31, 12, tzinfo=timezone.utc)
    assert parse_when("2025-01-31T13:00:00+01:00", now) == datetime(2025, 1, 31, 12, tzinfo=timezone.utc)
    for bad in ("yesterday", "h2", "", "2025-13-01"):
        with pytest.raises(ValueError, match="not a time"):
            parse_when(bad, now)


def test_import_line_validation_reasons():
    from llmgw_usage.subcommands import validate_line

    assert validate_line(_event().encode())[0].id == _event().id
    assert validate_line(b"{oops")[1] == "<body>: Invalid JSON: key must be a string at line 1 column 2"
    assert validate_line(b'{"request_id": "r", "model": "m"}')[1] == "status: Field required"
    assert "out of range" in validate_line(_event(ts=datetime(1, 1, 1, tzinfo=timezone.utc)).encode())[1]
    # without an id (or time) of its own an event would get a new one at every decode: counted again
    no_id = json.loads(_event().encode())
    del no_id["id"], no_id["ts"]
    assert validate_line(json.dumps(no_id).encode())[1] == "no id and ts: an event needs its own id and time (its dedup key)"
    del no_id["request_id"]
    assert validate_line(json.dumps(no_id).encode())[1] == "request_id: Field required"


def test_progress_lines_without_a_terminal():
    out, now = io.StringIO(), [0.0]
    p = Progress("replay", total=200, stream=out, interval_s=5.0, clock=lambda: now[0])
    now[0] = 1.0
    p.update(50)  # the first update draws
    now[0] = 2.0
    p.update(100)  # within the interval: nothing
    now[0] = 10.0
    p.finish(200)
    assert out.getvalue().splitlines() == ["replay: 50/200 ( 25.0%)  50/s  1.0s", "replay: 200/200 (100.0%)  20/s  10.0s"]


def test_bench_ingest_results_go_into_their_own_section():
    from llmgw_bench import ingest as bench_ingest

    doc = "# Benchmarks\n\nintro\n<!-- bench:results:start -->\nHTTP\n<!-- bench:results:end -->\n"

    def result(ingest_s: float, consumer_cpu_s: float):
        return bench_ingest.IngestResult(events=1000, publish_s=1.0, ingest_s=ingest_s, batch_size=100,
                                         batch_wait_s=0.2, batches=10, load_before="0.1",
                                         cpu_s={"consumer": consumer_cpu_s, "nats-server": 0.05})

    runs = [result(0.5, 0.25), result(0.25, 0.2), result(1.0, 0.5)]  # 2,000, 4,000 and 1,000 events/s
    assert bench_ingest.median_run(runs) is runs[0]
    assert bench_ingest.median_run(runs[:2]) is runs[0]  # the lower middle of an even count
    once = bench_ingest.replace_section(doc, bench_ingest.results_section(runs, T0))
    assert once.startswith(doc.rstrip("\n")) and "## Usage ingest" in once
    assert "**median 2,000 events/s** (range 1,000 to 4,000)" in once
    assert "| **4,000** |" in once and "| 3 | 1,000 |" in once
    assert "consumer 0.2s (250 µs/event), nats-server 0.1s (50 µs/event)" in once  # of the median run
    twice = bench_ingest.replace_section(once, bench_ingest.results_section(runs, T0))
    assert twice == once and twice.count(bench_ingest.SECTION_START) == 1


# ---- schema and consumer config ---------------------------------------------

def test_split_statements():
    sql = "-- comment\nCREATE TABLE a\n(\n  x UInt8\n)\nENGINE = Memory;\n\nALTER TABLE a ADD COLUMN y UInt8;\nSELECT 1"
    assert split_statements(sql) == ["CREATE TABLE a\n(\n  x UInt8\n)\nENGINE = Memory",
                                     "ALTER TABLE a ADD COLUMN y UInt8", "SELECT 1"]


def test_bundled_migrations_are_numbered_in_order():
    migs = load_migrations()
    assert [m.version for m in migs] == list(range(1, len(migs) + 1))
    assert migs[0].name == "usage_events"
    ddl = migs[0].statements()[0]
    for needle in ("ReplacingMergeTree", "PARTITION BY toYYYYMM(ts)", "Decimal(18, 9)", "DateTime64(3, 'UTC')",
                   "attempts_count  UInt8", "ttft_ms         Nullable(Float64)", "LowCardinality(String)"):
        assert needle in ddl


def test_load_migrations_rejects_duplicate_versions(tmp_path):
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 2;")
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.raises(ValueError, match="0001"):
        load_migrations(tmp_path)


def test_load_migrations_sorts_by_version(tmp_path):
    (tmp_path / "0010_later.sql").write_text("SELECT 10;")
    (tmp_path / "0002_sooner.sql").write_text("SELECT 2;")
    assert [(m.version, m.name) for m in load_migrations(tmp_path)] == [(2, "sooner"), (10, "later")]


def test_consumer_config_is_durable_explicit_ack_and_bounded():
    cfg = consumer_config(1000)
    assert cfg.durable_name == cfg.name == "usage-projector"
    assert cfg.ack_policy.value == "explicit" and cfg.ack_wait == 30.0
    assert cfg.filter_subject == "llmgw.usage.event.>"
    assert max_ack_pending_for(1) == 1000
    assert max_ack_pending_for(1000) == 4000
    assert max_ack_pending_for(100_000) == 400_000


def test_future_events_count_now():
    ev = _event(ts=T0 + timedelta(minutes=10))
    keys = {u.key for u in domain.window_updates(ev, now_s=T0_S)}
    assert f"{redis_keys.WINDOW_PREFIX}p:groq:5:{T0_S - T0_S % 5}" in keys


def test_refusal_reason():
    assert domain.refusal(_event()) is None
    assert "out of range" in domain.refusal(_event(ts=datetime(1, 1, 1, tzinfo=timezone.utc))).detail
    assert "out of range" in domain.refusal(_event(ts=datetime(2500, 1, 1, tzinfo=timezone.utc))).detail


def test_reserved_event_adds_only_the_difference_to_the_reservation_buckets():
    from llmgw_common.messages import Reservation

    at = T0_S - 30
    ev = _event(reservation=Reservation(provider="groq", model="llama", at_s=at, tokens_in=100, tokens_out=50,
                                        cost_nano=100_000))
    live = domain.window_updates(ev, now_s=T0_S)
    assert {u.requests for u in live} == {0}  # admission already counted the request
    assert {(u.tokens_in, u.tokens_out, u.cost_nano) for u in live} == {(120 - 100, 30 - 50, 123_456 - 100_000)}
    assert all(u.key.endswith(f":{at - at % 5}") for u in live if ":5:" in u.key)
    rebuilt = domain.window_updates(ev, now_s=T0_S, rebuild=True)
    assert {(u.requests, u.tokens_in, u.tokens_out, u.cost_nano) for u in rebuilt} == {(1, 120, 30, 123_456)}


def test_an_event_from_a_lease_the_keys_without_limits_share_counts_in_full_in_its_key():
    """Its reservation names no key (a shared lease): actual - estimate in the provider's and the model's
    scopes, the full amounts once in the key's own windows and calendar month, at the reservation's time."""
    at = T0_S - 30
    shared = Reservation(provider="groq", model="llama", at_s=at, tokens_in=100, tokens_out=50, cost_nano=100_000,
                         lease="lease-1")
    ev = _event(key_id="key-7", reservation=shared)
    live = domain.window_updates(ev, now_s=T0_S)
    settle = {(u.requests, u.tokens_in, u.tokens_out, u.cost_nano) for u in live if ":k:" not in u.key}
    assert settle == {(0, 120 - 100, 30 - 50, 123_456 - 100_000)}
    keyed = [u for u in live if ":k:" in u.key]
    assert {(u.requests, u.tokens_in, u.tokens_out, u.cost_nano) for u in keyed} == {(1, 120, 30, 123_456)}
    assert len(keyed) == len(WINDOWS) + 1 and any(":k:key-7:month:" in u.key for u in keyed)  # + its month
    assert all(u.key.endswith(f":{at - at % 5}") for u in keyed if ":5:" in u.key)
    args = domain.window_script_args([ev], now_s=T0_S)
    groups, leased, key_parts = json.loads(args[3]), json.loads(args[7]), json.loads(args[8])
    assert key_parts == [ev.id, 1, 120, 30, 123_456] and groups[0][1] == ["k:key-7"]
    # a reaped lease's event counts in full where the lease reserved (the provider and the model); the key
    # counts it above, whatever the lease's state: not twice
    assert leased[:5] == [ev.id, 1, "lease-1", 2, 3] and groups[2][1] == ["p:groq", "m:groq/llama"]
    # rebuilt from the log: the full amounts once in every scope, the key's included
    rebuilt = domain.window_updates(ev, now_s=T0_S, rebuild=True)
    assert sum(1 for u in rebuilt if ":k:key-7:" in u.key) == len(WINDOWS) + 1
    assert {(u.requests, u.tokens_in) for u in rebuilt} == {(1, 120)}
    assert json.loads(domain.window_script_args([ev], now_s=T0_S, rebuild=True)[8]) == []


def test_an_event_whose_reservation_holds_its_key_adds_nothing_more_to_the_key():
    for lease in (None, "lease-2"):  # admitted per request, or from a lease of its own key (a key with limits)
        ev = _event(key_id="key-8", reservation=Reservation(provider="groq", model="llama", at_s=T0_S,
                                                            tokens_in=100, tokens_out=50, cost_nano=0,
                                                            key_id="key-8", lease=lease))
        assert domain.key_amounts(ev, T0_S) is None
        assert json.loads(domain.window_script_args([ev], now_s=T0_S)[8]) == []
        assert {u.requests for u in domain.window_updates(ev, now_s=T0_S)} == {0}
    assert domain.key_amounts(_event(key_id="key-8"), T0_S) is None  # no reservation: counted in full anyway
    assert domain.key_amounts(_event(reservation=Reservation(provider="groq", model="llama", at_s=T0_S, tokens_in=1,
                                                                    tokens_out=1, cost_nano=0)),
                              T0_S) is None  # no key


# ---- refused or normalized (the table in domain's module doc) ------------------------------

def _with(**change) -> bytes:
    return json.dumps({**json.loads(_event().encode()), **change}).encode()


@pytest.mark.parametrize("change, code", [
    ({"status": 10**30}, "out_of_range"),
    ({"status": 1000}, "out_of_range"),
    ({"status": -1}, "out_of_range"),
    ({"tokens_in": -5}, "out_of_range"),
    ({"tokens_out": 10**9 + 1}, "out_of_range"),
    ({"tokens_reasoning": 2**64}, "out_of_range"),
    ({"cost_usd": "-0.01"}, "out_of_range"),
    ({"cost_usd": "1000000.000000001"}, "out_of_range"),
    ({"cost_usd": "NaN"}, "out_of_range"),
    ({"latency_ms": -1.0}, "out_of_range"),
    ({"latency_ms": 1e12}, "out_of_range"),
    ({"ttft_ms": -0.5}, "out_of_range"),
    ({"schema_version": 70000}, "out_of_range"),
    ({"model": "m" * 257}, "too_long"),
    ({"id": "i" * 257}, "too_long"),
    ({"key_id": "k" * 300}, "too_long"),
    ({"id": ""}, "no_key"),
    ({"attempts": [{"provider": "p", "upstream_model": "u", "status": 200, "latency_ms": 1}] * 65}, "too_long"),
    ({"attempts": [{"provider": "p", "upstream_model": "u", "status": 99999, "latency_ms": 1}]}, "out_of_range"),
    ({"attempts": [{"provider": "p" * 300, "upstream_model": "u", "status": 200, "latency_ms": 1}]}, "too_long"),
    ({"reservation": {"provider": "p", "model": "m", "at_s": 5, "tokens_in": -1, "tokens_out": 0,
                      "cost_nano": 0}}, "out_of_range"),
    ({"ts": "0001-01-01T00:00:00Z"}, "timestamp"),
])
def test_refused_events_say_why(change, code):
    """Whichever decoder takes the message (strict msgspec or pydantic), the same refusal."""
    data = _with(**change)
    try:
        ev = domain.decode_ingest(data)
    except ValueError:
        ev = UsageEvent.decode(data)
    refusal = domain.refusal(ev)
    assert refusal is not None and refusal.code == code, (change, refusal)
    assert len(refusal.detail) < 300
    try:  # the consumer's path (decode_row, then refusal) refuses it the same way
        row = decode_row(data)
    except ValueError:
        return
    assert domain.refusal(row.event, row.ts_s).code == code


@pytest.mark.parametrize("change", [
    {}, {"status": 0}, {"status": 999}, {"tokens_in": 10**9}, {"cost_usd": "1000000"}, {"model": "m" * 256},
    {"latency_ms": 0.0}, {"ttft_ms": None}, {"error": "e" * 100_000}, {"route_reason": "r" * 5000},
    {"attempts": [{"provider": "p", "upstream_model": "u", "status": 503, "latency_ms": 1, "error": "x" * 5000}] * 64},
])
def test_accepted_events_pass(change):
    assert domain.refusal(UsageEvent.decode(_with(**change))) is None


def test_long_texts_are_cut_not_refused():
    data = _with(error="é" * 5000, route_reason="r" * 4097,
                 attempts=[{"provider": "p", "upstream_model": "u", "status": 503, "latency_ms": 1, "error": "x" * 2000}])
    ev = domain.decode_ingest(data)
    assert domain.raw_line(ev, data) is None  # cut first: not stored as sent
    row = decode_row(data)
    line = json.loads(row.line)
    assert len(line["error"]) == domain.MAX_ERROR_CHARS and line["error"].endswith(domain.CUT_MARK)
    assert len(line["route_reason"]) == domain.MAX_ERROR_CHARS
    assert len(line["attempts"][0]["error"]) == domain.MAX_ATTEMPT_ERROR_CHARS
    short = _event(error="short", route_reason="fine").encode()
    assert domain.raw_line(domain.decode_ingest(short), short) == short


def test_size_refusal():
    assert domain.size_refusal(domain.MAX_EVENT_BYTES) is None
    refused = domain.size_refusal(900 * 1024)
    assert refused.code == "too_large" and "921600 bytes" in refused.detail


def test_replay_decode_refuses_what_the_consumer_refuses():
    from llmgw_usage.replay import decode

    assert decode(_with(status=10**30))[0] is None
    assert decode(b'{"x": "' + b"a" * (domain.MAX_EVENT_BYTES + 1) + b'"}')[1].startswith("message of")
    assert decode(_with(error="e" * 10_000))[0] is not None  # normalized later, not refused


def test_dead_letter_keeps_the_original_or_an_excerpt():
    from llmgw_usage import deadletter

    class Meta:
        class sequence:
            stream = 42

    class Msg:
        subject = "llmgw.usage.event.p"
        metadata = Meta

        def __init__(self, data):
            self.data = data

    subject, body, headers = deadletter.dead_letter(Msg(b"{bad"), domain.Refusal("invalid", "not JSON\r\nat all"))
    assert subject == "llmgw.usage.dead.invalid" and body == b"{bad"
    assert headers["Llmgw-Stream-Seq"] == "42" and headers["Llmgw-Size"] == "4"
    assert headers["Llmgw-Detail"] == "not JSON??at all" and headers["Nats-Msg-Id"].startswith("42:")
    big = b"x" * (900 * 1024)
    _, body, headers = deadletter.dead_letter(Msg(big), domain.size_refusal(len(big)))
    assert len(body) == deadletter.EXCERPT_BYTES and headers["Llmgw-Size"] == str(len(big))


# ---- replies cut to one NATS message ----------------------------------------------------------

def _log_row(i: int, **kw):
    from llmgw_common.messages import RequestLogRow

    base = dict(id=f"id{i:04d}", ts=T0 - timedelta(seconds=i), request_id="r", endpoint="chat", key_id="",
                provider="p", model="m", upstream_model="u", stream=False, status=200, latency_ms=1.0,
                route_reason="", retries=0, tokens_in=1, tokens_out=1, tokens_cached=0, cost_usd=Decimal(0))
    base.update(kw)
    return RequestLogRow(**base)


def test_reply_budget_leaves_headroom():
    assert queries.reply_budget(None) == queries.reply_budget(1024 * 1024) == 1024 * 1024 - 16 * 1024
    assert queries.reply_budget(64 * 1024) == 64 * 1024 - 8 * 1024
    assert queries.reply_budget(10) == 1024


def test_page_requests_cuts_by_bytes_and_points_after_the_last_row_kept():
    rows = [_log_row(i, route_reason="r" * 4000) for i in range(10)]
    size = queries.json_size(rows[0])
    kept, cursor = queries.page_requests(rows, "next-of-the-store", size * 3 + 10)
    assert len(kept) == 3 and queries.decode_cursor(cursor) == (int(rows[2].ts.timestamp() * 1000), rows[2].id)
    assert queries.page_requests(rows, "next-of-the-store", size * 10 + 10) == (rows, "next-of-the-store")
    # a row that does not fit alone still goes, shortened (and says so)
    huge = _log_row(0, error="e" * 5000, request_body="b" * 20000,
                    attempts=[Attempt(provider="p", upstream_model="u", status=500, latency_ms=1, error="x" * 900)] * 20)
    kept, cursor = queries.page_requests([huge, rows[1]], None, 4096)
    assert len(kept) == 1 and kept[0].truncated and kept[0].request_body is None and len(kept[0].attempts) == 8
    assert queries.json_size(kept[0]) < 4096 and cursor is not None


def test_history_cursor_round_trip_and_garbage():
    c = queries.HistoryCursor(None, [1700000000, "p", "m"], 12)
    assert queries.decode_history_cursor(queries.encode_history_cursor(c), ["provider", "model"]) == c
    assert queries.decode_history_cursor(None, []) == queries.HistoryCursor()
    for bad in ("%%%", queries.encode_history_cursor(c)[:-3], queries.encode_history_cursor(c)):
        with pytest.raises(queries.QueryError):
            queries.decode_history_cursor(bad, ["provider"])  # the last: another group_by


def test_history_pages_totals_first_then_rows_after_a_key():
    from llmgw_common.messages import HistoryRow

    def hrow(i: int) -> HistoryRow:
        return HistoryRow(bucket=T0.replace(microsecond=0) + timedelta(minutes=i), provider="p", model=f"m{i}",
                          requests=i, errors=0, tokens_in=0, tokens_out=0, cost_usd=Decimal(0))

    plan = queries.history_plan(UsageHistoryQuery(limit=50))
    rows, totals = [hrow(i) for i in range(20)], [hrow(i) for i in range(5)]
    size = queries.json_size(rows[0])
    r, t, cursor = queries.page_history(rows, totals, plan, size * 3)
    assert (r, t) == ([], totals[:3]) and queries.decode_history_cursor(cursor, plan.dims).totals_offset == 3
    r, t, cursor = queries.page_history(rows, totals, plan, size * 8)
    assert t == totals and r == rows[:3]
    nxt = queries.decode_history_cursor(cursor, plan.dims)
    assert nxt == queries.HistoryCursor(None, [int(rows[2].bucket.timestamp()), "p", "m2"], 3)
    plan2 = queries.history_plan(UsageHistoryQuery(limit=50, cursor=cursor))
    sql, params = plan2.rows_sql()
    assert "> ({c_bucket:Int64}, {c_provider:String}, {c_model:String})" in sql and "LIMIT 47" in sql
    assert (params["c_bucket"], params["c_model"]) == (int(rows[2].bucket.timestamp()), "m2")
    assert not plan2.totals_wanted
    assert queries.page_history(rows, [], plan2, size * 100) == (rows, [], None)


def test_history_cursor_of_the_longest_names_fits_its_bound():
    from llmgw_common.messages import UsageHistoryQuery as Q

    name = "ü€𝄞" * (domain.MAX_ID_CHARS // 3)
    c = queries.HistoryCursor(None, [1700000000, name, name, name], 99_999)
    text = queries.encode_history_cursor(c)
    assert Q(cursor=text, group_by=["provider", "model", "key_id"]).cursor == text
    assert queries.decode_history_cursor(text, ["provider", "model", "key_id"]) == c
