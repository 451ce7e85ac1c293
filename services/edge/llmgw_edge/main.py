"""Edge service: the HTTP front clients talk to (OpenAI and Anthropic formats).

Wiring only: settings, shared clients (one pooled HTTP transport, one NATS
connection, one usage publisher, one adapter per configured provider) created
once at start-up, and thin routes: each holds its format's codec, lets the
gateway (``core/gateway.py``) do the work and turns its ``Reply`` into a
response. Every error is rendered in the format of the route it came to.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import ipaddress
import logging
import os
import socket
import time
from contextlib import asynccontextmanager
from typing import Any, Awaitable, Callable

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from llmgw_common import health, metrics, ops_port, subjects, tracing
from llmgw_common.config import GatewayConfig
from llmgw_common.http_server import json_error_protocol
from llmgw_common.ids import new_id
from llmgw_common.keys import KeyRecord
from llmgw_common.logs import setup_logging
from llmgw_common.nats_conn import connect_nats
from llmgw_common.redis_conn import connect_redis
from llmgw_common.service import config_follower, package_version, run_steps
from llmgw_common.settings import CommonSettings

from . import router_client
from .asgi_routes import ClientRoutes, raw_headers
from .api import anthropic_messages, models, openai_chat, passthrough, schemas
from .api.body import read_body
from .api.anthropic_messages import AnthropicCodec, CountTokensCodec
from .api.embeddings import EmbeddingsCodec
from .api.openai_chat import OpenAIChatCodec
from .api.openai_responses import ResponsesCodec
from .auth import KeyCache, check_metered, check_model
from .classifier import ModelClassifier
from .commands import command_runner
from .core.capacity import CapacityCache
from .core.errors import GatewayError
from .core.gateway import Deps, Gateway, Reply
from .core.plans import PlanCache
from .core.prompt_class import classify
from .give_ups import GiveUps
from .lease_client import LeaseClient
from .lease_renewal import renew_leases
from .outcomes import outcome_reporter
from .providers import build_provider
from .providers.http import AiohttpTransport
from .request_log import recent_requests_text
from .refusals import RefusalRecorder
from .usage_publisher import UsagePublisher, replica_id

log = logging.getLogger("llmgw.edge")
LEASE_SWEEP_S = 0.2


class EdgeSettings(CommonSettings):
    host: str = Field(default="127.0.0.1", alias="LLMGW_EDGE_HOST")
    port: int = Field(default=8080, alias="LLMGW_EDGE_PORT")
    reuse_port: bool = Field(default=False, alias="LLMGW_EDGE_REUSE_PORT",
                             description="share the port with other edge replicas on this machine (SO_REUSEPORT)")


class Edge:
    """The running edge: what the routes need, and its config, which can change while it runs.

    ``apply`` swaps in a new config between two requests: adapters whose provider config did not change
    are kept (pooled connections, a Copilot token), new ones are built, removed ones are closed once the
    requests still using them are done. A request in flight keeps the provider it has.
    """

    def __init__(self, settings: EdgeSettings, nc, keys: KeyCache, transport: AiohttpTransport,
                 publish: Callable[[Any], None]):
        self.settings = settings
        self.nc = nc
        self.keys = keys
        self.transport = transport
        self.started = int(time.time())
        self.replica = os.environ.get("LLMGW_REPLICA_ID") or None
        self.config = GatewayConfig()
        self.providers: dict[str, Any] = {}
        self.classifier: ModelClassifier | None = None
        self.refusals = RefusalRecorder(publish)  # requests refused before any provider, as usage events
        self.give_ups = GiveUps(nc, lambda: self.config.routing.lease_s)  # questions the router must release
        # routes with limits on a reused plan: admitted here from capacity the router leases this edge
        self.lease_client = LeaseClient(nc, lambda: self.config.routing)
        # this process, not the replica's name (a restarted edge-1 is another process): routers ask it whether
        # it is alive on subjects.edge_alive(instance) before they wait out a lease it never gave back
        self.instance = f"{replica_id(settings.port)[:96]}-{new_id()}"
        self.capacity = CapacityCache(self.instance, self.lease_client.ask, self.lease_client.give_back,
                                      lambda: self.config.routing.lease_ttl_s,
                                      report_use=self.lease_client.report_use)
        self._retired: set[asyncio.Task] = set()
        self.gateway = Gateway(Deps(config=self.config, providers=self.providers, decide=self._decide,
                                    report=outcome_reporter(nc), publish=publish,
                                    classify_prompt=self._classify_prompt,
                                    command=command_runner(self, lambda n: recent_requests_text(nc, n)),
                                    key_record=lambda key_id: self.keys.records.get(key_id) if key_id else None,
                                    capacity=self.capacity))

    def apply(self, config: GatewayConfig) -> None:
        providers = {}
        for p in config.providers:
            kept = self.providers.get(p.id)
            providers[p.id] = kept if kept is not None and kept.config == p else \
                build_provider(p, self.transport, self.settings.state_dir)
        retired = [old for pid, old in self.providers.items() if providers.get(pid) is not old]
        smart = config.routing.smart
        self.classifier = ModelClassifier(self._ask_self, smart.classifier_model, smart.classifier_timeout_s,
                                          smart.cache_size) if smart.classifier_model else None
        # no await from here on: every request sees the old config or the new one, never half of each
        self.config = config
        self.providers = providers
        self.gateway.deps.config = config
        self.gateway.deps.providers = providers
        self.keys.require_keys = config.edge.require_keys
        self.gateway.plans.drop_all()  # made under the old config
        for old in retired:  # closed once the requests that hold them are surely over
            task = asyncio.get_running_loop().create_task(self._close_later(old, config.routing.total_timeout_s))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    async def on_router_changed(self, _msg) -> None:
        """A router applied a change that may reorder routes (pin, cooldown, breaker...): plans are asked again."""
        self.gateway.plans.drop_all()

    async def _close_later(self, provider, after_s: float) -> None:
        await asyncio.sleep(after_s)
        await provider.close()

    async def sweep_leases(self) -> None:
        """Capacity leases that ended go back to the router (what they did not admit frees up at once)."""
        while True:
            await asyncio.sleep(LEASE_SWEEP_S)
            self.capacity.sweep()

    async def close(self) -> None:
        for task in list(self._retired):
            task.cancel()
        await self.capacity.close()  # every lease held goes back: what it did not admit frees up now
        await self.lease_client.close()
        await self.give_ups.close()  # undelivered give-ups: their admissions end with their leases
        for provider in self.providers.values():
            await provider.close()

    async def caller(self, request: Request) -> KeyRecord | None:
        """The caller's gateway key (None while keys are not enforced); 401 / 429 when it fails."""
        address = request.client.host if request.client else "unknown"
        return await self.keys.authenticate(request.headers, address)

    async def _decide(self, route_request):
        return await router_client.decide(self.nc, route_request, self.config.routing.decide_timeout_s,
                                          self.give_ups.send)

    async def _ask_self(self, body: bytes) -> bytes | None:
        """The classifier's question, through this gateway in-process: routed and counted, no HTTP."""
        codec = OpenAIChatCodec()
        reply = await self.gateway.handle(codec.parse(body, {"x-llmgw-internal": "classifier"}), codec)
        return reply.body if reply.status == 200 else None

    async def _classify_prompt(self, text: str, headers) -> str | None:
        smart, classifier = self.config.routing.smart, self.classifier
        if smart.enabled and classifier is not None and headers.get("x-llmgw-internal") != "classifier":
            found = await classifier(text)
            if found:
                return found
        return classify(text)


