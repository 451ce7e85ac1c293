"""The admin API (ui-api) at its edges: every route answers wrong methods, oversized bodies and query
strings, bad and overlong inputs in its one error shape; its OpenAPI document has real schemas; and a
bounded schemathesis run against it (real usage service, fake router and pricing) finds no 5xx."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time

import httpx
import pytest
from fastapi.routing import APIRoute
from nats.micro import add_service

from admin import ADMIN_HEADERS, UI_TOKENS
from llmgw_cli.infra import free_port
from llmgw_common import subjects
from llmgw_common.messages import PinCommand, PriceList, RouterState, SmartCommand
from llmgw_ui_api.errors import MAX_BODY_BYTES, MAX_QUERY_BYTES
from llmgw_ui_api.main import UiApiSettings, create_app
from test_usage_service import env, running_usage  # noqa: F401 - env is a fixture

pytestmark = pytest.mark.integration

ROUTES = {
    ("GET", "/healthz"), ("GET", "/api/health"), ("GET", "/api/config"), ("GET", "/api/pricing"),
    ("GET", "/api/usage/current"), ("GET", "/api/usage/history"), ("GET", "/api/usage/stats"), ("GET", "/api/requests"),
    ("GET", "/api/usage/dead-letters"), ("POST", "/api/dev/simulate"), ("GET", "/debug/router"),
    ("POST", "/api/router/pin"), ("POST", "/api/router/smart"), ("GET", "/api/router/state"),
    ("POST", "/api/login"), ("POST", "/api/logout"), ("GET", "/api/session"),
    ("GET", "/api/keys"), ("POST", "/api/keys"), ("GET", "/api/keys/{key_id}"), ("POST", "/api/keys/{key_id}/rotate"),
    ("POST", "/api/keys/{key_id}/revoke"), ("GET", "/api/keys/{key_id}/usage"),
    ("PUT", "/api/config"), ("POST", "/api/config/validate"), ("GET", "/api/config/history"),
    ("POST", "/api/config/rollback"), ("GET", "/api/config/replicas"), ("GET", "/api/live"), ("POST", "/api/compare"),
}


def _api_routes(routes) -> list[APIRoute]:
    """Every APIRoute, also those of included routers (FastAPI keeps those as routers of their own)."""
    out = []
    for route in routes:
        if isinstance(route, APIRoute):
            out.append(route)
        elif getattr(route, "original_router", None) is not None:
            out += _api_routes(route.original_router.routes)
    return out


def _settings(infra, tmp_path) -> UiApiSettings:
    return UiApiSettings(**UI_TOKENS, NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url,
                         LLMGW_CONFIG=str(tmp_path / "absent.yaml"), LLMGW_STATE_DIR=str(tmp_path / "state"),
                         LLMGW_UI_QUERY_TIMEOUT_S="10")


@contextlib.asynccontextmanager
async def _client(app):
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://ui", timeout=30,
                                     headers=ADMIN_HEADERS) as client:
            yield client


def _shaped(resp: httpx.Response, status: int) -> dict:
    """The response is ``status`` and ui-api's one error shape; never FastAPI's or a traceback."""
    assert resp.status_code == status, (resp.request.method, resp.request.url, resp.status_code, resp.text[:300])
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code"}, body
    assert body["error"]["message"] and "Traceback" not in resp.text
    assert body["error"]["type"] == ("invalid_request_error" if status < 500 else "api_error")
    return body["error"]


async def test_every_route_answers_wrong_methods_and_oversized_input_in_one_shape(infra, tmp_path):
    app = create_app(_settings(infra, tmp_path))

    async def boom():
        raise RuntimeError("secret internals")

    app.add_api_route("/test/boom", boom)
    async with _client(app) as ui:
        routes = [r for r in _api_routes(app.routes) if not r.path.startswith("/test/")]
        assert {(m, r.path) for r in routes for m in r.methods} == ROUTES
        for route in routes:
            on_path = {m for r in routes if r.path == route.path for m in r.methods}  # GET and POST /api/keys
            for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                if method not in on_path:
                    resp = await ui.request(method, route.path)
                    assert _shaped(resp, 405)["code"] == "method_not_allowed"
                    assert set(resp.headers["allow"].split(", ")) >= on_path
            method = sorted(route.methods)[0]
            big = b"{" + b" " * MAX_BODY_BYTES + b"}"
            resp = await ui.request(method, route.path, content=big, headers={"content-type": "application/json"})
            assert _shaped(resp, 413)["code"] == "payload_too_large"

            async def chunks():  # no Content-Length: refused while it arrives
                for _ in range(MAX_BODY_BYTES // 1024 + 2):
                    yield b" " * 1024

            _shaped(await ui.request(method, route.path, content=chunks()), 413)
            resp = await ui.request(method, f"{route.path}?q={'x' * (MAX_QUERY_BYTES + 1)}")
            assert _shaped(resp, 414)["code"] == "uri_too_long"
            for param in route.dependant.query_params:  # every declared parameter, far too long
                resp = await ui.get(route.path, params={param.alias: "7" * 5000})
                assert _shaped(resp, 400)["code"] == "invalid_request", (route.path, param.alias)

        assert _shaped(await ui.get("/api/nope"), 404)["message"] == "no such route: GET /api/nope"
        _shaped(await ui.post("/api/usage/history/extra"), 404)

        # bodies: not JSON, not an object, unknown or overlong fields: 400 before anything goes over NATS
        for path, body in [
            ("/api/router/pin", b"{oops"), ("/api/router/pin", b"[]"), ("/api/router/pin", b'{"provider": 5}'),
            ("/api/router/pin", b'{"provider": "' + b"p" * 65 + b'"}'), ("/api/router/pin", b'{"provder": "x"}'),
            ("/api/router/smart", b'{"enabled": "perhaps"}'), ("/api/dev/simulate", b"{oops"),
            ("/api/dev/simulate", b'{"providers": ["' + b"p" * 65 + b'"]}'), ("/api/dev/simulate", b'{"count": 0}'),
        ]:
            resp = await ui.post(path, content=body, headers={"content-type": "application/json"})
            assert _shaped(resp, 400)["code"] == "invalid_request", (path, body[:40])
        for path, params in [
            ("/api/requests", {"provider": "p" * 257}), ("/api/requests", {"model": "m" * 257}),
            ("/api/requests", {"cursor": "c" * 201}), ("/api/usage/history", {"group_by": ",".join(["model"] * 9)}),
            ("/api/usage/history", {"bucket_s": 10}), ("/api/usage/current", {"x": 1}),
            ("/api/usage/dead-letters", {"limit": 501}), ("/api/usage/stats", {}),
            ("/api/usage/stats", {"since": "yesterday"}), ("/api/usage/stats", {"since": "2026-01-01", "limit": 0}),
        ]:
            _shaped(await ui.get(path, params=params), 400)

        # no service answers: a clean 503; a bug: a 500 that tells nothing of the internals
        assert _shaped(await ui.get("/api/usage/current"), 503)["code"] == "unavailable"
        resp = await ui.get("/test/boom")
        assert _shaped(resp, 500)["message"] == "internal error" and "secret" not in resp.text


async def test_openapi_document_has_schemas_and_the_error_shape(infra, tmp_path):
    async with _client(create_app(_settings(infra, tmp_path))) as ui:
        doc = (await ui.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    assert {"ErrorResponse", "ErrorBody", "UsageRequests", "UsageHistory", "UsageDeadLetters", "PinBody",
            "PinReply", "RouterState"} <= set(schemas)
    assert "HTTPValidationError" not in schemas
    assert {"KeyView", "KeyCreate", "KeyList", "KeyWithSecret", "KeyUsageReply", "LoginBody", "SessionInfo"} <= set(schemas)
    assert "hash" not in schemas["KeyView"]["properties"] and "secret" in schemas["KeyWithSecret"]["properties"]
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "session"}
    assert "security" not in doc["paths"]["/healthz"]["get"] and doc["paths"]["/api/keys"]["post"]["security"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert "422" not in op["responses"], (method, path)
            assert op["responses"]["4XX"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorResponse"}
    requests_op = doc["paths"]["/api/requests"]["get"]
    assert {p["name"] for p in requests_op["parameters"]} >= {"provider", "cursor", "limit", "since"}
    assert requests_op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UsageRequests"}
    assert "requestBody" in doc["paths"]["/api/dev/simulate"]["post"]
    # the overview's errors and latency, the keys' days, the pricing page's table status: typed for the UI
    assert {"UsageStats", "StatsRow", "DayTotals", "PricingReply", "PricingStatus"} <= set(schemas)
    assert doc["paths"]["/api/pricing"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PricingReply"}
    assert "days" in schemas["KeyUsageReply"]["properties"]


# ---- schemathesis ---------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def _fake_router_and_pricing(nc):
    """Just enough of the router and the pricing service for ui-api's routes to get real answers."""
    router = await add_service(nc, name="router", version="0.0.1", queue_group="fake-router")
    pricing = await add_service(nc, name="pricing", version="0.0.1", queue_group="fake-pricing")
    state = RouterState()

    async def on_state(req):
        await req.respond(state.encode())

    async def on_pin(req):
        state.pinned = PinCommand.decode(req.data).provider
        await req.respond(state.encode())

    async def on_smart(req):
        enabled = SmartCommand.decode(req.data).enabled
        state.smart = (not state.smart) if enabled is None else enabled
        await req.respond(state.encode())

    async def on_prices(req):
        await req.respond(PriceList(prices=[]).encode())

    await router.add_endpoint(name="state", subject=subjects.ROUTER_STATE, handler=on_state)
    await router.add_endpoint(name="pin", subject=subjects.ROUTER_PIN, handler=on_pin)
    await router.add_endpoint(name="smart", subject=subjects.ROUTER_SMART, handler=on_smart)
    await pricing.add_endpoint(name="list", subject=subjects.PRICING_LIST, handler=on_prices)
    try:
        yield
    finally:
        await router.stop()
        await pricing.stop()


