"""ClickHouse SQL of the usage service's reads, and their answers as messages. Pure: no I/O.

- ``existing_ids_sql``: which ids of a batch ``usage_events`` already holds (the ingest's dedup check).
- ``history_plan`` / ``history_rows``: bucketed totals, from the ``usage_minute`` rollup whenever the
  query allows it (minute-aligned range and buckets, no status filter), else from ``usage_events FINAL``.
- ``stats_sql`` / ``stats_rows``: errors, 429s and latency percentiles per provider and model over a range.
- ``key_days_sql`` / ``key_days``: one key's totals per day of its calendar month (budget time zone).
- ``requests_sql`` / ``request_rows``: one page of the request log with a stable (ts, id) cursor.
- ``fit_count`` / ``page_requests`` / ``page_history``: a reply cut to what one NATS message can carry
  (``reply_budget``: the server's max payload less a headroom), with the cursor of the rest.

Every value travels as a bound parameter; only validated numbers and fixed
column names are written into the SQL text.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Iterable, Protocol, Sequence
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from llmgw_common.messages import (
    Attempt,
    DayTotals,
    HistoryRow,
    RequestLogRow,
    StatsRow,
    UsageHistoryQuery,
    UsageRequestsQuery,
    UsageStatsQuery,
)

from .domain import TABLE, to_utc

ROLLUP = "usage_minute"
REQUEST_LOG = "request_log"
BODIES = "request_bodies"
BODY_COLUMNS = ("ts", "id", "request_body", "response_body", "truncated")
# our inserts are synchronous even where the server defaults to async inserts: the dedup check
# of the next batch must see them
INSERT_SETTINGS = {"async_insert": 0}
# a duplicate always lands in the same monthly partition as its original (same ts)
FINAL_SETTINGS = " SETTINGS do_not_merge_across_partitions_select_final = 1"
DIMENSIONS = ("provider", "model", "key_id")


class QueryError(ValueError):
    """A query that is well-formed but cannot be answered as asked (a 400)."""


def _ms(dt: datetime) -> int:
    return int(to_utc(dt).timestamp() * 1000)


# ---- the ingest's dedup check -------------------------------------------------

class Stamped(Protocol):
    """A row of an event: its id and time (seconds since the epoch) are enough to find it."""

    @property
    def id(self) -> str: ...
    @property
    def ts_s(self) -> float: ...


def _bounds_ms(events: Sequence[Stamped]) -> tuple[int, int]:
    """(earliest, latest) event time in ms, widened by a second for the ms rounding of DateTime64(3)."""
    times = [ev.ts_s for ev in events] or [0.0]
    return int(min(times) * 1000) - 1000, int(max(times) * 1000) + 1000


def existing_ids_sql(events: Sequence[Stamped]) -> str:
    """Ids of ``events`` already in usage_events. The ts bounds (with a second of margin for the
    millisecond rounding of DateTime64(3)) let ClickHouse skip partitions and granules.

    The ids travel as one base64 literal of a JSON array, not as an ``Array(String)``
    parameter: clickhouse-connect escapes parameters character by character in Python,
    which cost more than the query itself (base64 needs no escaping, and ClickHouse
    decodes it in C++). Run it with ``EXISTING_IDS_SETTINGS`` (the literal can be large).
    """
    low, high = _bounds_ms(events)
    ids = base64.b64encode(json.dumps([ev.id for ev in events]).encode()).decode("ascii")
    return (
        f"SELECT id FROM {TABLE}"
        f" WHERE ts >= fromUnixTimestamp64Milli(toInt64({low}), 'UTC')"
        f" AND ts <= fromUnixTimestamp64Milli(toInt64({high}), 'UTC')"
        f" AND id IN (SELECT arrayJoin(JSONExtract(base64Decode('{ids}'), 'Array(String)')))"
    )


EXISTING_IDS_SETTINGS = {"max_query_size": 64 * 1024 * 1024}


def token_rows_sql(token: str, events: Sequence[Stamped]) -> str:
    """How many rows of the insert with ``token`` (hex) usage_events holds; ts bounds prune partitions."""
    if not token.isalnum():
        raise ValueError("insert tokens are hex strings")
    low, high = _bounds_ms(events)
    return (f"SELECT count() FROM {TABLE} WHERE ts >= fromUnixTimestamp64Milli(toInt64({low}), 'UTC')"
            f" AND ts <= fromUnixTimestamp64Milli(toInt64({high}), 'UTC') AND insert_token = '{token}'")


# ---- history ------------------------------------------------------------------

# (rollup expression, raw expression) of every metric, in HistoryRow order after the dimensions.
# Aliases differ from column names: in ClickHouse an alias named like a column shadows it everywhere.
# Raw events count requests as sum(requests): one event may stand for several refused requests.
_METRICS = (
    ("sum(requests)", "sum(requests)"),
    ("sum(errors)", "sumIf(requests, status >= 400)"),
    ("sum(tokens_in)", "sum(tokens_in)"),
    ("sum(tokens_out)", "sum(tokens_out)"),
    ("toString(sum(cost_usd))", "toString(sum(cost_usd))"),
    ("sum(tokens_cached)", "sum(tokens_cached)"),
    ("sum(free_requests)", "sumIf(requests, cost_usd = 0 AND status < 400)"),
    ("sum(latency_ms_sum)", "sum(latency_ms)"),
    ("sum(tokens_cache_write)", "sum(tokens_cache_write)"),
    ("sum(tokens_reasoning)", "sum(tokens_reasoning)"),
)
_ORDER = {
    "requests": ("sum(requests)", "sum(requests)"),
    "errors": ("sum(errors)", "sumIf(requests, status >= 400)"),
    "tokens": ("sum(tokens_in) + sum(tokens_out)", "sum(tokens_in) + sum(tokens_out)"),
    "cost": ("sum(cost_usd)", "sum(cost_usd)"),
}


def _aligned(dt: datetime | None) -> bool:
    return dt is None or _ms(dt) % 60_000 == 0


@dataclass
class HistoryCursor:
    """Where a history answer goes on. The totals come first, by offset (they are ranked by a metric that
    moves while events arrive), then the rows, after the key (bucket, dimensions...) of the last one sent."""

    totals_offset: int | None = 0  # totals phase: the next totals row; None: rows phase
    key: list | None = None  # rows phase: (bucket epoch seconds, dimension values...) of the last row sent
    sent: int = 0  # rows sent on earlier pages (the query's limit is over all pages)


def encode_history_cursor(c: HistoryCursor) -> str:
    raw = json.dumps({"t": c.totals_offset, "k": c.key, "n": c.sent}, separators=(",", ":"),
                     ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_history_cursor(cursor: str | None, dims: Sequence[str]) -> HistoryCursor:
    if not cursor:
        return HistoryCursor()
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        t, k, n = data["t"], data["k"], data["n"]
        ok = isinstance(n, int) and n >= 0 and (
            (isinstance(t, int) and t >= 0 and k is None)
            or (t is None and (k is None or (isinstance(k, list) and len(k) == 1 + len(dims)
                                             and isinstance(k[0], int) and all(isinstance(v, str) for v in k[1:])))))
        if not ok:
            raise ValueError
        return HistoryCursor(t, k, n)
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise QueryError("invalid cursor (pass next_cursor of the previous page as it is, with the same "
                         "group_by)") from None


@dataclass
class HistoryPlan:
    source: str  # ROLLUP or TABLE
    dims: list[str]
    where: str
    params: dict[str, Any]
    bucket_expr: str
    limit: int
    order_expr: str
    top: int | None
    top_sql: str | None = None
    metrics: list[str] = field(default_factory=list)
    cursor: HistoryCursor = field(default_factory=HistoryCursor)
    tcol: str = "ts"

    @property
    def totals_wanted(self) -> bool:
        return self.cursor.totals_offset is not None

    def _from(self) -> str:
        return f"{self.source} FINAL" if self.source == TABLE else self.source

    def _settings(self) -> str:
        return FINAL_SETTINGS if self.source == TABLE else ""

    def _in_top(self) -> str:
        """Restricts to the top groups (a subquery: no tuple parameters needed)."""
        dims = ", ".join(self.dims)
        return (f"({dims}) IN (SELECT {dims} FROM {self._from()} {self.where} GROUP BY {dims}"
                f" ORDER BY {self.order_expr} DESC, {dims} LIMIT {int(self.top)})")

    def rows_sql(self) -> tuple[str, dict[str, Any]]:
        """The rows of this page: after the cursor's key, up to what the limit leaves."""
        where = self.where
        params = dict(self.params)
        if self.top is not None and self.dims:
            where = (where + " AND " if where else "WHERE ") + self._in_top()
        key = self.cursor.key if self.cursor.totals_offset is None else None
        if key is not None:
            # groups after the last one sent; the time bound only lets ClickHouse skip parts
            names = ["c_bucket"] + [f"c_{d}" for d in self.dims]
            left = ", ".join([f"toInt64({self.bucket_expr})", *self.dims])
            right = ", ".join(["{c_bucket:Int64}"] + [f"{{c_{d}:String}}" for d in self.dims])
            where = (where + " AND " if where else "WHERE ") + (
                f"({left}) > ({right}) AND {self.tcol} >= fromUnixTimestamp64Milli(toInt64({{c_bucket_ms:Int64}}), 'UTC')")
            params.update(zip(names, key))
            params["c_bucket_ms"] = int(key[0]) * 1000
        left_over = max(0, int(self.limit) - self.cursor.sent if self.cursor.totals_offset is None else int(self.limit))
        group = ", ".join(["bucket", *self.dims])
        select_dims = "".join(f", toString({d}) AS g_{d}" for d in self.dims)
        sql = (f"SELECT {self.bucket_expr} AS bucket{select_dims}, " + ", ".join(
            f"{m} AS m{i}" for i, m in enumerate(self.metrics))
            + f" FROM {self._from()} {where} GROUP BY {group} ORDER BY {group} LIMIT {left_over}"
            + self._settings())
        return sql, params