# A request allocates a few hundred objects (ASGI scope, parsed body, candidates, the usage event, aiohttp's
# request and response): at the default threshold (700) the young generation was collected every few
# requests, and the older ones, which hold every object alive since start-up, far more often than the few
# cycles a request leaves need. As the usage service: start-up's objects frozen, collections every 50,000.
GC_THRESHOLDS = (50_000, 20, 100)


def _tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _answer_alive(msg) -> None:
    """A router asks whether this edge process is alive (llmgw_router.dead_edges): being here says yes."""
    await msg.respond(b"")


def _response(reply: Reply, replica: str | None = None) -> Response:
    if replica:  # which edge replica answered (the runner and compose name them: edge-1, edge-2...)
        reply.headers["x-llmgw-edge"] = replica
    if reply.stream is not None:
        return StreamingResponse(reply.stream, status_code=reply.status, media_type=reply.media_type,
                                 headers=reply.headers)
    return Response(reply.body, status_code=reply.status, media_type=reply.media_type, headers=reply.headers)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


ErrorBody = Callable[[GatewayError], bytes]  # a codec's ``render_error``: the body in its callers' format


def rendered_error(err: GatewayError, render: ErrorBody = openai_chat.error_body
                   ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An error as ``render`` writes it (the route's codec): status, raw headers, body."""
    body = render(err)
    # every answer can be traced, errors the gateway made before routing included
    headers = {"x-request-id": new_id(), "x-llmgw-attempts": "0", **err.headers}
    return err.status, raw_headers(headers, "application/json", len(body)), body


def error_response(err: GatewayError, render: ErrorBody = openai_chat.error_body) -> Response:
    status, raw, body = rendered_error(err, render)
    response = Response(body, status_code=status)
    response.raw_headers = raw
    return response


def errors_in(render: ErrorBody | None = None, by_request: Callable[[Request], ErrorBody] | None = None):
    """A FastAPI route whose errors (and unexpected failures) are answered in its callers' format: ``render``
    (its codec's), or for a route that serves both formats, the one ``by_request`` picks."""
    def wrap(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
        @functools.wraps(handler)
        async def route(request: Request, *args, **kwargs) -> Response:
            try:
                return await handler(request, *args, **kwargs)
            except GatewayError as err:
                failure = err
                record_refusal(request, err)
            except Exception:
                log.exception("unhandled error")
                failure = internal_error()
            return error_response(failure, render or by_request(request))  # type: ignore[misc]
        return route
    return wrap


def record_refusal(request: Request, err: GatewayError) -> None:
    """A request refused before any provider served it (a pass-through call): a usage event too. Reads are
    left out (health pollers, model lists)."""
    edge = getattr(request.app.state, "edge", None)
    if err.recorded or edge is None or request.method in ("GET", "HEAD"):
        return
    endpoint = "passthrough" if "provider_id" in request.path_params else \
        request.url.path.removeprefix("/v1/").replace("/", ".")[:64]
    edge.refusals.record(err, endpoint, getattr(request.state, "key_id", None),
                         getattr(request.state, "model", None))


def internal_error() -> GatewayError:
    return GatewayError(500, "The gateway hit an internal error.", code="internal_error")


def models_format(request: Request) -> ErrorBody:
    """``/v1/models`` serves both formats: Anthropic's SDK says ``anthropic-version``."""
    return anthropic_messages.error_body if "anthropic-version" in request.headers else openai_chat.error_body


class EdgeApp(FastAPI):
    """FastAPI for the routes of few requests (models, health, pass-through) and the OpenAPI document; in
    front of it, the client-format routes as plain ASGI (``asgi_routes``) and the metrics / trace layer,
    which sees both."""

    front: Callable

    async def __call__(self, scope, receive, send) -> None:
        await self.front(scope, receive, send)


def create_app(settings: EdgeSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nc = await connect_nats(settings.nats_url, "llmgw-edge")
        follower = app.state.config_follower = config_follower()
        config = await follower.start(nc.jetstream(), settings.config_path)  # seeds an empty config bucket
        publisher = UsagePublisher(nc.jetstream(), settings.state_dir / "edge-unsent-usage",
                                   replica_id(settings.port))
        await publisher.start()
        redis = connect_redis(settings.redis_url, max_connections=8)  # failed key checks only (brute_force)
        keys = KeyCache(require_keys=config.edge.require_keys, redis=redis)
        await keys.start(nc.jetstream())
        if not keys.enforcing and not _loopback(settings.host):
            await keys.stop()
            await redis.aclose()
            raise SystemExit(
                f"refusing to listen on {settings.host}: no gateway API key exists, so anyone who can reach this "
                "address could spend the providers' keys. Create one first (`llmgw keys create --name NAME`, "
                "with NATS_URL pointing at this gateway's NATS) or listen on 127.0.0.1 (LLMGW_EDGE_HOST).")
        transport = AiohttpTransport()  # one pooled client for every upstream: no per-request set-up
        meter = metrics.UsageMeter(lambda: edge.config)  # each usage event into the request / token series
        edge = Edge(settings, nc, keys, transport, meter.wrap(publisher.submit))
        edge.apply(config)
        _tune_gc()
        app.state.edge = edge

        follower.follow([edge.apply])
        await follower.answer_revisions(nc, "edge", replica_id(settings.port))
        await nc.subscribe(subjects.ROUTER_CHANGED, cb=edge.on_router_changed)
        await nc.subscribe(subjects.edge_alive(edge.instance), cb=_answer_alive)
        renewer = asyncio.create_task(renew_leases(nc, edge.gateway.running, lambda: edge.config.routing.lease_s),
                                      name="lease-renewal")
        sweeper = asyncio.create_task(edge.sweep_leases(), name="capacity-lease-sweep")
        # metrics and health on their own port, when asked (ops_port): ready = its own NATS and JetStream
        ops = await ops_port.start_from_env(lambda: _health_monitor(app).report(), ready=("nats", "jetstream"))
        log.info("edge ready on %s:%d with %d providers", settings.host, settings.port, len(config.providers))
        try:
            yield
        finally:
            if ops is not None:
                await ops.stop()
            renewer.cancel()
            sweeper.cancel()
            edge.refusals.flush()
            await run_steps([("config follower", follower.stop), ("usage publisher", publisher.stop),
                             ("key cache", keys.stop), ("edge", edge.close),
                             ("upstream transport", transport.close), ("redis", redis.aclose),
                             ("nats", nc.drain)])

    app = EdgeApp(title="LLM Gateway", version=package_version(), lifespan=lifespan, docs_url=None, redoc_url=None)

    def error_body_of(request: Request) -> ErrorBody:
        """Errors no route handler answered (a wrong method, a bad path parameter): in the format of the
        client route the request reached, else (an unknown path) OpenAI's, the gateway's default."""
        codec_type = codec_of_path.get(getattr(request.scope.get("route"), "path", ""))
        return codec_type.render_error if codec_type is not None else openai_chat.error_body

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError):
        record_refusal(request, exc)
        return error_response(exc, error_body_of(request))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return error_response(GatewayError(400, str(exc.errors()[0].get("msg", "invalid request"))),
                              error_body_of(request))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(GatewayError(exc.status_code, str(exc.detail)), error_body_of(request))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception):
        log.exception("unhandled error")
        return error_response(internal_error(), error_body_of(request))

    def edge_of(request: Request) -> Edge:
        return request.app.state.edge

    async def body_of(request: Request) -> bytes:
        return await read_body(request.headers, request.stream(), edge_of(request).config.edge.max_body_bytes)

    def served_in_front(path: str, codec_type) -> Callable:
        @errors_in(codec_type.render_error)
        async def handle(request: Request) -> Response:
            # a request whose path reached FastAPI another way (a root path prefix, say): served the same way
            return _response(await front.handle(path, request.scope, request.headers, request.receive))
        return handle

    # one route per client format: its codec parses and renders (errors too), the gateway does the rest
    # (asgi_routes); the FastAPI routes are their OpenAPI operations
    client_routes = {"/v1/chat/completions": (OpenAIChatCodec, schemas.OPENAI_CHAT, "completions"),
                     "/v1/messages": (AnthropicCodec, schemas.ANTHROPIC_MESSAGES, "messages"),
                     "/v1/messages/count_tokens": (CountTokensCodec, schemas.ANTHROPIC_COUNT_TOKENS,
                                                   "post_count_tokens"),
                     "/v1/responses": (ResponsesCodec, schemas.OPENAI_RESPONSES, "responses"),
                     "/v1/embeddings": (EmbeddingsCodec, schemas.EMBEDDINGS, "embeddings")}
    for path, (codec_type, schema, name) in client_routes.items():
        app.add_api_route(path, served_in_front(path, codec_type), methods=["POST"],
                          openapi_extra=schemas.body(schema), name=name)
    codec_of_path = {path: codec_type for path, (codec_type, _schema, _name) in client_routes.items()}
    fastapi_call = FastAPI.__call__.__get__(app)
    front = ClientRoutes(fastapi_call, codec_of_path, lambda: app.state.edge, rendered_error)
    app.front = ops_port.public_port(metrics.HttpMetrics(front, "llmgw.edge", app.router),  # GET /metrics; every
                                     not_found=front)  # request counted; /metrics a 404 here with an ops port

    @app.get("/v1/models")
    @errors_in(by_request=models_format)
    async def get_models(request: Request) -> JSONResponse:
        edge = edge_of(request)
        key = await edge.caller(request)
        listed = models.list_models(edge.config, edge.started, key.allows_model if key else None)
        if "anthropic-version" in request.headers:
            return JSONResponse(models.anthropic_list(listed))
        return JSONResponse(listed)

    @app.get("/v1/models/{model_id:path}")
    @errors_in(by_request=models_format)
    async def get_model(request: Request, model_id: str) -> JSONResponse:
        edge = edge_of(request)
        key = await edge.caller(request)
        check_model(key, model_id)
        entry = models.retrieve_model(edge.config, edge.started, model_id)
        return JSONResponse(models.anthropic_model(entry) if "anthropic-version" in request.headers else entry)

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        """What serving a request needs: NATS, JetStream (usage events), a router, Redis (the router's
        admission: no routing without it). Cached ~1 s; 503 while one is down (docs/reliability.md). With an
        operations port (ops_port) the details are there, and this answers the status only."""
        report = await _health_monitor(request.app).report()
        return JSONResponse(ops_port.public_health(report), status_code=report.status_code)

    def _health_monitor(app: FastAPI) -> health.HealthMonitor:
        monitor = getattr(app.state, "health", None)
        if monitor is None:
            nc = app.state.edge.nc
            monitor = app.state.health = health.HealthMonitor([
                health.Check("nats", health.nats_connected(nc)),
                health.Check("jetstream", health.jetstream(nc)),
                health.Check("router", health.service_ping(nc, "router")),
                health.Check("redis", health.redis_ping(connect_redis(settings.redis_url, max_connections=2))),
                health.Check("plans", _plans_probe(app.state.edge.gateway.plans), required=False),
                health.Check("leases", _leases_probe(app.state.edge.capacity), required=False),
                health.Check("config", health.config_revision(app.state.config_follower), required=False),
            ])
        return monitor

    def _leases_probe(capacity: CapacityCache) -> health.Probe:
        async def probe() -> str:
            live = capacity.live_leases
            if capacity.router_lost:
                raise health.CheckFailed(f"degraded: serving from leases ({live} live), the router cannot be "
                                         "reached; routes with limits and no lease left are refused")
            return f"{live} capacity leases of routes with limits"

        return probe

    def _plans_probe(plans: PlanCache) -> health.Probe:
        async def probe() -> str:
            if plans.serving_without_router:
                raise health.CheckFailed(f"degraded: serving routes without limits from {len(plans)} plans, "
                                         "the router cannot be reached")
            return f"{len(plans)} plans of routes without limits"
        return probe

    def passthrough_format(request: Request) -> ErrorBody:
        edge = getattr(request.app.state, "edge", None)
        provider = edge.config.provider(request.path_params.get("provider_id", "")) if edge else None
        return passthrough.error_body_for(provider.type if provider else None)

    @errors_in(by_request=passthrough_format)
    async def provider_passthrough(request: Request, provider_id: str, path: str) -> Response:
        edge = edge_of(request)
        key = await edge.caller(request)
        request.state.key_id = key.id if key else None  # a refusal's usage event names them (gateway_error)
        if key is not None and not key.allows_provider(provider_id):
            raise GatewayError(403, f"This API key may not use provider `{provider_id}`.",
                               code="provider_not_allowed")
        version = request.url.path.split("/")[2]  # v1, or v1beta (Gemini's native API)
        codec, exchange = passthrough.parse(edge.config, provider_id, request.method, f"/{version}/{path}",
                                            request.url.query, await body_of(request), request.headers)
        request.state.model = exchange.model or None
        if exchange.model:
            check_model(key, exchange.model)
        if not exchange.routed:
            check_metered(key, provider_id, request.method, exchange.model or None)
        exchange.key_id = key.id if key else None
        return _response(await edge.gateway.handle(exchange, codec), edge.replica)

    for version in ("v1", "v1beta"):
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):  # one route each: one OpenAPI operation each
            app.add_api_route(f"/{{provider_id}}/{version}/{{path:path}}", provider_passthrough, methods=[method],
                              name=f"provider_{version}_{method.lower()}")

    return app


def run() -> None:
    settings = EdgeSettings()
    setup_logging("edge", settings.log_level)
    tracing.setup("edge")
    protocol = json_error_protocol({"type": "invalid_request_error", "param": None, "code": "invalid_http_request"})
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, loop="uvloop",
                            http=protocol, access_log=False, log_level="warning", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    if settings.reuse_port:
        # replicas on one machine share the port: the kernel spreads connections over them (SO_REUSEPORT)
        server.run(sockets=[_reuse_port_socket(settings.host, settings.port)])
    else:
        server.run()


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock
