"""Grafana dashboards: structure, provisioning, and every panel's SQL run against ClickHouse.

ClickHouse is chDB in a temporary directory with the schema the usage service
creates (its own migrations); usage events are inserted as the usage service
inserts them (``domain.event_line``). Grafana's macros are expanded the way
the ClickHouse datasource plugin (v4) expands them: ``$__conditionalAll`` and
template variables in the front end, then ``$__timeFilter``, ``$__timeInterval``,
``$__interval_s``, ``$__fromTime``/``$__toTime`` in the back end.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from llmgw_common.clickhouse_conn import connect_clickhouse
from llmgw_common.messages import Attempt, UsageEvent
from llmgw_usage import domain
from llmgw_usage.schema import apply_migrations

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "dashboards"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_dashboards", ROOT / "scripts" / "make_dashboards.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_dashboards"] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
DS_UID = gen.DATASOURCE_UID
DS_TYPE = gen.DATASOURCE_TYPE


# hand-written, on the Prometheus datasource (the gateway's own health): checked by tests/service/test_metrics.py
PROMETHEUS_DASHBOARDS = {"llmgw-gateway-health.json"}


def _dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARD_DIR.glob("*.json"))
            if p.name not in PROMETHEUS_DASHBOARDS}


DASHBOARDS = _dashboards()


# ---- Grafana macro expansion (as the ClickHouse plugin does it) -------------------

ALL = "$__all"


def _macro_args(sql: str, open_paren: int) -> tuple[list[str], int]:
    """Arguments of a macro call whose '(' is at ``open_paren``, split on top-level commas; and the end index."""
    depth, start, args = 0, open_paren + 1, []
    for i in range(open_paren, len(sql)):
        c = sql[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                args.append(sql[start:i])
                return [a.strip() for a in args], i + 1
        elif c == "," and depth == 1:
            args.append(sql[start:i])
            start = i + 1
    raise AssertionError(f"unbalanced macro call in: {sql[open_paren - 20:open_paren + 60]}")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


@dataclass
class Scope:
    t_from: datetime
    t_to: datetime
    interval_s: int
    variables: dict[str, list[str] | str]  # name -> selected values, or ALL


def expand(sql: str, scope: Scope) -> str:
    # front end: $__conditionalAll (last occurrence first, as the plugin does), then template variables
    macro = "$__conditionalAll("
    while (i := sql.rfind(macro)) != -1:
        args, end = _macro_args(sql, i + len(macro) - 1)
        assert len(args) == 2, f"$__conditionalAll needs 2 arguments: {args}"
        name = args[1].lstrip("$")
        assert name in scope.variables, f"$__conditionalAll refers to unknown variable {args[1]}"
        value = scope.variables[name]
        sql = sql[:i] + ("1=1" if value == ALL or not value else args[0]) + sql[end:]

    def var(m: re.Match) -> str:
        name, fmt = m.group(1) or m.group(3), m.group(2)
        assert name in scope.variables, f"unknown template variable ${name}"
        value = scope.variables[name]
        assert value != ALL, f"${name} used outside $__conditionalAll: 'All' would expand to every value"
        assert fmt == "singlequote", f"${{{name}}} must be formatted :singlequote (got {fmt})"
        return ",".join(_quote(v) for v in value)

    sql = re.sub(r"\$\{(\w+)(?::(\w+))?\}|\$(?!__)(\w+)", var, sql)

    # back end (pkg/macros)
    f, t = int(scope.t_from.timestamp()), int(scope.t_to.timestamp())

    def backend(name: str, args: list[str]) -> str:
        if name == "timeFilter":
            (col,) = args
            return f"{col} >= toDateTime({f}) AND {col} <= toDateTime({t})"
        if name == "timeInterval":
            (col,) = args
            return f"toStartOfInterval(toDateTime({col}), INTERVAL {max(scope.interval_s, 1)} second)"
        raise AssertionError(f"unexpected macro $__{name}")

    while m := re.search(r"\$__(timeFilter|timeInterval)\(", sql):
        args, end = _macro_args(sql, m.end() - 1)
        sql = sql[:m.start()] + backend(m.group(1), args) + sql[end:]
    sql = sql.replace("$__interval_s", str(max(scope.interval_s, 1)))
    sql = sql.replace("$__fromTime", f"toDateTime({f})").replace("$__toTime", f"toDateTime({t})")
    assert "$" not in sql, f"unexpanded macro or variable left in: {sql}"
    return sql


def test_macro_expansion_matches_the_plugin():
    scope = Scope(datetime(2025, 1, 1, tzinfo=timezone.utc), datetime(2025, 1, 2, tzinfo=timezone.utc), 300,
                  {"p": ["a", "it's"], "q": ALL})
    sql = ("SELECT $__timeInterval(ts) FROM t WHERE $__timeFilter(ts) AND $__conditionalAll(f(p, 1) IN "
           "(${p:singlequote}), $p) AND $__conditionalAll(q IN (${q:singlequote}), $q) AND x > $__interval_s")
    assert expand(sql, scope) == (
        "SELECT toStartOfInterval(toDateTime(ts), INTERVAL 300 second) FROM t WHERE ts >= toDateTime(1735689600)"
        " AND ts <= toDateTime(1735776000) AND f(p, 1) IN ('a','it\\'s') AND 1=1 AND x > 300")


# ---- structure ----------------------------------------------------------------------

def _targets(dash: dict):
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


def test_dashboards_exist_and_match_their_generator():
    assert set(DASHBOARDS) == {f"{gen.build(fn)['uid']}.json" for fn in gen.DASHBOARDS}
    for fn in gen.DASHBOARDS:
        path = DASHBOARD_DIR / f"{gen.build(fn)['uid']}.json"
        assert path.read_text(encoding="utf-8") == gen.render(fn), f"{path.name} is stale: run scripts/make_dashboards.py"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_structure(name):
    dash = DASHBOARDS[name]
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    assert len({d["uid"] for d in DASHBOARDS.values()}) == len(DASHBOARDS)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
    titles = [p["title"] for p in dash["panels"]]
    assert len(titles) == len(set(titles)), f"{name}: panel titles repeat"
    # the datasource uid everywhere
    for panel in dash["panels"]:
        assert panel["datasource"] == {"type": DS_TYPE, "uid": DS_UID}, f"{name}: panel {panel['title']!r}"
        assert panel["targets"], f"{name}: panel {panel['title']!r} has no query"
    for panel, target in _targets(dash):
        where = f"{name}: {panel['title']!r} {target['refId']}"
        assert target["datasource"] == {"type": DS_TYPE, "uid": DS_UID}, where
        assert target["editorType"] == "sql" and target["rawSql"].strip(), where
        assert (target["format"], target["queryType"]) in ((0, "timeseries"), (1, "table")), where
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        assert "usage_events" not in target["rawSql"] or "usage_events FINAL" in target["rawSql"], \
            f"{where}: usage_events must be read with FINAL"
    # grid: inside 24 columns, no overlaps
    boxes = []
    for panel in dash["panels"]:
        g = panel["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, panel["title"]
        assert g["x"] + g["w"] <= 24, f"{name}: {panel['title']!r} is wider than the grid"
        for other_title, o in boxes:
            overlap = (g["x"] < o["x"] + o["w"] and o["x"] < g["x"] + g["w"]
                       and g["y"] < o["y"] + o["h"] and o["y"] < g["y"] + g["h"])
            assert not overlap, f"{name}: {panel['title']!r} overlaps {other_title!r}"
        boxes.append((panel["title"], g))
    # templating: every variable a query uses is defined, from our datasource, multi-value with All
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert set(variables) == {"provider", "model", "key"}
    for v in variables.values():
        assert v["type"] == "query" and v["datasource"]["uid"] == DS_UID
        assert v["multi"] and v["includeAll"] and v["current"]["value"] == ["$__all"] and v["refresh"] == 2
    texts = [t["rawSql"] for _, t in _targets(dash)] + [v["query"] for v in variables.values()]
    used = {m for text in texts for m in re.findall(r"\$\{?(?!__)(\w+)", text)}
    assert used <= set(variables), f"{name}: undefined variables {used - set(variables)}"


def test_provisioning_references_the_same_datasource_uid():
    ds = yaml.safe_load((PROVISIONING / "datasources" / "clickhouse.yaml").read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["uid"] == DS_UID and source["type"] == DS_TYPE
    assert source["jsonData"]["host"] == "${CLICKHOUSE_HOST}"  # the server comes from the environment
    assert source["jsonData"]["defaultDatabase"] == "${CLICKHOUSE_DATABASE}"
    assert source["secureJsonData"]["password"] == "${CLICKHOUSE_PASSWORD}"  # never a literal
    used = {t["datasource"]["uid"] for d in DASHBOARDS.values() for _, t in _targets(d)}
    used |= {p["datasource"]["uid"] for d in DASHBOARDS.values() for p in d["panels"]}
    assert used == {source["uid"]}
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "provider.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


# ---- the SQL against ClickHouse -------------------------------------------------------

T0 = datetime(2025, 3, 10, 12, 0, tzinfo=timezone.utc)
N = 15  # events per scenario


def _events() -> list[UsageEvent]:
    """Four kinds of request, N of each, one every 3 minutes over 3 hours."""
    out: list[UsageEvent] = []
    for i in range(N * 4):
        ts = T0 + timedelta(minutes=3 * i, seconds=7)
        kind = i % 4
        if kind == 0:  # free tier, streamed
            ev = dict(provider="groq", model="llama-3.3-70b", key_id="key-a", tokens_in=100, tokens_out=50,
                      cost_usd=Decimal(0), stream=True, ttft_ms=100.0 + i, latency_ms=400.0 + i, status=200,
                      attempts=[Attempt(provider="groq", upstream_model="llama-3.3-70b-versatile", status=200,
                                        latency_ms=400.0 + i)])
        elif kind == 1:  # paid, one retry before it worked
            ev = dict(provider="openai", model="gpt-4o-mini", key_id="key-b", tokens_in=1000, tokens_out=200,
                      tokens_cached=300, cost_usd=Decimal("0.0012"), cache_saved_usd=Decimal("0.00045"),
                      latency_ms=900.0 + i, status=200,
                      attempts=[Attempt(provider="openai", upstream_model="gpt-4o-mini", status=200,
                                        latency_ms=900.0 + i, retries=1)])
        elif kind == 2:  # failed over from a rate-limited free tier
            ev = dict(provider="openrouter", model="llama-3.3-70b", key_id=None, tokens_in=200, tokens_out=100,
                      cost_usd=Decimal("0.0003"), stream=True, ttft_ms=300.0 + i, latency_ms=1500.0 + i, status=200,
                      attempts=[Attempt(provider="groq", upstream_model="llama-3.3-70b-versatile", status=429,
                                        error="rate limited", latency_ms=50.0),
                                Attempt(provider="openrouter", upstream_model="meta-llama/llama-3.3-70b-instruct",
                                        status=200, latency_ms=1400.0 + i)])
        else:  # nobody could serve it
            ev = dict(provider=None, model="gpt-4o-mini", key_id="key-a", latency_ms=3000.0 + i, status=502,
                      error="all providers failed",
                      attempts=[Attempt(provider="openai", upstream_model="gpt-4o-mini", status=502, error="bad gateway",
                                        latency_ms=1000.0, retries=2),
                                Attempt(provider="openrouter", upstream_model="openai/gpt-4o-mini", status=0,
                                        error="connect timeout", latency_ms=2000.0)])
        out.append(UsageEvent(id=f"ev-{i:04d}", ts=ts, request_id=f"req-{i}", **ev))
    return out


EVENTS = _events()


def _insert(client, events) -> None:
    """As the usage service inserts: one JSON row per event."""
    client.raw_insert(domain.TABLE, None, b"\n".join(domain.event_line(e) for e in events),
                      settings=domain.INSERT_FORMAT_SETTINGS, fmt=domain.INSERT_FORMAT)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """chDB with the usage service's schema (usage_events, the usage_minute rollup and its view) and the events."""
    path = tmp_path_factory.mktemp("dash-chdb")
    with contextlib.closing(connect_clickhouse("", path)) as client:
        apply_migrations(client)
        tables = {r[0] for r in client.query("SELECT name FROM system.tables WHERE database = currentDatabase()")
                  .result_rows}
        assert {"usage_events", "usage_minute"} <= tables, f"the usage migrations no longer create them: {tables}"
        _insert(client, EVENTS)
        # the rollup follows usage_events through its materialized view
        assert client.query("SELECT sum(requests) FROM usage_minute").result_rows[0][0] == len(EVENTS)
        yield client