def history_plan(q: UsageHistoryQuery) -> HistoryPlan:
    """How to answer a history query: rollup when it gives the same answer as the raw events."""
    since, until = q.since, q.until
    if since is not None and until is not None and to_utc(until) <= to_utc(since):
        raise QueryError("until must be after since")
    dims = [d for d in DIMENSIONS if d in q.group_by]
    cursor = decode_history_cursor(q.cursor, dims)
    rollup = q.status_class is None and q.bucket_s % 60 == 0 and _aligned(since) and _aligned(until)
    source = ROLLUP if rollup else TABLE
    tcol = "minute" if rollup else "ts"
    col = 0 if rollup else 1
    where: list[str] = []
    params: dict[str, Any] = {"bucket_s": int(q.bucket_s)}
    if since is not None:
        where.append(f"{tcol} >= fromUnixTimestamp64Milli(toInt64({{since_ms:Int64}}), 'UTC')")
        params["since_ms"] = _ms(since)
    if until is not None:
        where.append(f"{tcol} < fromUnixTimestamp64Milli(toInt64({{until_ms:Int64}}), 'UTC')")
        params["until_ms"] = _ms(until)
    for name in DIMENSIONS:
        value = getattr(q, name)
        if value is not None:
            where.append(f"{name} = {{{name}:String}}")
            params[name] = value
    if q.status_class == "ok":
        where.append("status < 400")
    elif q.status_class == "error":
        where.append("status >= 400")
    where_sql = ("WHERE " + " AND ".join(where)) if where else ""
    plan = HistoryPlan(
        source=source, dims=dims, where=where_sql, params=params,
        bucket_expr=f"toUnixTimestamp(toStartOfInterval({tcol}, toIntervalSecond({{bucket_s:UInt32}})))",
        limit=q.limit, order_expr=_ORDER[q.order_by][col], top=q.top,
        metrics=[m[col] for m in _METRICS], cursor=cursor, tcol=tcol,
    )
    # totals per group over the whole range: ranked by order_by (the top N when asked)
    group = ", ".join(dims)
    select_dims = "".join(f", toString({d}) AS g_{d}" for d in dims)
    first_bucket = f"toUnixTimestamp(toStartOfInterval(min({tcol}), toIntervalSecond({{bucket_s:UInt32}})))"
    order = f"{plan.order_expr} DESC" + (f", {group}" if group else "")
    plan.top_sql = (
        f"SELECT {first_bucket} AS first_bucket{select_dims}, "
        + ", ".join(f"{m} AS m{i}" for i, m in enumerate(plan.metrics))
        + f" FROM {plan._from()} {where_sql}" + (f" GROUP BY {group}" if group else "")
        + f" HAVING count() > 0 ORDER BY {order}"
        + f" LIMIT {max(0, int(q.top or q.limit) - (cursor.totals_offset or 0))} OFFSET {cursor.totals_offset or 0}"
        + plan._settings()
    )
    return plan


