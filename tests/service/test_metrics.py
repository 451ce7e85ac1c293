"""Prometheus ``/metrics`` (docs/observability.md).

- edge and ui-api: scraped over HTTP on their own ports, in a running stack (every service a process),
  after real traffic through the openai SDK;
- router, usage and pricing: ``LLMGW_METRICS_PORT`` would be one port for all three under the runner (one
  environment for every child), so they run in-process here and the registry is read directly
  (``generate_latest``), and once through the operations port's HTTP server (``ops_port.OpsServer``, what
  ``ServiceRuntime`` starts on ``LLMGW_METRICS_PORT``).
"""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal

import httpx
import openai
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from admin import admin_headers
from fakes import FakeProvider
from llmgw_cli.infra import free_port
from llmgw_common import metrics, ops_port, subjects
from llmgw_common.health import HealthMonitor
from llmgw_common.messages import PriceKey, PriceList, PriceLookup, RouteDecision, RouteRequest, UsageEvent
from llmgw_common.ids import new_id
from llmgw_common.nats_conn import request
from llmgw_pricing.main import PricingSettings
from llmgw_pricing.main import serve as serve_pricing
from stacks import running_stack, wait_for, wait_service, wait_until
from test_tracing import MODEL, gateway_config, gateway_in_process
from test_usage_service import _wait_caught_up, env  # noqa: F401 - env is a fixture

pytestmark = pytest.mark.integration


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of a scrape."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(scrape: dict, name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