@contextlib.contextmanager
def _ui_server(settings: UiApiSettings):
    """ui-api as it runs (uvicorn, HTTP), in a thread with its own event loop."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, loop="asyncio",
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="ui-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "ui-api did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


# per generation mode (valid and invalid input, credentials declared). At 75 the admin API's operations had
# grown to ~2 min of make test (CI, 2 cores), the longest test by far; 50 as the edge's fuzz: ~80 s.
# LLMGW_FUZZ_EXAMPLES=500 for a deeper run by hand (make test keeps the default)
EXAMPLES_PER_OPERATION = int(os.environ.get("LLMGW_FUZZ_EXAMPLES", "50"))
NOT_CHECKED_FOR_5XX = {"/api/health"}  # its 503 says that a part of the gateway is down: its whole point
# a key in the session's shared NATS would lock every other test's gateway (test_admin_auth creates keys
# through the API against a NATS of its own)
# a compare sends prompts through whatever edge answers on LLMGW_EDGE_PORT (8080) of this machine: its body's
# validation is tested in tests/e2e/test_ui_live.py
NOT_FUZZED = {("POST", "/api/keys"), ("POST", "/api/compare")}
TRANSPORT_HEADERS = {"content-length", "transfer-encoding", "host", "connection"}


def _runner(strategy, base_url: str, checks: list, calls: list):
    import hypothesis

    @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                         phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=strategy)
    def run(case):
        # framing headers are the transport's, not the API's: a malformed one is refused by the HTTP server
        # itself (uvicorn's plain-text "Invalid HTTP request received.") before any route sees the request
        for name in [h for h in (case.headers or {}) if h.lower() in TRANSPORT_HEADERS]:
            del case.headers[name]
        response = case.call(base_url=base_url, timeout=30, headers=ADMIN_HEADERS)
        calls.append(response.status_code)
        case.validate_response(response, checks=checks)

    return run


def _fuzz(base_url: str, calls: list[int]) -> list[str]:
    """Every operation of ui-api's OpenAPI document with schemathesis-generated requests, valid and invalid;
    returns the failures (a 5xx, an error not in the one shape, a response its schema does not allow)."""
    import hypothesis
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=ADMIN_HEADERS)
    failures: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) in NOT_FUZZED:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            checks = [content_type_conformance, response_schema_conformance]
            if op.path not in NOT_CHECKED_FOR_5XX:
                checks.append(not_a_server_error)

            try:
                _runner(op.as_strategy(generation_mode=mode), base_url, checks, calls)()
            except hypothesis.errors.Unsatisfiable:  # no invalid input exists (an operation without inputs)
                assert mode is GenerationMode.NEGATIVE
            except Exception as exc:  # noqa: BLE001 - collected: every operation gets its turn
                failures.append(f"{op.method.upper()} {op.path} ({mode.value}): {str(exc)[:1500]}")
    return failures


async def test_schemathesis_finds_no_server_error(env, tmp_path):  # noqa: F811 - env is a fixture
    pytest.importorskip("schemathesis")  # the test extra (pyproject.toml)
    settings = _settings(env.infra, tmp_path)
    async with running_usage(env), _fake_router_and_pricing(env.nc):
        with _ui_server(settings) as base_url:
            calls: list[int] = []
            failures = await asyncio.to_thread(_fuzz, base_url, calls)
    assert not failures, "\n\n".join(failures)
    assert 100 <= len(calls) <= 64 * EXAMPLES_PER_OPERATION
    assert any(c == 200 for c in calls) and any(c == 400 for c in calls)