def history_rows(result_rows: Iterable[Sequence[Any]], plan: HistoryPlan) -> list[HistoryRow]:
    rows: list[HistoryRow] = []
    n = len(plan.dims)
    for r in result_rows:
        bucket = r[0]
        dims = dict(zip(plan.dims, r[1 : 1 + n]))
        req, err, tin, tout, cost, cached, free, lat, cache_write, reasoning = r[1 + n :]
        rows.append(HistoryRow(
            bucket=datetime.fromtimestamp(int(bucket), tz=timezone.utc),
            provider=dims.get("provider", ""), model=dims.get("model", ""), key_id=dims.get("key_id", ""),
            requests=int(req), errors=int(err), tokens_in=int(tin), tokens_out=int(tout),
            cost_usd=Decimal(str(cost)), tokens_cached=int(cached), free_requests=int(free),
            latency_ms_sum=float(lat), tokens_cache_write=int(cache_write), tokens_reasoning=int(reasoning),
        ))
    return rows


# ---- errors and latency per provider and model (the overview beyond the live windows) ------------------

# Both queries group by provider and by (provider, model) at once; grouping(model) = 1 marks a provider's
# own row. Counts come from the rollup; 429s and percentiles need single requests, from the request log
# (no FINAL: the ingest never inserts an event twice, see projection.py, and FINAL would cost a merge).
_STATS_GROUPS = "GROUP BY GROUPING SETS ((provider), (provider, model))"
_STATS_RANGE = ("{t} >= fromUnixTimestamp64Milli(toInt64({{since_ms:Int64}}), 'UTC')"
                " AND {t} < fromUnixTimestamp64Milli(toInt64({{until_ms:Int64}}), 'UTC')")


def stats_range(q: UsageStatsQuery, now: datetime) -> tuple[datetime, datetime]:
    """(since floored to its minute, until or now): the rollup counts whole minutes."""
    since, until = to_utc(q.since), to_utc(q.until or now)
    if until <= since:
        raise QueryError("until must be after since")
    return since.replace(second=0, microsecond=0), until


def stats_sql(since: datetime, until: datetime) -> tuple[str, str, dict[str, Any]]:
    """(rollup counts SQL, request-log 429s and percentiles SQL, their parameters)."""
    params = {"since_ms": _ms(since), "until_ms": _ms(until)}
    counts = (f"SELECT toString(provider), toString(model), grouping(model), sum(requests), sum(errors),"
              f" sum(tokens_in), sum(tokens_cached), toString(sum(cache_saved_usd))"
              f" FROM {ROLLUP} WHERE {_STATS_RANGE.format(t='minute')} {_STATS_GROUPS}")
    ok = "status < 400"
    detail = (f"SELECT toString(provider), toString(model), grouping(model), sumIf(requests, status = 429),"
              f" quantilesIf(0.5, 0.95)(latency_ms, {ok}),"
              f" quantilesIf(0.5, 0.95)(ifNull(ttft_ms, 0), {ok} AND ttft_ms IS NOT NULL)"
              f" FROM {REQUEST_LOG} WHERE {_STATS_RANGE.format(t='ts')} {_STATS_GROUPS}")
    return counts, detail, params


def _quantile(v: Any) -> float | None:
    v = float(v)
    return None if v != v else round(v, 1)  # NaN: no request to take it from