def total(scrape: dict, name: str, **labels: str) -> float:
    """Sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in scrape.items() if n == name and want <= ls)


@pytest.fixture(scope="module")
def upstream():
    with FakeProvider(models=["demo-upstream"]) as fake:
        yield fake


def test_edge_and_ui_api_metrics_in_a_running_stack(infra, upstream, tmp_path_factory):
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LLMGW_METRICS_"))}
    env_vars.update(NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url, CLICKHOUSE_URL=infra.clickhouse_url)
    with running_stack(tmp_path_factory.mktemp("metrics"), gateway_config(upstream), env_vars) as stack:
        edge_url = f"http://127.0.0.1:{stack.edge_port}"
        client = openai.OpenAI(base_url=f"{edge_url}/v1", api_key="client-key", max_retries=0)
        for _ in range(3):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "count me"}])
        chunks = list(client.chat.completions.create(model=MODEL, stream=True,
                                                     messages=[{"role": "user", "content": "stream me"}]))
        assert chunks
        with pytest.raises(openai.NotFoundError):  # an unknown model: never a label of its own
            client.chat.completions.create(model="made-up-model-name", messages=[{"role": "user", "content": "x"}])

        def edge_scrape():
            resp = httpx.get(f"{edge_url}/metrics", timeout=10)
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
            return samples(resp.text)

        # usage events are published after the response: wait until JetStream has them all
        # (the unknown model's 404 is one too: a refusal, recorded without provider or cost)
        scrape = wait_for(lambda: (s := edge_scrape()) and value(s, "llmgw_edge_usage_events_published_total") >= 5
                          and s)
        ok = dict(route="chat.completions", provider="demo", model=MODEL, status="200")
        assert value(scrape, "llmgw_edge_requests_total", **ok) == 4
        assert value(scrape, "llmgw_edge_usage_events_queued_total") == 5
        assert value(scrape, "llmgw_edge_usage_events_spilled_total") == 0
        for kind in ("in", "out"):
            assert value(scrape, "llmgw_edge_tokens_total", provider="demo", model=MODEL, kind=kind) > 0
        assert value(scrape, "llmgw_edge_cost_usd_total", provider="demo", model=MODEL) > 0
        labels = dict(route="chat.completions", provider="demo", model=MODEL)
        assert value(scrape, "llmgw_edge_request_duration_seconds_count", **labels) == 4
        assert value(scrape, "llmgw_edge_time_to_first_token_seconds_count", **labels) == 1  # the stream
        assert value(scrape, "llmgw_edge_upstream_attempts_total", provider="demo", status="200") == 4
        # the edge's question to the router, timed by the NATS request helper
        assert value(scrape, "llmgw_nats_request_duration_seconds_count", subject=subjects.ROUTER_DECIDE,
                     outcome="ok") == 5
        # every HTTP request by route template and status, the refused one too
        assert value(scrape, "llmgw_http_requests_total", route="/v1/chat/completions", method="POST",
                     status="200") == 4
        assert value(scrape, "llmgw_http_requests_total", route="/v1/chat/completions", method="POST",
                     status="404") == 1
        # no series names a model the config does not serve
        assert not [k for k in scrape if ("model", "made-up-model-name") in k[1]]

        ui_url = f"http://127.0.0.1:{stack.ui_port}"
        assert httpx.get(f"{ui_url}/api/config", timeout=10).status_code == 401
        assert httpx.get(f"{ui_url}/api/config", headers=admin_headers(stack), timeout=10).status_code == 200
        resp = httpx.get(f"{ui_url}/metrics", timeout=10)  # like /healthz: a scraper has no admin token
        assert resp.status_code == 200
        ui = samples(resp.text)
        assert value(ui, "llmgw_http_requests_total", route="/api/config", method="GET", status="401") == 1
        assert value(ui, "llmgw_http_requests_total", route="/api/config", method="GET", status="200") == 1
        assert value(ui, "llmgw_http_request_duration_seconds_count", route="/api/config") == 2
        # the admin API's own series only: no edge series there
        assert not [k for k in ui if k[0].startswith("llmgw_edge_")]


async def test_router_usage_and_pricing_metrics_in_process(env, upstream, tmp_path):  # noqa: F811
    before = samples(generate_latest(REGISTRY).decode())
    pricing_stop = asyncio.Event()
    config = tmp_path / "llmgw.yaml"
    config.write_text(gateway_config(upstream))
    pricing = asyncio.create_task(serve_pricing(PricingSettings(
        NATS_URL=env.infra.nats_url, LLMGW_CONFIG=str(config), LLMGW_STATE_DIR=str(tmp_path / "pricing")),
        pricing_stop))
    try:
        await wait_service(env.nc, "pricing")  # before the router starts: it asks for prices at start
        async with gateway_in_process(env, upstream, tmp_path) as edge:
            for _ in range(2):
                resp = await edge.post("/v1/chat/completions", json={
                    "model": MODEL, "messages": [{"role": "user", "content": "hello"}]})
                assert resp.status_code == 200, resp.text
            assert (await edge.post("/v1/chat/completions", json={
                "model": "nope", "messages": [{"role": "user", "content": "hello"}]})).status_code == 404
            # a failover skips the provider already tried: a skipped candidate with its reason kind
            again = await request(env.nc, subjects.ROUTER_DECIDE,
                                  RouteRequest(request_id="r1", model=MODEL, exclude=["demo"]), RouteDecision, 5)
            assert again.error is not None and again.error.status == 429
            await request(env.nc, subjects.PRICING_LOOKUP,
                          PriceLookup(keys=[PriceKey(provider="demo", model="demo-upstream")]), PriceList, 5)
            # a message that is no event: dead-lettered by reason
            await env.js.publish(subjects.usage_event_subject("demo"), b"{not json", headers={"Nats-Msg-Id": new_id()})
            await env.js.publish(subjects.usage_event_subject("demo"), UsageEvent(
                id=new_id(), request_id="direct", endpoint="chat.completions", provider="demo", model=MODEL,
                tokens_in=1, cost_usd=Decimal(0), status=200).encode(), headers={"Nats-Msg-Id": new_id()})
            await _wait_caught_up(env.js)

            def consumer_counted(name: str) -> float:  # the consumer counts a batch once its acks are out
                now = samples(generate_latest(REGISTRY).decode())
                return total(now, name) - total(before, name)

            # the edge publishes its usage events after the responses: 4 events and the message that is none
            await wait_until(lambda: consumer_counted("llmgw_usage_events_total") >= 4
                             and consumer_counted("llmgw_usage_dead_letters_total") >= 1)

            # the same registry over the operations port (what LLMGW_METRICS_PORT starts)
            port = free_port()
            server = await ops_port.start_from_env(HealthMonitor([]).report, ready=(),
                                                   env={"LLMGW_METRICS_PORT": str(port), "LLMGW_METRICS_HOST": "127.0.0.1"})
            assert server is not None
            try:
                async with httpx.AsyncClient() as http:
                    resp = await http.get(f"http://127.0.0.1:{port}/metrics")
                assert resp.status_code == 200
                after = samples(resp.text)
            finally:
                await server.stop()
            assert await ops_port.start_from_env(HealthMonitor([]).report, ready=(), env={}) is None  # unset: none

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        # router
        assert moved("llmgw_router_decisions_total", outcome="admitted") == 2
        assert moved("llmgw_router_decisions_total", outcome="invalid") == 1
        assert moved("llmgw_router_decisions_total", outcome="refused") == 1
        assert moved("llmgw_router_skipped_candidates_total", provider="demo", reason="already_tried") == 1
        assert moved("llmgw_router_decision_duration_seconds_count") == 4
        assert ("llmgw_router_breaker_state", frozenset({("provider", "demo")})) in after
        # usage
        assert moved("llmgw_usage_events_total", result="ingested") == 4  # the 404 is recorded too
        assert moved("llmgw_usage_events_total", result="refused") == 1
        assert moved("llmgw_usage_dead_letters_total", reason="invalid") == 1
        assert moved("llmgw_usage_batches_total", result="committed") >= 1
        assert moved("llmgw_usage_batch_size_sum") == 5
        assert ("llmgw_usage_consumer_pending", frozenset()) in after
        # pricing (the router asked at start, and so did we)
        assert moved("llmgw_pricing_lookups_total", source="config") >= 2
    finally:
        pricing_stop.set()
        await asyncio.wait_for(pricing, 15)


def test_skip_reasons_and_labels_stay_in_fixed_sets():
    kinds = {metrics.skip_reason(r) for r in (
        "cooling down after a 429 (3s left)", "circuit breaker open (12s left)",
        "circuit breaker half-open, a probe is in flight", "requests_per_minute reached on provider (5/5)",
        "tokens_per_hour would be exceeded on model (1 used + ~2 > 2)", "cost_per_day would be exceeded on key k",
        "cost_per_month budget would be exceeded on key k (resets ...)", "not allowed by rule 'x'",
        "not allowed for key 'k'", "disabled", "already tried for this request",
        "prompt of ~9 tokens (+0 answer) exceeds its context window of 4", "lacks vision (model m)",
        "not admitted", "something new")}
    assert kinds == set(metrics.SKIP_REASONS)


def _defined_series() -> dict[str, set[str]]:
    """{sample name: its label names} of every series ``llmgw_common.metrics`` defines (a registry of its own)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    groups = [metrics.EdgeMetrics(registry), metrics.RouterMetrics(registry), metrics.UsageMetrics(registry),
              metrics.PricingMetrics(registry), metrics.HttpServerMetrics(registry), metrics.NatsMetrics(registry)]
    out: dict[str, set[str]] = {"up": set()}
    for group in groups:
        for metric in vars(group).values():
            if not hasattr(metric, "_labelnames"):
                continue
            labels = set(metric._labelnames)
            kind, name = metric._type, metric._name
            names = {"counter": [f"{name}_total"], "gauge": [name],
                     "histogram": [f"{name}_bucket", f"{name}_sum", f"{name}_count"]}[kind]
            for n in names:
                out[n] = labels | ({"le"} if n.endswith("_bucket") else set())
    return out


