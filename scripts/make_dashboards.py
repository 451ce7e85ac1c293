#!/usr/bin/env python3
"""Generate the Grafana dashboards in ``dashboards/`` (provisioned by ``deploy/grafana/provisioning``).

The dashboards are data, kept here as Python so every panel shares one
datasource reference, one set of filters and one grid layout; the JSON files
are the build output and are committed (Grafana reads them as they are).
``tests/unit/test_dashboards.py`` checks the files match this script and runs every
panel's SQL against ClickHouse.

    .venv/bin/python scripts/make_dashboards.py          # rewrite dashboards/*.json
    .venv/bin/python scripts/make_dashboards.py --check  # exit 1 when a file is stale

Tables (ClickHouse, database from the datasource's default database):

- ``usage_events``: one row per request; a ReplacingMergeTree deduplicated by
  event id, so it is always read with ``FINAL``.
- ``usage_minute``: the per-minute rollup (provider, model, key_id); summed,
  never read row by row, so it is cheap for long time ranges.

Filters: the ``provider``, ``model`` and ``key`` variables (multi-value, "All");
an empty provider (nobody served the request) and an empty key show as ``(none)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "dashboards"

DATASOURCE_UID = "llmgw-clickhouse"
DATASOURCE_TYPE = "grafana-clickhouse-datasource"
DS = {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}
PLUGIN_VERSION = "4.0.0"  # query model of plugin v4 (editorType / queryType / format)
FORMAT_TIMESERIES, FORMAT_TABLE = 0, 1

PROVIDER = "if(provider = '', '(none)', provider)"
KEY = "if(key_id = '', '(none)', key_id)"
FILTERS = (f"$__conditionalAll({PROVIDER} IN (${{provider:singlequote}}), $provider)"
           " AND $__conditionalAll(model IN (${model:singlequote}), $model)"
           f" AND $__conditionalAll({KEY} IN (${{key:singlequote}}), $key)")
ROLLUP_WHERE = f"$__timeFilter(minute) AND {FILTERS}"
EVENTS_WHERE = f"$__timeFilter(ts) AND {FILTERS}"
# rollup buckets are never finer than its minute
ROLLUP_TIME = "toStartOfInterval(minute, INTERVAL greatest($__interval_s, 60) second)"
EVENTS_TIME = "$__timeInterval(ts)"
SERVED = "provider != '' AND status < 400"
RETRIES = "arraySum(arrayMap(a -> JSONExtractUInt(a, 'retries'), JSONExtractArrayRaw(attempts)))"


@dataclass
class Query:
    sql: str
    columns: list[str]  # what the query must return, in order (checked by the tests)
    table: str  # "usage_minute" or "usage_events"
    timeseries: bool = True
    ref: str = "A"


@dataclass
class Panel:
    title: str
    kind: str  # timeseries | stat | table | piechart
    queries: list[Query]
    w: int
    h: int
    description: str = ""
    unit: str = "short"
    series_label: str | None = None  # label column naming each series (long -> wide)
    stacked: bool = False
    bars: bool = False
    decimals: int | None = None
    extra_defaults: dict = field(default_factory=dict)


def q_rollup(select: str, columns: list[str], group: str = "", order: str = "", ts: bool = True,
             limit: str = "", ref: str = "A", having: str = "") -> Query:
    # aliases must not reuse a column name (sum(requests) AS requests would shadow the column it sums)
    sql = f"SELECT {select}\nFROM usage_minute\nWHERE {ROLLUP_WHERE}"
    return Query(_tail(sql, group, order, limit, having), columns, "usage_minute", ts, ref)


def q_events(select: str, columns: list[str], where: str = "", group: str = "", order: str = "", ts: bool = True,
             limit: str = "", ref: str = "A", array_join: str = "") -> Query:
    sql = f"SELECT {select}\nFROM usage_events FINAL{array_join}\nWHERE {EVENTS_WHERE}"
    if where:
        sql += f" AND {where}"
    return Query(_tail(sql, group, order, limit), columns, "usage_events", ts, ref)


def _tail(sql: str, group: str, order: str, limit: str, having: str = "") -> str:
    if group:
        sql += f"\nGROUP BY {group}"
    if having:
        sql += f"\nHAVING {having}"
    if order:
        sql += f"\nORDER BY {order}"
    if limit:
        sql += f"\nLIMIT {limit}"
    return sql


# ---- the dashboards ----------------------------------------------------------------

def usage_dashboard() -> tuple[dict, list[list[Panel]]]:
    meta = {"uid": "llmgw-usage", "title": "LLM Gateway · Usage & cost",
            "description": "Cost, tokens, requests, errors and free-tier share by provider, model and API key."}
    rows = [
        [
            Panel("Cost", "stat", [q_rollup("toFloat64(sum(cost_usd)) AS cost", ["cost"], ts=False)],
                  4, 4, "Marginal cost in the time range (flat-rate fees are reported by GET /api/pricing).",
                  unit="currencyUSD", decimals=4),
            Panel("Requests", "stat", [q_rollup("sum(requests) AS request_count", ["request_count"], ts=False)], 4, 4),
            Panel("Tokens", "stat", [q_rollup("sum(tokens_in) + sum(tokens_out) AS tokens", ["tokens"], ts=False)],
                  4, 4, "Input plus output tokens."),
            Panel("Error rate", "stat", [q_rollup("sum(errors) / greatest(sum(requests), 1) AS error_rate",
                                                  ["error_rate"], ts=False)], 4, 4, unit="percentunit", decimals=2),
            Panel("Requests served free", "stat", [q_rollup(
                "sum(free_requests) / greatest(sum(requests), 1) AS free_share", ["free_share"], ts=False)],
                4, 4, "Share of requests that cost nothing (free tiers, free models, flat-rate plans).",
                unit="percentunit", decimals=1),
            Panel("Tokens served free", "stat", [q_events(
                "sumIf(tokens_in + tokens_out, cost_usd = 0) / greatest(sum(tokens_in + tokens_out), 1)"
                " AS free_token_share", ["free_token_share"], where=SERVED, ts=False)],
                4, 4, "Share of the tokens of served requests that cost nothing.", unit="percentunit", decimals=1),
        ],
        [
            Panel("Cost by provider", "timeseries", [q_rollup(
                f"{ROLLUP_TIME} AS time, {PROVIDER} AS provider_name, toFloat64(sum(cost_usd)) AS cost",
                ["time", "provider_name", "cost"], "time, provider_name", "time")],
                12, 8, unit="currencyUSD", series_label="provider_name", stacked=True, bars=True),
            Panel("Cost by model", "timeseries", [q_rollup(
                f"{ROLLUP_TIME} AS time, model AS model_name, toFloat64(sum(cost_usd)) AS cost",
                ["time", "model_name", "cost"], "time, model_name", "time")],
                12, 8, unit="currencyUSD", series_label="model_name", stacked=True, bars=True),
        ],
        [
            Panel("Cost by API key", "timeseries", [q_rollup(
                f"{ROLLUP_TIME} AS time, {KEY} AS key_name, toFloat64(sum(cost_usd)) AS cost",
                ["time", "key_name", "cost"], "time, key_name", "time")],
                12, 8, unit="currencyUSD", series_label="key_name", stacked=True, bars=True),
            Panel("Tokens over time", "timeseries", [q_rollup(
                f"{ROLLUP_TIME} AS time, sum(tokens_in) AS input_tokens, sum(tokens_out) AS output_tokens,"
                " sum(tokens_cached) AS cached_tokens",
                ["time", "input_tokens", "output_tokens", "cached_tokens"], "time", "time")],
                12, 8, "Input tokens include the cached ones.", unit="short"),
        ],
        [
            Panel("Requests by provider", "timeseries", [q_rollup(
                f"{ROLLUP_TIME} AS time, {PROVIDER} AS provider_name, sum(requests) AS request_count",
                ["time", "provider_name", "request_count"], "time, provider_name", "time")],
                12, 8, unit="short", series_label="provider_name", stacked=True),
            Panel("Error rate by provider", "timeseries", [q_rollup(
                f"{ROLLUP_TIME} AS time, {PROVIDER} AS provider_name,"
                " sum(errors) / greatest(sum(requests), 1) AS error_rate",
                ["time", "provider_name", "error_rate"], "time, provider_name", "time")],
                12, 8, "Requests that ended in an error for the client, per provider that last handled them.",
                unit="percentunit", series_label="provider_name"),
        ],
        [
            Panel("Share served free", "timeseries", [
                q_rollup(f"{ROLLUP_TIME} AS time, sum(free_requests) / greatest(sum(requests), 1) AS requests_free",
                         ["time", "requests_free"], "time", "time", ref="A"),
                q_events(f"{EVENTS_TIME} AS time, sumIf(tokens_in + tokens_out, cost_usd = 0)"
                         " / greatest(sum(tokens_in + tokens_out), 1) AS tokens_free",
                         ["time", "tokens_free"], where=SERVED, group="time", order="time", ref="B"),
            ], 12, 8, "Requests (rollup) and tokens (served requests) that cost nothing.", unit="percentunit",
                extra_defaults={"max": 1, "min": 0}),
            Panel("Top models", "table", [q_rollup(
                "model, sum(requests) AS request_count, sum(tokens_in) AS input_tokens, sum(tokens_out) AS output_tokens,"
                " toFloat64(sum(cost_usd)) AS cost, sum(free_requests) / greatest(sum(requests), 1) AS free_share,"
                " sum(errors) / greatest(sum(requests), 1) AS error_rate,"
                " sum(latency_ms_sum) / greatest(sum(requests), 1) AS mean_latency_ms",
                ["model", "request_count", "input_tokens", "output_tokens", "cost", "free_share", "error_rate",
                 "mean_latency_ms"], "model", "request_count DESC, model", ts=False, limit="25")],
                12, 8, "The busiest models in the time range."),
        ],
        [
            Panel("Top API keys", "table", [q_rollup(
                f"{KEY} AS key_name, sum(requests) AS request_count, sum(tokens_in) AS input_tokens,"
                " sum(tokens_out) AS output_tokens, toFloat64(sum(cost_usd)) AS cost,"
                " sum(errors) / greatest(sum(requests), 1) AS error_rate",
                ["key_name", "request_count", "input_tokens", "output_tokens", "cost", "error_rate"], "key_name",
                "cost DESC, request_count DESC, key_name", ts=False, limit="25")],
                12, 8, "Gateway API keys by spend in the time range ((none): requests made without a key)."),
            Panel("Requests by API key", "timeseries", [q_rollup(
                f"{ROLLUP_TIME} AS time, {KEY} AS key_name, sum(requests) AS request_count",
                ["time", "key_name", "request_count"], "time, key_name", "time")],
                12, 8, unit="short", series_label="key_name", stacked=True),
        ],
        [
            Panel("Prompt caching by provider and model", "table", [q_rollup(
                f"{PROVIDER} AS provider_name, model, sum(tokens_in) AS input_tokens,"
                " sum(tokens_cached) AS cached_tokens,"
                " sum(tokens_cached) / greatest(sum(tokens_in), 1) AS cache_hit_rate,"
                " toFloat64(sum(cache_saved_usd)) AS saved, toFloat64(sum(cost_usd)) AS cost",
                ["provider_name", "model", "input_tokens", "cached_tokens", "cache_hit_rate", "saved", "cost"],
                "provider_name, model", "saved DESC, cached_tokens DESC, provider_name, model", ts=False,
                limit="50", having="sum(tokens_in) > 0")],
                24, 8, "Cache hit rate: the share of input tokens read from the provider's prompt cache. Saved: "
                "those reads at the input price minus at the cache-read price, as each request was priced "
                "(requests stored before the gateway recorded it count 0)."),
        ],
    ]
    return meta, rows


def performance_dashboard() -> tuple[dict, list[list[Panel]]]:
    meta = {"uid": "llmgw-performance", "title": "LLM Gateway · Latency & reliability",
            "description": "Latency percentiles, time to first token, retries, failovers and errors."}
    rows = [
        [
            Panel("Latency p95", "stat", [q_events("quantile(0.95)(latency_ms) AS p95_ms", ["p95_ms"], where=SERVED,
                                                   ts=False)], 6, 4, "Whole request, served requests.", unit="ms"),
            Panel("Time to first token p95", "stat", [q_events(
                "quantile(0.95)(ttft_ms) AS ttft_p95_ms", ["ttft_p95_ms"],
                where=f"{SERVED} AND stream AND ttft_ms IS NOT NULL", ts=False)], 6, 4, "Streamed requests.", unit="ms"),
            Panel("Retries", "stat", [q_events(f"sum({RETRIES}) AS retries", ["retries"], ts=False)], 6, 4,
                  "Extra tries on the same provider (5xx, timeouts, connection errors)."),
            Panel("Requests that failed over", "stat", [q_events(
                "countIf(attempts_count > 1) AS failed_over", ["failed_over"], ts=False)], 6, 4,
                "Requests that needed more than one provider."),
        ],
        [
            Panel("Latency percentiles", "timeseries", [q_events(
                f"{EVENTS_TIME} AS time, quantile(0.5)(latency_ms) AS p50, quantile(0.95)(latency_ms) AS p95,"
                " quantile(0.99)(latency_ms) AS p99", ["time", "p50", "p95", "p99"],
                where=SERVED, group="time", order="time")], 12, 8, "Whole request, served requests.", unit="ms"),
            Panel("Time to first token percentiles", "timeseries", [q_events(
                f"{EVENTS_TIME} AS time, quantile(0.5)(ttft_ms) AS p50, quantile(0.95)(ttft_ms) AS p95,"
                " quantile(0.99)(ttft_ms) AS p99", ["time", "p50", "p95", "p99"],
                where=f"{SERVED} AND stream AND ttft_ms IS NOT NULL", group="time", order="time")],
                12, 8, "Streamed requests.", unit="ms"),
        ],
        [
            Panel("Latency p95 by provider", "timeseries", [q_events(
                f"{EVENTS_TIME} AS time, {PROVIDER} AS provider_name, quantile(0.95)(latency_ms) AS p95",
                ["time", "provider_name", "p95"], where=SERVED, group="time, provider_name", order="time")],
                8, 8, "Whole request, served requests.", unit="ms", series_label="provider_name"),
            Panel("Mean latency by provider", "timeseries", [q_rollup(
                f"{ROLLUP_TIME} AS time, {PROVIDER} AS provider_name,"
                " sum(latency_ms_sum) / greatest(sum(requests), 1) AS mean_ms",
                ["time", "provider_name", "mean_ms"], "time, provider_name", "time")],
                8, 8, "From the per-minute rollup: cheap over long ranges.", unit="ms", series_label="provider_name"),
            Panel("Mean time to first token by provider", "timeseries", [q_rollup(
                f"{ROLLUP_TIME} AS time, {PROVIDER} AS provider_name,"
                " sum(ttft_ms_sum) / sum(ttft_count) AS mean_ttft_ms",
                ["time", "provider_name", "mean_ttft_ms"], "time, provider_name", "time", having="sum(ttft_count) > 0")],
                8, 8, "From the per-minute rollup, over the requests that reported one.", unit="ms",
                series_label="provider_name"),
        ],
        [
            Panel("Retries and failovers", "timeseries", [q_events(
                f"{EVENTS_TIME} AS time, sum({RETRIES}) AS retries,"
                " sum(greatest(toInt64(attempts_count) - 1, 0)) AS failovers,"
                " countIf(attempts_count > 1) AS failed_over_requests",
                ["time", "retries", "failovers", "failed_over_requests"], group="time", order="time")],
                12, 8, "Retries: extra tries on one provider. Failovers: moves to the next provider.", bars=True),
            Panel("Error rate by provider", "timeseries", [q_rollup(
                f"{ROLLUP_TIME} AS time, {PROVIDER} AS provider_name,"
                " sum(errors) / greatest(sum(requests), 1) AS error_rate",
                ["time", "provider_name", "error_rate"], "time, provider_name", "time")],
                12, 8, unit="percentunit", series_label="provider_name"),
        ],
        [
            Panel("Failed upstream attempts", "table", [q_events(
                "JSONExtractString(attempt, 'provider') AS attempt_provider,"
                " JSONExtractUInt(attempt, 'status') AS upstream_status, count() AS failed_attempts,"
                " any(JSONExtractString(attempt, 'error')) AS example_error",
                ["attempt_provider", "upstream_status", "failed_attempts", "example_error"],
                where="(upstream_status = 0 OR upstream_status >= 400)",
                group="attempt_provider, upstream_status", order="failed_attempts DESC, attempt_provider, upstream_status",
                ts=False, limit="50", array_join="\nARRAY JOIN JSONExtractArrayRaw(attempts) AS attempt")],
                12, 8, "Every failed attempt, also those a failover rescued (status 0: no HTTP answer)."),
            Panel("Errors returned to clients", "table", [q_events(
                f"{PROVIDER} AS provider_name, status, sum(usage_events.requests) AS requests,"
                " any(substring(coalesce(error, ''), 1, 200)) AS example_error",
                ["provider_name", "status", "requests", "example_error"], where="status >= 400",
                group="provider_name, status", order="requests DESC, provider_name, status", ts=False, limit="50")],
                12, 8),
        ],
    ]
    return meta, rows


DASHBOARDS = [usage_dashboard, performance_dashboard]


# ---- JSON ------------------------------------------------------------------------

def variable(name: str, label: str, sql: str) -> dict:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": sql, "definition": sql,
        "multi": True, "includeAll": True, "allValue": None,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "refresh": 2,  # on time range change
        "sort": 1, "hide": 0, "options": [], "regex": "", "skipUrlSync": False,
    }


VARIABLES = [
    variable("provider", "Provider",
             f"SELECT DISTINCT {PROVIDER} AS provider_name FROM usage_minute WHERE $__timeFilter(minute)"
             " ORDER BY provider_name"),
    variable("model", "Model",
             "SELECT DISTINCT model FROM usage_minute WHERE $__timeFilter(minute)"
             f" AND $__conditionalAll({PROVIDER} IN (${{provider:singlequote}}), $provider) ORDER BY model"),
    variable("key", "API key",
             f"SELECT DISTINCT {KEY} AS key_name FROM usage_minute WHERE $__timeFilter(minute) ORDER BY key_name"),
]


def target(q: Query) -> dict:
    return {
        "refId": q.ref, "datasource": DS, "editorType": "sql", "pluginVersion": PLUGIN_VERSION,
        "format": FORMAT_TIMESERIES if q.timeseries else FORMAT_TABLE,
        "queryType": "timeseries" if q.timeseries else "table",
        "rawSql": q.sql,
    }


def panel_json(p: Panel, pid: int, x: int, y: int) -> dict:
    defaults: dict = {"unit": p.unit, **p.extra_defaults}
    if p.decimals is not None:
        defaults["decimals"] = p.decimals
    if p.series_label:
        defaults["displayName"] = f"${{__field.labels.{p.series_label}}}"
    options: dict
    if p.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "bars" if p.bars else "line", "lineWidth": 1, "fillOpacity": 60 if p.bars else 10,
            "showPoints": "never", "spanNulls": False,
            "stacking": {"mode": "normal" if p.stacked else "none", "group": "A"},
        }
        options = {"legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                              # totals make sense for amounts (USD, counts), not for rates or latencies
                              "calcs": ["sum", "mean"] if p.unit in ("currencyUSD", "short") else ["mean", "max"]},
                   "tooltip": {"mode": "multi", "sort": "desc"}}
    elif p.kind == "stat":
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "value", "graphMode": "none", "justifyMode": "auto", "textMode": "auto",
                   "orientation": "auto"}
    else:  # table
        options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"]}}
    out = {
        "id": pid, "type": p.kind, "title": p.title, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": p.w, "h": p.h},
        "targets": [target(q) for q in p.queries],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
    }
    if p.description:
        out["description"] = p.description
    return out


def build(fn) -> dict:
    meta, rows = fn()
    panels, y, pid = [], 0, 1
    for row in rows:
        x = 0
        for p in row:
            if x + p.w > 24:
                raise ValueError(f"{meta['uid']}: row starting with {row[0].title!r} is wider than 24")
            panels.append(panel_json(p, pid, x, y))
            pid += 1
            x += p.w
        y += max(p.h for p in row)
    return {
        "uid": meta["uid"], "title": meta["title"], "description": meta["description"],
        "tags": ["llmgw"], "timezone": "utc", "editable": True, "graphTooltip": 1,
        "schemaVersion": 39, "version": 1, "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["llmgw"], "asDropdown": True, "title": "LLM Gateway"}],
        "templating": {"list": VARIABLES},
        "panels": panels,
    }


def queries_by_panel(fn) -> dict[tuple[int, str], Query]:
    """(panel id, refId) -> Query, in the ids ``build`` gives: what the tests check results against."""
    _, rows = fn()
    out, pid = {}, 1
    for row in rows:
        for p in row:
            for q in p.queries:
                out[(pid, q.ref)] = q
            pid += 1
    return out


def render(fn) -> str:
    return json.dumps(build(fn), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate dashboards/*.json")
    ap.add_argument("--check", action="store_true", help="only check that the files are up to date")
    args = ap.parse_args(argv)
    stale = []
    for fn in DASHBOARDS:
        text = render(fn)
        path = OUT_DIR / f"{build(fn)['uid']}.json"
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    if stale:
        print("stale (run scripts/make_dashboards.py): " + ", ".join(str(p.relative_to(ROOT)) for p in stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