def stats_rows(counts: Iterable[Sequence[Any]], detail: Iterable[Sequence[Any]], limit: int) -> tuple[list[StatsRow], bool]:
    """Rows of both queries joined: each provider (busiest first) followed by its models (busiest first),
    cut to ``limit`` rows; (rows, whether any were left out)."""
    rows: dict[tuple[str, str | None], StatsRow] = {}

    def row(provider: str, model: str, whole: int) -> StatsRow:
        key = (provider, None if whole else model)
        return rows.setdefault(key, StatsRow(provider=provider, model=key[1]))

    for provider, model, whole, requests, errors, tokens_in, cached, saved in counts:
        r = row(provider, model, whole)
        r.requests, r.errors = int(requests), int(errors)
        r.error_rate = round(r.errors / r.requests, 4) if r.requests else 0.0
        r.tokens_in, r.tokens_cached, r.cache_saved_usd = int(tokens_in), int(cached), Decimal(saved)
        r.cache_hit_rate = round(r.tokens_cached / r.tokens_in, 4) if r.tokens_in else 0.0
    for provider, model, whole, limited, latency, ttft in detail:
        r = row(provider, model, whole)
        r.rate_limited = int(limited)
        r.latency_p50_ms, r.latency_p95_ms = (_quantile(v) for v in latency)
        r.ttft_p50_ms, r.ttft_p95_ms = (_quantile(v) for v in ttft)

    def busiest(r: StatsRow) -> tuple:
        return (-r.requests, r.provider, r.model or "")

    ordered: list[StatsRow] = []
    for p in sorted((r for r in rows.values() if r.model is None), key=busiest):
        ordered.append(p)
        ordered += sorted((r for r in rows.values() if r.model is not None and r.provider == p.provider), key=busiest)
    return ordered[:limit], len(ordered) > limit


# ---- a key's spend per day of its calendar month ----------------------------------------------------

def key_days_sql(key_id: str, start_s: int, end_s: int, tz: str) -> tuple[str, dict[str, Any]]:
    """Per-day totals of one key between two epoch seconds (a month in ``tz``), days as dates in ``tz``."""
    return (f"SELECT toDate(minute, {{tz:String}}) AS day, sum(requests), sum(tokens_in), sum(tokens_out),"
            f" toString(sum(cost_usd)) FROM {ROLLUP} WHERE key_id = {{key_id:String}}"
            f" AND minute >= toDateTime({{start_s:Int64}}, 'UTC') AND minute < toDateTime({{end_s:Int64}}, 'UTC')"
            f" GROUP BY day ORDER BY day",
            {"tz": tz, "key_id": key_id, "start_s": int(start_s), "end_s": int(end_s)})


def key_days(result_rows: Iterable[Sequence[Any]], start_s: int, end_s: int, tz: str) -> list[DayTotals]:
    """Every day of the month from ``start_s`` to ``end_s`` (in ``tz``), zeros where nothing was used."""
    zone = ZoneInfo(tz)
    first = datetime.fromtimestamp(start_s, zone).date()
    last = datetime.fromtimestamp(end_s, zone).date()  # the next month's first day
    found = {day: (req, tin, tout, cost) for day, req, tin, tout, cost in result_rows}
    days = []
    for n in range((last - first).days):
        day = first + timedelta(days=n)
        req, tin, tout, cost = found.get(day, (0, 0, 0, "0"))
        days.append(DayTotals(day=day, requests=int(req), tokens_in=int(tin), tokens_out=int(tout),
                              cost_usd=Decimal(str(cost))))
    return days


# ---- request log --------------------------------------------------------------

_REQUEST_COLUMNS = (
    "ts", "id", "request_id", "endpoint", "toString(key_id)", "toString(provider)", "toString(model)",
    "toString(upstream_model)", "stream", "status", "error", "requests", "latency_ms", "ttft_ms", "route_reason", "retries",
    "tokens_in", "tokens_out", "tokens_cached", "tokens_cache_write", "tokens_reasoning", "toString(cost_usd)",
    "attempts",
)