ALL_SCOPE = Scope(T0 - timedelta(hours=1), T0 + timedelta(hours=4), 600, {"provider": ALL, "model": ALL, "key": ALL})
FILTERED_SCOPE = Scope(T0 - timedelta(hours=1), T0 + timedelta(hours=4), 60,
                       {"provider": ["openai", "(none)"], "model": ["gpt-4o-mini"], "key": ["key-a", "key-b"]})


def _all_targets():
    for name, dash in DASHBOARDS.items():
        for panel, target in _targets(dash):
            yield pytest.param(name, panel, target, id=f"{dash['uid']}:{panel['id']}{target['refId']}:{panel['title']}")


def _run(client, sql: str, scope: Scope):
    return client.query(expand(sql, scope))


def _describe(client, sql: str, scope: Scope) -> list[tuple[str, str]]:
    """(name, type) of every column the query returns, even when it returns no row."""
    return [(r[0], r[1]) for r in client.query(f"DESCRIBE TABLE ({expand(sql, scope)})").result_rows]


def _expected(name: str, panel: dict, target: dict):
    fn = next(f for f in gen.DASHBOARDS if f"{gen.build(f)['uid']}.json" == name)
    return gen.queries_by_panel(fn)[(panel["id"], target["refId"])]


@pytest.mark.parametrize("name,panel,target", list(_all_targets()))
@pytest.mark.parametrize("scope", [ALL_SCOPE, FILTERED_SCOPE], ids=["all", "filtered"])
def test_panel_sql_runs_with_expected_columns(store, name, panel, target, scope):
    columns = _describe(store, target["rawSql"], scope)
    assert [c[0] for c in columns] == _expected(name, panel, target).columns
    result = _run(store, target["rawSql"], scope)
    if target["format"] == 0:  # a time series: a time column first, sorted, then numbers (and series labels)
        assert columns[0][0] == "time" and columns[0][1].startswith("DateTime")
        assert any(re.match(r"(Nullable\()?(U?Int|Float|Decimal)", t) for _, t in columns[1:])
        times = [r[0] for r in result.result_rows]
        assert all(isinstance(t, datetime) for t in times) and times == sorted(times)
    if scope is ALL_SCOPE:
        assert result.result_rows, f"{panel['title']!r} returned nothing over the seeded events"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_variable_queries(store, name):
    values = {}
    for v in DASHBOARDS[name]["templating"]["list"]:
        result = _run(store, v["query"], ALL_SCOPE)
        assert len(result.column_names) == 1
        values[v["name"]] = [r[0] for r in result.result_rows]
    assert values["provider"] == ["(none)", "groq", "openai", "openrouter"]
    assert values["model"] == ["gpt-4o-mini", "llama-3.3-70b"]
    assert values["key"] == ["(none)", "key-a", "key-b"]
    narrowed = _run(store, next(v for v in DASHBOARDS[name]["templating"]["list"] if v["name"] == "model")["query"],
                    Scope(ALL_SCOPE.t_from, ALL_SCOPE.t_to, 60, {"provider": ["groq"]}))
    assert [r[0] for r in narrowed.result_rows] == ["llama-3.3-70b"]


