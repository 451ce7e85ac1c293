"""ui-api service: the admin REST API (and, later, the web UI).

It is the only writer of the config; reads of usage go to the usage service
over NATS (chDB belongs to the usage process alone). Every route but
``/healthz`` and ``/api/health`` needs the admin or the read-only token, or a
login session (``auth``); the tokens are loaded, or generated into the state
dir, at start-up.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from pydantic import Field, SecretStr
from starlette.responses import JSONResponse

from llmgw_common import health, metrics, ops_port, tracing
from llmgw_common.admin_auth import (
    ADMIN_TOKEN_ENV,
    READONLY_TOKEN_ENV,
    AdminCredentials,
    AdminTokenError,
    SessionStore,
)
from llmgw_common.brute_force import ADMIN_REALM, SharedFailureLimiter
from llmgw_common.http_server import json_error_protocol
from llmgw_common.logs import setup_logging
from llmgw_common.nats_conn import connect_nats
from llmgw_common.redis_conn import connect_redis
from llmgw_common.service import config_follower, instance_id, package_version
from llmgw_common.settings import CommonSettings

from . import errors, web
from .auth import AdminAuth, AuthMiddleware
from .routes_auth import router as auth_router
from .routes_compare import router as compare_router
from .routes_config import router as config_router
from .routes_keys import router as keys_router
from .routes_live import router as live_router
from .routes_pricing import router as pricing_router
from .routes_router import router as router_routes
from .routes_usage import router as usage_router

log = logging.getLogger("llmgw.ui-api")


class UiApiSettings(CommonSettings):
    host: str = Field(default="127.0.0.1", alias="LLMGW_UI_HOST")
    port: int = Field(default=8081, alias="LLMGW_UI_PORT")
    query_timeout_s: float = Field(default=5.0, alias="LLMGW_UI_QUERY_TIMEOUT_S")
    # unset: generated into <state dir>/admin-token and admin-token-readonly (llmgw_common.admin_auth)
    admin_token: SecretStr | None = Field(default=None, alias=ADMIN_TOKEN_ENV)
    admin_readonly_token: SecretStr | None = Field(default=None, alias=READONLY_TOKEN_ENV)


BACKEND_SERVICES = ("router", "usage", "pricing")


def load_credentials(settings: UiApiSettings) -> AdminCredentials:
    """The admin and read-only tokens (environment, else the state dir's files, generated if absent); logs
    where they come from, never the tokens."""
    given = {ADMIN_TOKEN_ENV: settings.admin_token, READONLY_TOKEN_ENV: settings.admin_readonly_token}
    credentials = AdminCredentials.load(settings.state_dir, {k: v.get_secret_value() for k, v in given.items() if v})
    where = {role: f"in {source}" if source.startswith("LLMGW_") else f"in the file {source}"
             for role, source in credentials.sources.items()}
    # worded so that the log redaction (llmgw_common.logs) finds no credential-shaped text in it to mask
    log.info("admin API login: the admin token is %s, the read-only token %s; send one as a bearer token, or "
             "enter it on the web UI's login page (only /healthz and /api/health answer without one)",
             where["admin"], where["readonly"])
    return credentials


class _PublicPort:
    """ui-api's public port with an operations port: ``GET /metrics`` answers the admin API's own 404."""

    def __init__(self, app):
        self.app = ops_port.public_port(app, not_found=self._not_found)

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)

    @staticmethod
    async def _not_found(scope, receive, send) -> None:
        await errors.error_response(404, "Not found.", "not_found")(scope, receive, send)


def create_app(settings: UiApiSettings, credentials: AdminCredentials | None = None) -> FastAPI:
    """The app; its tokens are ``credentials``, else loaded (or generated) when it starts."""
    auth = AdminAuth()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings
        # before serving (a request before that is refused: no route is ever answered open)
        auth.credentials = credentials or load_credentials(settings)
        app.state.nc = await connect_nats(settings.nats_url, "llmgw-ui-api")
        # shared by every replica: login sessions in a NATS bucket, failed-token counts in Redis
        auth.sessions = await SessionStore.open(app.state.nc.jetstream())
        redis = connect_redis(settings.redis_url, max_connections=4)
        auth.limiter = SharedFailureLimiter(ADMIN_REALM, redis)
        # the config bucket (seeded from the file when empty): the editor writes it, the routes read this copy
        follower = app.state.config_follower = config_follower()
        await follower.start(app.state.nc.jetstream(), settings.config_path)
        follower.follow()
        await follower.answer_revisions(app.state.nc, "ui-api", instance_id())
        # metrics and health on their own port, when asked (ops_port): ready = its own NATS connection
        ops = await ops_port.start_from_env(lambda: _health_monitor(app).report(), ready=("nats",))
        try:
            yield
        finally:
            if ops is not None:
                await ops.stop()
            await redis.aclose()
            await follower.stop()
            await app.state.nc.drain()

    # no /docs or /redoc: a browser opening them sends no credential (the OpenAPI document is /openapi.json)
    app = FastAPI(title="LLM Gateway admin API", version=package_version(), lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.admin_auth = auth

    errors.install(app)  # one error shape for every 4xx / 5xx, input limits, the OpenAPI document
    app.add_middleware(AuthMiddleware, auth=auth)  # outermost: a credential before anything else runs
    # outside auth: counts every request, refused ones too, and answers GET /metrics (a scraper holds no
    # admin token; LLMGW_METRICS_TOKEN makes it want one of its own)
    metrics.HttpMetrics.install(app, "llmgw.ui-api")
    if ops_port.configured():  # outermost: GET /metrics is the operations port's, a 404 here
        app.add_middleware(_PublicPort)

    @app.get("/healthz")
    async def healthz(request: Request):
        ok = request.app.state.nc.is_connected
        return JSONResponse({"status": "ok" if ok else "degraded", "nats": ok}, status_code=200 if ok else 503)

    @app.get("/api/health")
    async def health_all(request: Request):
        """The whole gateway as the admin API sees it: NATS, JetStream, Redis, every back-end service
        answering its NATS micro-service PING (any replica will do), ClickHouse as the usage service
        answers for it. Cached ~1 s; 503 while one is down (docs/reliability.md)."""
        report = await _health_monitor(request.app).report()
        services = {name: report.check(name).ok for name in BACKEND_SERVICES}  # the body as it was before
        return JSONResponse(report.body(services=services), status_code=report.status_code)

    def _health_monitor(app: FastAPI) -> health.HealthMonitor:
        monitor = getattr(app.state, "health", None)
        if monitor is None:
            nc = app.state.nc
            monitor = app.state.health = health.HealthMonitor([
                health.Check("nats", health.nats_connected(nc)),
                health.Check("jetstream", health.jetstream(nc)),
                health.Check("redis", health.redis_ping(connect_redis(settings.redis_url, max_connections=2))),
                *(health.Check(name, health.service_ping(nc, name)) for name in BACKEND_SERVICES),
                health.Check("clickhouse", health.clickhouse_via_usage(nc), timeout_s=2.0),
                health.Check("config", health.config_revision(app.state.config_follower), required=False),
            ])
        return monitor

    app.include_router(pricing_router)  # GET /api/pricing
    app.include_router(usage_router)  # GET /api/usage/current|history, GET /api/requests, POST /api/dev/simulate
    app.include_router(router_routes)  # GET /debug/router, POST /api/router/pin|smart
    app.include_router(auth_router)  # POST /api/login|logout, GET /api/session
    app.include_router(keys_router)  # /api/keys...
    app.include_router(config_router)  # GET|PUT /api/config, POST /api/config/validate|rollback, GET /api/config/history
    app.include_router(live_router)  # GET /api/live (Server-Sent Events, one shared source)
    app.include_router(compare_router)  # POST /api/compare (one prompt to several targets through the edge)
    web.install(app)  # the web UI at / (web.py: the built app, no credential for its files; any route still wins)
    return app


def run() -> None:
    settings = UiApiSettings()
    setup_logging("ui-api", settings.log_level)
    tracing.setup("ui-api")
    try:  # a token that cannot be used stops the start here, with a clear message
        credentials = load_credentials(settings)
    except AdminTokenError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
    uvicorn.run(create_app(settings, credentials), host=settings.host, port=settings.port, loop="uvloop",
                http=json_error_protocol({"type": "invalid_request_error", "code": "invalid_http_request"}),
                access_log=False, log_level="warning", timeout_graceful_shutdown=10)