def encode_cursor(ts: datetime, event_id: str) -> str:
    raw = f"{_ms(ts)}:{event_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ms, sep, event_id = raw.partition(":")
        if not sep or not event_id:
            raise ValueError
        return int(ms), event_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise QueryError("invalid cursor (pass next_cursor of the previous page as it is)") from None


def requests_sql(q: UsageRequestsQuery) -> tuple[str, dict[str, Any]]:
    """Newest first; one row more than asked, to know whether there is a next page."""
    if q.since is not None and q.until is not None and to_utc(q.until) <= to_utc(q.since):
        raise QueryError("until must be after since")
    where: list[str] = []
    params: dict[str, Any] = {}
    if q.since is not None:
        where.append("ts >= fromUnixTimestamp64Milli(toInt64({since_ms:Int64}), 'UTC')")
        params["since_ms"] = _ms(q.since)
    if q.until is not None:
        where.append("ts < fromUnixTimestamp64Milli(toInt64({until_ms:Int64}), 'UTC')")
        params["until_ms"] = _ms(q.until)
    for name in ("provider", "model", "key_id", "request_id"):
        value = getattr(q, name)
        if value is not None:
            where.append(f"{name} = {{{name}:String}}")
            params[name] = value
    if q.status is not None:
        where.append("status = {status:UInt16}")
        params["status"] = q.status
    if q.status_class == "ok":
        where.append("status < 400")
    elif q.status_class == "error":
        where.append("status >= 400")
    if q.cursor:
        ms, event_id = decode_cursor(q.cursor)
        where.append("(ts, id) < (fromUnixTimestamp64Milli(toInt64({cursor_ms:Int64}), 'UTC'), {cursor_id:String})")
        params["cursor_ms"], params["cursor_id"] = ms, event_id
    sql = (f"SELECT {', '.join(_REQUEST_COLUMNS)} FROM {REQUEST_LOG} FINAL"
           + (" WHERE " + " AND ".join(where) if where else "")
           + f" ORDER BY ts DESC, id DESC LIMIT {int(q.limit) + 1}" + FINAL_SETTINGS)
    return sql, params


def bodies_sql(ids: Sequence[str], timestamps: Sequence[datetime]) -> tuple[str, dict[str, Any]]:
    ms = [_ms(t) for t in timestamps]
    return (
        f"SELECT id, request_body, response_body FROM {BODIES} FINAL"
        " WHERE ts >= fromUnixTimestamp64Milli(toInt64({lo:Int64}), 'UTC')"
        " AND ts <= fromUnixTimestamp64Milli(toInt64({hi:Int64}), 'UTC') AND id IN {ids:Array(String)}"
        + FINAL_SETTINGS,
        {"lo": min(ms) - 1000, "hi": max(ms) + 1000, "ids": list(ids)},
    )


def _attempt(a: Any) -> Attempt:
    if isinstance(a, dict):
        return Attempt(**a)
    provider, upstream_model, status, error, latency_ms, retries = a
    return Attempt(provider=provider, upstream_model=upstream_model, status=status, error=error,
                   latency_ms=latency_ms, retries=retries)


def request_rows(result_rows: Sequence[Sequence[Any]], limit: int, bodies: dict[str, tuple[str, str]],
                 include_bodies: bool) -> tuple[list[RequestLogRow], str | None]:
    rows: list[RequestLogRow] = []
    for r in result_rows[:limit]:
        (ts, event_id, request_id, endpoint, key_id, provider, model, upstream_model, stream, status, error,
         requests, latency_ms, ttft_ms, route_reason, retries, tin, tout, cached, cache_write, reasoning, cost, attempts) = r
        body = bodies.get(event_id) if include_bodies else None
        rows.append(RequestLogRow(
            id=event_id, ts=to_utc(ts), request_id=request_id, endpoint=endpoint, key_id=key_id, provider=provider,
            model=model, upstream_model=upstream_model, stream=bool(stream), status=int(status), error=error,
            requests=int(requests), latency_ms=float(latency_ms), ttft_ms=None if ttft_ms is None else float(ttft_ms),
            route_reason=route_reason, retries=int(retries), tokens_in=int(tin), tokens_out=int(tout),
            tokens_cached=int(cached), tokens_cache_write=int(cache_write), tokens_reasoning=int(reasoning),
            cost_usd=Decimal(str(cost)), attempts=[_attempt(a) for a in attempts or []],
            request_body=(body[0] or None) if body else None, response_body=(body[1] or None) if body else None,
        ))
    next_cursor = encode_cursor(rows[-1].ts, rows[-1].id) if len(result_rows) > limit and rows else None
    return rows, next_cursor


