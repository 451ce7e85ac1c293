"""The operations port (llmgw_common.ops_port): with ``LLMGW_METRICS_PORT`` set, every service serves
``/metrics``, ``/livez``, ``/readyz`` and the detailed ``/healthz`` there, and the edge's and ui-api's public
port keeps only the bare status (docker-compose.yml and deploy/k8s probe and scrape that port inside the
network). The router, usage and pricing get theirs from ``ServiceRuntime`` (the usage service's ClickHouse
readiness: test_usage_clickhouse_wait.py).

Real NATS (a server of this test's own, stopped and started again) and Redis; the apps run in this process
(httpx's ASGI transport for the public port, real HTTP for the operations port).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from llmgw_cli.infra import NatsServer, free_port
from llmgw_edge.main import EdgeSettings
from llmgw_edge.main import create_app as create_edge
from llmgw_pricing.main import PricingSettings
from llmgw_pricing.main import serve as serve_pricing
from llmgw_router.main import RouterSettings
from llmgw_router.main import serve as serve_router
from llmgw_ui_api.main import UiApiSettings
from llmgw_ui_api.main import create_app as create_ui_api

pytestmark = pytest.mark.integration


@pytest.fixture
def nats(tmp_path):
    server = NatsServer(tmp_path / "nats", log_file=tmp_path / "nats.log").start()
    yield server
    server.stop()


async def _until(fetch, want_status: int, timeout: float = 20.0) -> httpx.Response:
    """Poll ``fetch`` until it answers ``want_status`` (health is cached ~1 s and NATS reconnects in the
    background), within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        resp = await fetch()
        if resp.status_code == want_status or time.monotonic() > deadline:
            return resp
        await asyncio.sleep(0.2)


async def test_edge_metrics_and_health_move_to_the_operations_port(infra, nats, tmp_path, monkeypatch):
    ops = free_port()
    monkeypatch.setenv("LLMGW_METRICS_PORT", str(ops))
    monkeypatch.setenv("LLMGW_METRICS_HOST", "127.0.0.1")
    app = create_edge(EdgeSettings(NATS_URL=nats.url, REDIS_URL=infra.redis_url,
                                   LLMGW_CONFIG=str(tmp_path / "none.yaml"), LLMGW_STATE_DIR=str(tmp_path / "state")))
    async with app.router.lifespan_context(app):
        public = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge", timeout=10)
        inside = httpx.AsyncClient(base_url=f"http://127.0.0.1:{ops}", timeout=10)
        async with public, inside:
            # the public port: no exposition (the edge's own 404, OpenAI's error shape), no health details
            resp = await public.get("/metrics")
            assert resp.status_code == 404 and resp.json()["error"]["message"]
            resp = await public.get("/healthz")
            assert resp.status_code == 503  # no router runs: the gateway cannot serve
            assert resp.json() == {"status": "degraded"}

            # the operations port: everything, for the scraper and the probes
            resp = await inside.get("/metrics")
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
            assert "llmgw_http_requests_total" in resp.text
            assert (await inside.get("/livez")).status_code == 200
            ready = await _until(lambda: inside.get("/readyz"), 200)
            assert ready.status_code == 200, ready.text
            assert set(ready.json()["checks"]) == {"nats", "jetstream"}  # its own connections only
            detailed = await inside.get("/healthz")
            assert detailed.status_code == 503
            assert detailed.json()["checks"]["router"]["ok"] is False
            assert nats.url.rsplit(":", 1)[1] in detailed.json()["checks"]["nats"]["detail"]

            # NATS goes away: not ready, still alive; it comes back: ready again
            nats.stop()
            resp = await _until(lambda: inside.get("/readyz"), 503)
            assert resp.status_code == 503 and resp.json()["checks"]["nats"]["ok"] is False
            assert (await inside.get("/livez")).status_code == 200
            nats.start()
            resp = await _until(lambda: inside.get("/readyz"), 200)
            assert resp.status_code == 200, resp.text
    # stopped with the app: the port is closed
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{ops}/livez", timeout=5)