def _panel(uid: str, title: str) -> dict:
    dash = next(d for d in DASHBOARDS.values() if d["uid"] == uid)
    return next(p for p in dash["panels"] if p["title"] == title)


def _rows(store, uid: str, title: str, scope: Scope = ALL_SCOPE, ref: str = "A"):
    target = next(t for t in _panel(uid, title)["targets"] if t["refId"] == ref)
    return _run(store, target["rawSql"], scope).result_rows


def test_usage_values(store):
    assert _rows(store, "llmgw-usage", "Cost")[0][0] == pytest.approx(N * 0.0012 + N * 0.0003)
    assert _rows(store, "llmgw-usage", "Requests")[0][0] == 4 * N
    assert _rows(store, "llmgw-usage", "Tokens")[0][0] == N * (150 + 1200 + 300)
    assert _rows(store, "llmgw-usage", "Tokens served free")[0][0] == pytest.approx(150 / (150 + 1200 + 300))
    per_provider: dict[str, float] = {}
    for _, provider, cost in _rows(store, "llmgw-usage", "Cost by provider"):
        per_provider[provider] = per_provider.get(provider, 0) + cost
    assert per_provider == pytest.approx({"groq": 0, "openai": N * 0.0012, "openrouter": N * 0.0003, "(none)": 0})
    tokens = _rows(store, "llmgw-usage", "Tokens over time")
    assert sum(r[3] for r in tokens) == N * 300  # cached
    top = _rows(store, "llmgw-usage", "Top models")
    assert [(r[0], r[1]) for r in top] == [("gpt-4o-mini", 2 * N), ("llama-3.3-70b", 2 * N)]
    for uid, title, ref in (("llmgw-usage", "Error rate", "A"), ("llmgw-usage", "Requests served free", "A"),
                            ("llmgw-usage", "Share served free", "B")):
        assert all(0 <= r[-1] <= 1 for r in _rows(store, uid, title, ref=ref))
    assert _rows(store, "llmgw-usage", "Error rate")[0][0] == pytest.approx(0.25)
    assert _rows(store, "llmgw-usage", "Requests served free")[0][0] == pytest.approx(0.25)
    # filtered: provider openai or nobody, gpt-4o-mini, keys a and b
    assert _rows(store, "llmgw-usage", "Requests", FILTERED_SCOPE)[0][0] == 2 * N
    assert _rows(store, "llmgw-usage", "Cost", FILTERED_SCOPE)[0][0] == pytest.approx(N * 0.0012)


def test_prompt_caching_values(store):
    rows = _rows(store, "llmgw-usage", "Prompt caching by provider and model")
    assert rows[0][:2] == ("openai", "gpt-4o-mini")
    assert rows[0][2:5] == (N * 1000, N * 300, pytest.approx(0.3))
    assert rows[0][5] == pytest.approx(N * 0.00045) and rows[0][6] == pytest.approx(N * 0.0012)
    assert {r[0] for r in rows[1:]} <= {"groq", "openrouter"} and all(r[5] == 0 for r in rows[1:])


def test_performance_values(store):
    p = "llmgw-performance"
    assert _rows(store, p, "Retries")[0][0] == N * 1 + N * 2
    assert _rows(store, p, "Requests that failed over")[0][0] == 2 * N
    for _, p50, p95, p99 in _rows(store, p, "Latency percentiles") + _rows(store, p, "Time to first token percentiles"):
        assert 0 < p50 <= p95 <= p99
    served_max = max(e.latency_ms for e in EVENTS if e.status < 400)
    assert 400 <= _rows(store, p, "Latency p95")[0][0] <= served_max
    assert 100 <= _rows(store, p, "Time to first token p95")[0][0] <= max(e.ttft_ms or 0 for e in EVENTS)
    series = _rows(store, p, "Retries and failovers")
    assert (sum(r[1] for r in series), sum(r[2] for r in series), sum(r[3] for r in series)) == (3 * N, 2 * N, 2 * N)
    failed = {(r[0], r[1]): r[2] for r in _rows(store, p, "Failed upstream attempts")}
    assert failed == {("groq", 429): N, ("openai", 502): N, ("openrouter", 0): N}
    errors = _rows(store, p, "Errors returned to clients")
    assert errors == [("(none)", 502, N, "all providers failed")]
    assert _rows(store, p, "Retries", FILTERED_SCOPE)[0][0] == N * 1 + N * 2
    assert _rows(store, p, "Errors returned to clients",
                 Scope(ALL_SCOPE.t_from, ALL_SCOPE.t_to, 60, {"provider": ["groq"], "model": ALL, "key": ALL})) == []


def test_usage_events_panels_count_a_redelivered_event_once(store):
    """At-least-once delivery: the same event inserted twice is one request (every events panel reads FINAL)."""
    at = T0 + timedelta(hours=10)
    ev = UsageEvent(id="ev-dup", ts=at, request_id="req-dup", provider=None, model="gpt-4o-mini", status=503,
                    error="no provider", latency_ms=10.0,
                    attempts=[Attempt(provider="openai", upstream_model="gpt-4o-mini", status=503, latency_ms=5.0,
                                      retries=1),
                              Attempt(provider="openrouter", upstream_model="gpt-4o-mini", status=503, latency_ms=5.0)])
    _insert(store, [ev])
    _insert(store, [ev])  # separate inserts: separate parts, collapsed only by FINAL
    scope = Scope(at - timedelta(hours=1), at + timedelta(hours=1), 60, {"provider": ALL, "model": ALL, "key": ALL})
    p = "llmgw-performance"
    assert _rows(store, p, "Requests that failed over", scope)[0][0] == 1
    assert _rows(store, p, "Retries", scope)[0][0] == 1
    assert _rows(store, p, "Errors returned to clients", scope) == [("(none)", 503, 1, "no provider")]
    assert _rows(store, p, "Failed upstream attempts", scope) == [("openai", 503, 1, ""), ("openrouter", 503, 1, "")]