# ---- replies cut to one NATS message ----------------------------------------------

DEFAULT_MAX_PAYLOAD = 1024 * 1024  # nats-server's default
REPLY_HEADROOM = 16 * 1024  # the reply's other fields, a cursor, the protocol's own bytes


def reply_budget(max_payload: int | None) -> int:
    """Bytes the data-dependent part of one reply may take (its rows)."""
    limit = max_payload or DEFAULT_MAX_PAYLOAD
    return max(1024, limit - min(REPLY_HEADROOM, limit // 8))


def json_size(item: BaseModel) -> int:
    """The item's size in a reply's JSON (a separator included)."""
    return len(item.__pydantic_serializer__.to_json(item)) + 1


def fit_count(items: Sequence[BaseModel], budget: int) -> tuple[int, int]:
    """(how many of ``items``, from the first, fit into ``budget`` bytes; the bytes they take)."""
    used = 0
    for i, item in enumerate(items):
        size = json_size(item)
        if used + size > budget:
            return i, used
        used += size
    return len(items), used


SHRUNK_TEXT_CHARS = 256
SHRUNK_ATTEMPTS = 8


def shrink_request_row(row: RequestLogRow) -> RequestLogRow:
    """A row small enough for any sane max payload: no bodies, texts and attempts shortened."""
    from .domain import cut_text

    attempts = [a.model_copy(update={"error": cut_text(a.error, SHRUNK_TEXT_CHARS)})
                for a in row.attempts[:SHRUNK_ATTEMPTS]]
    return row.model_copy(update={
        "request_body": None, "response_body": None, "error": cut_text(row.error, SHRUNK_TEXT_CHARS),
        "route_reason": cut_text(row.route_reason, SHRUNK_TEXT_CHARS), "attempts": attempts, "truncated": True})


def page_requests(rows: list[RequestLogRow], next_cursor: str | None,
                  budget: int) -> tuple[list[RequestLogRow], str | None]:
    """The rows that fit one reply; when some are left out, the cursor goes on after the last one kept.
    A page always holds a row (shortened when it does not fit alone), so paging always gets on."""
    n, _ = fit_count(rows, budget)
    if n == len(rows):
        return rows, next_cursor
    if n == 0:
        kept = [shrink_request_row(rows[0])]
    else:
        kept = rows[:n]
    return kept, encode_cursor(kept[-1].ts, kept[-1].id)


def _row_key(row: HistoryRow, dims: Sequence[str]) -> list:
    return [int(row.bucket.timestamp()), *(getattr(row, d) for d in dims)]


def page_history(rows: list[HistoryRow], totals: list[HistoryRow], plan: HistoryPlan,
                 budget: int) -> tuple[list[HistoryRow], list[HistoryRow], str | None]:
    """What of a history answer fits one reply: totals first, then rows; the cursor of the rest (None: the
    answer ends here). ``rows``: the plan's rows page; ``totals``: its totals page (empty in the rows phase)."""
    c = plan.cursor
    used = 0
    if c.totals_offset is not None:
        n, used = fit_count(totals, budget)
        if n < len(totals):
            n = max(n, 1)  # a totals row is small: always get on
            return [], totals[:n], encode_history_cursor(HistoryCursor(c.totals_offset + n))
        sent = 0
    else:
        sent = c.sent
    n, _ = fit_count(rows, budget - used)
    if n == len(rows):
        return rows, totals, None
    if n == 0 and c.totals_offset is not None:  # the totals filled this reply: rows from the first on
        return [], totals, encode_history_cursor(HistoryCursor(None, None, 0))
    n = max(n, 1)
    return rows[:n], totals, encode_history_cursor(HistoryCursor(None, _row_key(rows[n - 1], plan.dims), sent + n))