def test_the_gateway_health_dashboard_reads_series_that_exist():
    import json
    import re
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    dash = json.loads((root / "dashboards" / "llmgw-gateway-health.json").read_text())
    provisioned = yaml.safe_load((root / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    assert uid == "llmgw-prometheus"
    defined = _defined_series()
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"]]
    assert len(exprs) > 20
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == uid and all(t["datasource"]["uid"] == uid for t in p["targets"])
    seen = set()
    for expr in exprs:
        for name, selector in re.findall(r"\b((?:llmgw_\w+)|up)\b(\{[^}]*\})?", expr):
            assert name in defined, f"{name} is no series llmgw_common.metrics defines: {expr}"
            used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
            assert used <= defined[name] | {"job", "instance"}, (name, used, expr)
            seen.add(name)
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            assert {g.strip() for g in group.split(",")} - {"le", "job", "instance"} <= \
                set().union(*(defined[n] for n in re.findall(r"\bllmgw_\w+", expr))), expr
    # the panels the issue asks for
    for wanted in ("llmgw_edge_requests_total", "llmgw_edge_request_duration_seconds_bucket",
                   "llmgw_edge_time_to_first_token_seconds_bucket", "llmgw_router_decisions_total",
                   "llmgw_usage_consumer_pending", "llmgw_usage_dead_letters_total"):
        assert wanted in seen


async def test_metrics_token_when_set(monkeypatch):
    from fastapi import FastAPI

    app = FastAPI()
    metrics.HttpMetrics.install(app, "llmgw.test")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/metrics")).status_code == 200  # no token configured: open, like /healthz
        monkeypatch.setenv(metrics.METRICS_TOKEN_ENV, "scrape-secret")
        refused = await client.get("/metrics")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert (await client.get("/metrics", headers={"authorization": "Bearer wrong"})).status_code == 401
        ok = await client.get("/metrics", headers={"authorization": "Bearer scrape-secret"})
        assert ok.status_code == 200 and b"llmgw_http_requests_total" in ok.content
