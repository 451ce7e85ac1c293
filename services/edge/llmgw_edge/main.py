"""Edge service: the HTTP front clients talk to (OpenAI-compatible).

Wiring only: settings, shared clients (one pooled aiohttp session, one NATS
connection, one usage publisher) created once at start-up, thin routes.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from llmgw_common.config import load_config_or_default, resolve_secret
from llmgw_common.logs import setup_logging
from llmgw_common.nats_conn import connect_nats
from pydantic import Field

from llmgw_common.settings import CommonSettings

from .chat import EdgeContext, chat_completions
from .classifier import ModelClassifier
from .request_log import recent_requests_text
from .errors import GatewayError
from .models import list_models
from .providers.http import create_session
from .usage_publisher import UsagePublisher

log = logging.getLogger("llmgw.edge")


class EdgeSettings(CommonSettings):
    host: str = Field(default="127.0.0.1", alias="LLMGW_EDGE_HOST")
    port: int = Field(default=8080, alias="LLMGW_EDGE_PORT")


def error_response(err: GatewayError) -> Response:
    return Response(err.openai_json(), status_code=err.status, media_type="application/json",
                    headers=err.headers)


def create_app(settings: EdgeSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        config = load_config_or_default(settings.config_path)
        nc = await connect_nats(settings.nats_url, "llmgw-edge")
        publisher = UsagePublisher(nc.jetstream(), settings.state_dir / f"edge-{settings.port}-unsent-usage.ndjson")
        await publisher.start()
        # one pooled client for every upstream: no per-request connection set-up
        http = create_session()
        smart = config.routing.smart
        classifier = ModelClassifier(http, f"http://127.0.0.1:{settings.port}", smart.classifier_model,
                                     smart.classifier_timeout_s, smart.cache_size) if smart.classifier_model else None
        app.state.ctx = EdgeContext(config=config, secrets={p.id: resolve_secret(p.api_key) for p in config.providers},
                                    http=http, nc=nc, publish=publisher.submit,
                                    recent_requests=lambda n: recent_requests_text(nc, n),
                                    classify_with_model=classifier)
        app.state.started = int(time.time())
        log.info("edge ready on %s:%d with %d providers", settings.host, settings.port, len(config.providers))
        try:
            yield
        finally:
            await publisher.stop()
            await http.close()
            await nc.drain()

    app = FastAPI(title="LLM Gateway", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(GatewayError)
    async def gateway_error(_request: Request, exc: GatewayError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError):
        return error_response(GatewayError(400, str(exc.errors()[0].get("msg", "invalid request"))))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(GatewayError(exc.status_code, str(exc.detail), type_))

    @app.exception_handler(Exception)
    async def unexpected_error(_request: Request, exc: Exception):
        log.exception("unhandled error")
        return error_response(GatewayError(500, "The gateway hit an internal error.", "server_error",
                                           code="internal_error"))

    @app.post("/v1/chat/completions")
    async def post_chat_completions(request: Request) -> Response:
        return await chat_completions(request.app.state.ctx, await request.body(), request.headers)

    @app.get("/v1/models")
    async def get_models(request: Request) -> JSONResponse:
        return JSONResponse(list_models(request.app.state.ctx.config, request.app.state.started))

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        ok = request.app.state.ctx.nc.is_connected
        return JSONResponse({"status": "ok" if ok else "degraded", "nats": ok}, status_code=200 if ok else 503)

    return app


def run() -> None:
    settings = EdgeSettings()
    setup_logging("edge", settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", timeout_graceful_shutdown=10)
