"""ui-api service: the admin REST API (and, later, the web UI).

It is the only writer of the config; reads of usage go to the usage service
over NATS (chDB belongs to the usage process alone).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from pydantic import Field
from starlette.responses import JSONResponse

from llmgw_common import health
from llmgw_common.config import ConfigError, load_config_or_default, masked
from llmgw_common.logs import setup_logging
from llmgw_common.nats_conn import connect_nats
from llmgw_common.redis_conn import connect_redis
from llmgw_common.settings import CommonSettings

from . import errors
from .routes_pricing import router as pricing_router
from .routes_router import router as router_routes
from .routes_usage import router as usage_router

log = logging.getLogger("llmgw.ui-api")


class UiApiSettings(CommonSettings):
    host: str = Field(default="127.0.0.1", alias="LLMGW_UI_HOST")
    port: int = Field(default=8081, alias="LLMGW_UI_PORT")
    query_timeout_s: float = Field(default=5.0, alias="LLMGW_UI_QUERY_TIMEOUT_S")


def _error(status: int, message: str, code: str) -> JSONResponse:
    return errors.error_response(status, message, code)


BACKEND_SERVICES = ("router", "usage", "pricing")


async def ping_services(nc, timeout: float = 1.0) -> dict[str, bool]:
    async def ping(name: str) -> bool:
        try:
            await nc.request(f"$SRV.PING.{name}", b"", timeout=timeout)
            return True
        except Exception:
            return False

    results = await asyncio.gather(*(ping(n) for n in BACKEND_SERVICES))
    return dict(zip(BACKEND_SERVICES, results))


def create_app(settings: UiApiSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings
        app.state.nc = await connect_nats(settings.nats_url, "llmgw-ui-api")
        try:
            yield
        finally:
            await app.state.nc.drain()

    app = FastAPI(title="LLM Gateway admin API", version="0.1.0", lifespan=lifespan)

    errors.install(app)  # one error shape for every 4xx / 5xx, input limits, the OpenAPI document

    @app.get("/healthz")
    async def healthz(request: Request):
        ok = request.app.state.nc.is_connected
        return JSONResponse({"status": "ok" if ok else "degraded", "nats": ok}, status_code=200 if ok else 503)

    @app.get("/api/health")
    async def health_all(request: Request):
        """The whole gateway as the admin API sees it: NATS, JetStream, Redis, every back-end service
        answering its NATS micro-service PING (any replica will do), ClickHouse as the usage service
        answers for it. Cached ~1 s; 503 while one is down (docs/reliability.md)."""
        monitor = getattr(request.app.state, "health", None)
        if monitor is None:
            nc = request.app.state.nc
            monitor = request.app.state.health = health.HealthMonitor([
                health.Check("nats", health.nats_connected(nc)),
                health.Check("jetstream", health.jetstream(nc)),
                health.Check("redis", health.redis_ping(connect_redis(settings.redis_url, max_connections=2))),
                *(health.Check(name, health.service_ping(nc, name)) for name in BACKEND_SERVICES),
                health.Check("clickhouse", health.clickhouse_via_usage(nc), timeout_s=2.0),
            ])
        report = await monitor.report()
        services = {name: report.check(name).ok for name in BACKEND_SERVICES}  # the body as it was before
        return JSONResponse(report.body(services=services), status_code=report.status_code)

    @app.get("/api/config")
    async def get_config(request: Request):
        path = request.app.state.settings.config_path
        try:
            config = load_config_or_default(path)
        except ConfigError as exc:
            return _error(500, str(exc), "invalid_config")
        return JSONResponse({"path": str(path), "config": masked(config)})

    app.include_router(pricing_router)  # GET /api/pricing
    app.include_router(usage_router)  # GET /api/usage/current|history, GET /api/requests, POST /api/dev/simulate
    app.include_router(router_routes)  # GET /debug/router, POST /api/router/pin|smart
    return app


def run() -> None:
    settings = UiApiSettings()
    setup_logging("ui-api", settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", timeout_graceful_shutdown=10)