async def test_ui_api_metrics_move_to_the_operations_port(infra, nats, tmp_path, monkeypatch):
    ops = free_port()
    monkeypatch.setenv("LLMGW_METRICS_PORT", str(ops))
    monkeypatch.setenv("LLMGW_METRICS_HOST", "127.0.0.1")
    app = create_ui_api(UiApiSettings(NATS_URL=nats.url, REDIS_URL=infra.redis_url,
                                      LLMGW_CONFIG=str(tmp_path / "llmgw.yaml"),
                                      LLMGW_STATE_DIR=str(tmp_path / "state")))
    async with app.router.lifespan_context(app):
        public = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ui", timeout=10)
        inside = httpx.AsyncClient(base_url=f"http://127.0.0.1:{ops}", timeout=10)
        async with public, inside:
            resp = await public.get("/metrics")
            assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
            resp = await inside.get("/metrics")
            assert resp.status_code == 200 and "llmgw_http_requests_total" in resp.text
            ready = await _until(lambda: inside.get("/readyz"), 200)
            assert ready.status_code == 200 and set(ready.json()["checks"]) == {"nats"}
            assert (await inside.post("/readyz")).status_code == 405


def test_without_an_operations_port_the_public_port_serves_as_before(monkeypatch):
    from llmgw_common import ops_port

    monkeypatch.delenv("LLMGW_METRICS_PORT", raising=False)
    assert ops_port.configured() is None
    assert ops_port.configured({"LLMGW_METRICS_PORT": "9100"}) == ("0.0.0.0", 9100)


@pytest.fixture
def ops(monkeypatch) -> httpx.AsyncClient:
    port = free_port()
    monkeypatch.setenv("LLMGW_METRICS_PORT", str(port))
    monkeypatch.setenv("LLMGW_METRICS_HOST", "127.0.0.1")
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)


async def _answering(ops: httpx.AsyncClient, task: asyncio.Task) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert not task.done(), task.result()
        try:
            if (await ops.get("/livez")).status_code == 200:
                return
        except httpx.TransportError:
            assert time.monotonic() < deadline, "no operations port"
        await asyncio.sleep(0.1)


async def test_router_is_ready_with_nats_and_redis_only(infra, nats, tmp_path, ops):
    stop = asyncio.Event()
    away = RouterSettings(NATS_URL=nats.url, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
                          LLMGW_CONFIG=str(tmp_path / "none.yaml"), LLMGW_STATE_DIR=str(tmp_path / "state"))
    task = asyncio.create_task(serve_router(away, stop))
    async with ops:
        try:  # Redis away: alive (the load is retried), not ready, and it says why
            await _answering(ops, task)
            resp = await _until(lambda: ops.get("/readyz"), 503)
            checks = resp.json()["checks"]
            assert resp.status_code == 503 and not checks["redis"]["ok"] and not checks["serving"]["ok"]
            assert checks["nats"]["ok"]
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

        stop = asyncio.Event()
        settings = RouterSettings(NATS_URL=nats.url, REDIS_URL=infra.redis_url,
                                  LLMGW_CONFIG=str(tmp_path / "none.yaml"), LLMGW_STATE_DIR=str(tmp_path / "state"))
        task = asyncio.create_task(serve_router(settings, stop))
        try:
            await _answering(ops, task)
            resp = await _until(lambda: ops.get("/readyz"), 200)
            assert resp.status_code == 200 and resp.json()["status"] == "ready"
            assert set(resp.json()["checks"]) == {"nats", "serving", "redis"}
            assert (await ops.get("/metrics")).status_code == 200
            health = (await ops.get("/healthz")).json()
            assert health["checks"]["config"]["ok"]  # informational
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


async def test_pricing_readiness_follows_its_nats_connection(nats, tmp_path, ops):
    stop = asyncio.Event()
    settings = PricingSettings(NATS_URL=nats.url, LLMGW_CONFIG=str(tmp_path / "none.yaml"),
                               LLMGW_STATE_DIR=str(tmp_path / "state"))
    task = asyncio.create_task(serve_pricing(settings, stop))
    async with ops:
        try:
            await _answering(ops, task)
            resp = await _until(lambda: ops.get("/readyz"), 200)
            assert resp.status_code == 200 and set(resp.json()["checks"]) == {"nats", "serving"}
            nats.stop()
            resp = await _until(lambda: ops.get("/readyz"), 503)
            assert resp.status_code == 503 and not resp.json()["checks"]["nats"]["ok"]
            assert (await ops.get("/livez")).status_code == 200  # alive: nothing to restart
            nats.start()
            resp = await _until(lambda: ops.get("/readyz"), 200)
            assert resp.status_code == 200
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
