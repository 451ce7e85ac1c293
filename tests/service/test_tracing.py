"""OpenTelemetry traces: one request is one trace across edge, router and usage (docs/observability.md).

The three services run in-process against the session's real NATS, Redis and chDB, the upstream is the
demo provider; spans go to an in-memory exporter. Also: tracing stays off unless ``OTEL_*`` asks for it,
and JSON log lines carry the request and trace ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import httpx
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from fakes import FakeProvider
from llmgw_common import logs, tracing
from llmgw_common.config import GatewayConfig, UsageConfig
from llmgw_edge.main import EdgeSettings
from llmgw_edge.main import create_app as create_edge
from llmgw_router.main import RouterSettings
from llmgw_router.main import serve as serve_router
from stacks import wait_service
from test_usage_service import env, running_usage  # noqa: F401 - env is a fixture

pytestmark = pytest.mark.integration

MODEL = "traced-model"


def gateway_config(upstream: FakeProvider) -> str:
    return f"""
providers:
  - id: demo
    base_url: {upstream.url}
    models:
      - name: {MODEL}
        upstream: demo-upstream
        price: {{input_per_mtok: 1, output_per_mtok: 2}}
pricing: {{fetch_on_start: false}}
usage: {{batch_wait_s: 0.05}}
# every request asks the router (no plan reused): its spans and metrics are what these tests look at
routing: {{plan_max_age_s: 0}}
"""


@contextlib.asynccontextmanager
async def gateway_in_process(env, upstream: FakeProvider, tmp_path):  # noqa: F811 - env: the fixture's value
    """Router, usage and edge in this process (the edge through httpx's ASGI transport): yields the client."""
    config = tmp_path / "llmgw.yaml"
    config.write_text(gateway_config(upstream))
    common = dict(NATS_URL=env.infra.nats_url, REDIS_URL=env.infra.redis_url, LLMGW_CONFIG=str(config),
                  LLMGW_STATE_DIR=str(tmp_path / "state"))
    stop_router = asyncio.Event()
    router = asyncio.create_task(serve_router(RouterSettings(**common), stop_router))
    try:
        await wait_service(env.nc, "router")
        async with running_usage(env, GatewayConfig(usage=UsageConfig(batch_size=50, batch_wait_s=0.05))):
            app = create_edge(EdgeSettings(**common))
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://edge", timeout=30) as client:
                    yield client
    finally:
        stop_router.set()
        await asyncio.wait_for(router, 15)


@pytest.fixture
def spans():
    """Tracing on, into memory, for this test only."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "llmgw-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(None)
        provider.shutdown()


@pytest.fixture(scope="module")
def upstream():
    with FakeProvider(models=["demo-upstream"]) as fake:
        yield fake


def _chat(stream: bool = False) -> dict:
    return {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": "say something traced"}]}


async def _trace_of(exporter: InMemorySpanExporter, request_id: str, want_scope: str = "llmgw.usage",
                    timeout: float = 30.0) -> list:
    """Every finished span of the trace whose edge span carries ``request_id``, once ``want_scope`` has one."""
    deadline = time.monotonic() + timeout
    while True:
        finished = exporter.get_finished_spans()
        roots = [s for s in finished if s.attributes.get("llmgw.request_id") == request_id
                 and s.instrumentation_scope.name == "llmgw.edge"]
        if roots:
            trace_id = roots[0].context.trace_id
            spans = [s for s in finished if s.context.trace_id == trace_id]
            if any(s.instrumentation_scope.name == want_scope for s in spans):
                return spans
        if time.monotonic() > deadline:
            raise AssertionError(f"no whole trace for {request_id}: {[(s.name, s.instrumentation_scope.name) for s in finished]}")
        await asyncio.sleep(0.1)


def _one(spans: list, scope: str, name: str):
    found = [s for s in spans if s.instrumentation_scope.name == scope and s.name == name]
    assert len(found) == 1, (scope, name, [(s.name, s.instrumentation_scope.name) for s in spans])
    return found[0]


async def test_one_request_is_one_trace_across_edge_router_and_usage(env, upstream, tmp_path, spans):  # noqa: F811
    async with gateway_in_process(env, upstream, tmp_path) as edge:
        resp = await edge.post("/v1/chat/completions", json=_chat())
        assert resp.status_code == 200, resp.text
        request_id = resp.headers["x-request-id"]
        trace = await _trace_of(spans, request_id)

        server = _one(trace, "llmgw.edge", "POST /v1/chat/completions")
        assert server.kind is SpanKind.SERVER and server.parent is None
        assert server.attributes["http.route"] == "/v1/chat/completions"
        assert server.attributes["http.response.status_code"] == 200
        # edge -> NATS request/reply (its context in the request's headers) -> the router's decision
        send = _one(trace, "llmgw.nats", "send llmgw.router.decide")
        assert send.kind is SpanKind.CLIENT and send.parent.span_id == server.context.span_id
        decide = _one(trace, "llmgw.router", "llmgw.router.decide")
        assert decide.kind is SpanKind.SERVER and decide.parent.span_id == send.context.span_id
        assert decide.attributes["llmgw.outcome"] == "admitted" and decide.attributes["llmgw.provider"] == "demo"
        admission = _one(trace, "llmgw.router", "redis admission")
        assert admission.parent.span_id == decide.context.span_id
        assert admission.attributes["db.system"] == "redis"
        # the upstream call, with the GenAI semantic conventions
        upstream_call = _one(trace, "llmgw.edge", "chat demo-upstream")
        assert upstream_call.kind is SpanKind.CLIENT and upstream_call.parent.span_id == server.context.span_id
        a = upstream_call.attributes
        assert (a["gen_ai.system"], a["gen_ai.request.model"], a["gen_ai.response.model"]) == (
            "openai", "demo-upstream", "demo-upstream")
        assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
        assert a["llmgw.provider"] == "demo" and a["http.response.status_code"] == 200
        # the usage event's ingest: the context travelled in the JetStream message's headers
        ingest = _one(trace, "llmgw.usage", "ingest usage event")
        assert ingest.kind is SpanKind.CONSUMER and ingest.parent.span_id == server.context.span_id
        # ... and links to its batch's span (a trace of its own, linking back to the request)
        batch = [s for s in spans.get_finished_spans() if s.name == "usage batch"
                 and s.context.span_id == ingest.links[0].context.span_id]
        assert len(batch) == 1 and batch[0].context.trace_id != server.context.trace_id
        assert server.context.trace_id in {link.context.trace_id for link in batch[0].links}
        assert {s.instrumentation_scope.name for s in trace} == {"llmgw.edge", "llmgw.nats", "llmgw.router",
                                                                 "llmgw.usage"}
        assert all(s.context.trace_id == server.context.trace_id for s in trace)

        # a stream: its upstream span ends with the stream, holding the stream's usage
        async with edge.stream("POST", "/v1/chat/completions", json=_chat(stream=True)) as streamed:
            assert streamed.status_code == 200
            body = b"".join([chunk async for chunk in streamed.aiter_bytes()])
            stream_id = streamed.headers["x-request-id"]
        assert b"[DONE]" in body
        trace = await _trace_of(spans, stream_id)
        call = _one(trace, "llmgw.edge", "chat demo-upstream")
        assert call.attributes["gen_ai.usage.output_tokens"] > 0 and call.status.is_ok
        assert call.end_time >= call.start_time


async def test_an_unknown_model_is_traced_to_the_router_refusal(env, upstream, tmp_path, spans):  # noqa: F811
    async with gateway_in_process(env, upstream, tmp_path) as edge:
        resp = await edge.post("/v1/chat/completions", json={**_chat(), "model": "no-such-model"})
        assert resp.status_code == 404
        request_id = resp.headers["x-request-id"]
        trace = await _trace_of(spans, request_id, want_scope="llmgw.router")
        assert _one(trace, "llmgw.router", "llmgw.router.decide").attributes["llmgw.outcome"] == "invalid"
        assert _one(trace, "llmgw.edge", "POST /v1/chat/completions").attributes["http.response.status_code"] == 404


def test_tracing_is_off_unless_the_environment_asks():
    assert tracing.wanted({}) == []
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == ["otlp"]
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}) == ["otlp"]
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"}) == ["console"]
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == []
    assert tracing.wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}) == []
    assert tracing.service_name("edge", {}) == "llmgw-edge"
    assert tracing.service_name("edge", {"OTEL_SERVICE_NAME": "gw-edge"}) == "gw-edge"
    assert not tracing.enabled
    # off: the helpers hand back what they were given, no span anywhere
    coro = asyncio.sleep(0)
    assert tracing.traced(coro, "x", "y") is coro
    coro.close()
    assert tracing.start("x", "y") is None and tracing.current_ids() is None
    with tracing.span("x", "y") as nothing:
        assert nothing is None


def test_json_log_lines_carry_request_and_trace_ids(spans, capsys):
    record = logging.LogRecord("llmgw.edge", logging.WARNING, __file__, 1,
                               "upstream said Authorization: Bearer sk-abcdefghijklmnop", None, None)
    fmt = logs.formatter("edge", "json")
    token = logs.REQUEST_ID.set("req-123")
    try:
        with tracing.span("llmgw.edge", "a request"):
            line = json.loads(fmt.format(record))
    finally:
        logs.REQUEST_ID.reset(token)
    assert set(line) == {"ts", "level", "service", "logger", "message", "request_id", "trace_id", "span_id"}
    assert (line["level"], line["service"], line["logger"], line["request_id"]) == (
        "WARNING", "edge", "llmgw.edge", "req-123")
    assert "sk-abcdefghijklmnop" not in line["message"] and "[REDACTED]" in line["message"]
    span = spans.get_finished_spans()[-1]
    assert line["trace_id"] == format(span.context.trace_id, "032x")
    assert line["ts"].endswith("+00:00")
    # outside a request: no ids; an exception goes in whole, redacted
    try:
        raise ValueError("key sk-zyxwvutsrqponmlk")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = json.loads(fmt.format(record))
    assert "request_id" not in line and "trace_id" not in line
    assert "ValueError" in line["exception"] and "sk-zyxwvutsrqponmlk" not in line["exception"]
    # the default stays the human format
    assert not isinstance(logs.formatter("edge", ""), logs.JsonFormatter)


def test_otlp_export_when_the_environment_asks(monkeypatch):
    """``setup`` with OTEL_EXPORTER_OTLP_ENDPOINT: spans go out as OTLP/HTTP protobuf (a collector stand-in)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[tuple[str, str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append((self.path, self.headers["content-type"], body))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    try:
        assert tracing.setup("router")
        with tracing.span("llmgw.router", "exported span"):
            pass
        tracing._provider.force_flush()
        assert received, "nothing reached the collector"
        path, content_type, body = received[0]
        assert path == "/v1/traces" and content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(body)
        resource = {a.key: a.value.string_value for a in export.resource_spans[0].resource.attributes}
        assert resource["service.name"] == "llmgw-router"
        assert [s.name for s in export.resource_spans[0].scope_spans[0].spans] == ["exported span"]
    finally:
        provider = tracing._provider
        tracing.use_provider(None)
        if provider is not None:
            provider.shutdown()
        server.shutdown()
