"""Prometheus metrics: every series the services export, named in one place (docs/observability.md).

Contracts: metric names, label names and buckets live here; services only record. Labels are LOW
cardinality by construction: a provider id and a logical model come from the config (a model name the
config does not know is ``unknown``: never the client's raw string), a route is an endpoint name or a
route template, a status an HTTP status code, a reason or outcome one of a fixed set.

Each service's group is created on first use (``edge()``, ``router()``, ``usage()``, ``pricing()``,
``http()``, ``nats()``), so a process exports its own series only. Series recorded once per request
(edge, ui-api, router decisions, NATS requests) are ``LoopCounter`` / ``LoopHistogram``: plain cells
written on the event loop and turned into samples only when scraped (prometheus_client's own take a lock
and validate on every call: ~0.5 µs a counter, ~1 µs a histogram); their label children are bound once
per label set and kept (``UsageMeter``, ``HttpMetrics``, ``RouterMeter``): one dict look-up and a few
additions per request, nothing allocated but the look-up key. Per-batch and background series use
prometheus_client's classes.

Exposition:
- edge and ui-api: ``GET /metrics`` on their own HTTP port (``HttpMetrics.install``); with
  ``LLMGW_METRICS_TOKEN`` set it wants ``Authorization: Bearer <token>``;
- router, usage, pricing: ``serve_from_env()``: an HTTP server on ``LLMGW_METRICS_PORT`` (host
  ``LLMGW_METRICS_HOST``, default 0.0.0.0) when that is set; unset (``llmgw run``, tests): none.
"""

from __future__ import annotations

import bisect
import functools
import hmac
import logging
import os
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, disable_created_metrics,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from . import tracing

log = logging.getLogger(__name__)

disable_created_metrics()  # no ``*_created`` series: half the scrape, nothing a dashboard reads

METRICS_PORT_ENV = "LLMGW_METRICS_PORT"
METRICS_HOST_ENV = "LLMGW_METRICS_HOST"
METRICS_TOKEN_ENV = "LLMGW_METRICS_TOKEN"
METRICS_PATH = "/metrics"
UNKNOWN = "unknown"

# seconds
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# events per batch
BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000)

TOKEN_KINDS = ("in", "out", "cached", "cache_write", "reasoning")
DECISION_OUTCOMES = ("admitted", "refused", "invalid", "error")
SKIP_REASONS = ("cooldown", "breaker", "limit", "budget", "not_allowed", "disabled", "already_tried",
                "context_window", "not_admitted", "other")


# ---- loop-local series (the hot paths) ------------------------------------------------------------------


class _Cell:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _Buckets:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket (not cumulative), the last one +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # the first bound >= value: Prometheus' le
        self.sum += value


class _LoopMetric:
    """A labelled series written by one event loop and read when scraped (a prometheus_client collector).

    Writers are the loop's own code (no lock: nothing awaits inside an update); a scrape on another thread
    (``serve_from_env``) sees each cell as it is, a histogram perhaps one observation apart from its sum."""

    _type = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), registry=REGISTRY):
        self._name, self._documentation, self._labelnames = name, documentation, tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        self._unlabelled = None if self._labelnames else self.labels()  # exported from the start, as 0
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str):
        child = self._children.get(values)
        if child is None:
            assert len(values) == len(self._labelnames), (self._name, values)
            child = self._children[values] = self._new_child()
        return child

    def _new_child(self) -> Any:
        raise NotImplementedError

    def describe(self) -> list:
        return [self._family()]

    def _family(self) -> Any:
        raise NotImplementedError


class LoopCounter(_LoopMetric):
    _type = "counter"

    def inc(self, amount: float = 1.0) -> None:
        """An unlabelled counter's increment."""
        if self._unlabelled is None:
            raise TypeError(f"{self._name} has labels: increment .labels(...) instead")
        self._unlabelled.value += amount

    def _new_child(self) -> _Cell:
        return _Cell()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = self._family()
        for values, cell in list(self._children.items()):
            family.add_metric(values, cell.value)
        yield family


class LoopHistogram(_LoopMetric):
    _type = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 buckets: Sequence[float] = REQUEST_BUCKETS, registry=REGISTRY):
        self._bounds = tuple(float(b) for b in buckets)
        self._le = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> _Buckets:
        return _Buckets(self._bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = self._family()
        for values, child in list(self._children.items()):
            counts, running, buckets = list(child.counts), 0, []
            for le, n in zip(self._le, counts):
                running += n
                buckets.append((le, running))
            family.add_metric(values, buckets, child.sum)
        yield family


# ---- the series ----------------------------------------------------------------------------------------


class EdgeMetrics:
    def __init__(self, registry=REGISTRY):
        self.requests = LoopCounter(
            "llmgw_edge_requests", "Requests the gateway routed and accounted (one per usage event), by route "
            "(endpoint), provider (none: no provider answered), logical model and HTTP status",
            ["route", "provider", "model", "status"], registry=registry)
        self.duration = LoopHistogram(
            "llmgw_edge_request_duration_seconds", "Whole request latency, a stream until its end",
            ["route", "provider", "model"], buckets=REQUEST_BUCKETS, registry=registry)
        self.ttft = LoopHistogram(
            "llmgw_edge_time_to_first_token_seconds", "Streams: time to the first upstream event",
            ["route", "provider", "model"], buckets=TTFT_BUCKETS, registry=registry)
        self.tokens = LoopCounter(
            "llmgw_edge_tokens", "Tokens by kind: in (whole prompt), out (whole output), cached and "
            "cache_write (parts of in), reasoning (part of out)", ["provider", "model", "kind"], registry=registry)
        self.cost = LoopCounter("llmgw_edge_cost_usd", "Cost of the accounted requests in USD",
                            ["provider", "model"], registry=registry)
        self.attempts = LoopCounter(
            "llmgw_edge_upstream_attempts", "Upstream attempts by provider and status (0: no HTTP answer)",
            ["provider", "status"], registry=registry)
        self.usage_queued = LoopCounter("llmgw_edge_usage_events_queued", "Usage events queued for JetStream",
                                    registry=registry)
        self.usage_published = LoopCounter("llmgw_edge_usage_events_published",
                                       "Usage events JetStream acknowledged", registry=registry)
        self.usage_spilled = LoopCounter("llmgw_edge_usage_events_spilled",
                                     "Usage events written to the spill file (queue full or shutdown)",
                                     registry=registry)
        self.usage_queue = Gauge("llmgw_edge_usage_queue_depth", "Usage events waiting to be published",
                                 registry=registry)


class RouterMetrics:
    def __init__(self, registry=REGISTRY):
        self.decisions = LoopCounter(
            "llmgw_router_decisions", "Routing decisions by outcome: admitted, refused (nobody admitted: 429), "
            "invalid (unknown model, a rule's rejection, a bad request), error (the router failed)",
            ["outcome"], registry=registry)
        self.decision_duration = LoopHistogram("llmgw_router_decision_duration_seconds",
                                           "Time to answer one decide request", buckets=FAST_BUCKETS,
                                           registry=registry)
        self.skipped = LoopCounter(
            "llmgw_router_skipped_candidates", "Providers passed over in a decision, by reason kind: "
            + ", ".join(SKIP_REASONS), ["provider", "reason"], registry=registry)
        self.breaker = Gauge("llmgw_router_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open",
                             ["provider"], registry=registry)
        self.cooldown = Gauge("llmgw_router_cooldown_seconds", "Cooldown left after a 429 (0: none)",
                              ["provider"], registry=registry)
        self.inflight = Gauge("llmgw_router_inflight", "Admitted requests not settled yet", ["provider"],
                              registry=registry)
        self.abandoned = Counter("llmgw_router_leases_abandoned",
                                 "Admission leases taken as abandoned (their edge never settled them)",
                                 registry=registry)


class UsageMetrics:
    def __init__(self, registry=REGISTRY):
        self.pending = Gauge("llmgw_usage_consumer_pending",
                             "Stream messages not yet delivered to the durable consumer (lag)", registry=registry)
        self.ack_pending = Gauge("llmgw_usage_consumer_ack_pending", "Messages delivered, not yet acknowledged",
                                 registry=registry)
        self.redelivered = Gauge("llmgw_usage_consumer_redelivered",
                                 "Messages delivered more than once and not yet acknowledged", registry=registry)
        self.batch_size = Histogram("llmgw_usage_batch_size", "Messages per ingested batch",
                                    buckets=BATCH_SIZE_BUCKETS, registry=registry)
        self.batch_duration = Histogram("llmgw_usage_batch_duration_seconds",
                                        "One batch: decode, ClickHouse insert, Redis windows, acks",
                                        buckets=BATCH_BUCKETS, registry=registry)
        self.batches = Counter("llmgw_usage_batches", "Batches by result: committed, failed (redelivered)",
                               ["result"], registry=registry)
        self.events = Counter(
            "llmgw_usage_events", "Stream messages by result: ingested (new in ClickHouse), duplicate "
            "(ClickHouse had it), busy (another writer inserts it), refused (no event: dead-lettered), "
            "deferred (refused, dead letter not stored yet), failed (batch not committed)", ["result"],
            registry=registry)
        self.dead_letters = Counter("llmgw_usage_dead_letters", "Refused messages terminated, by reason",
                                    ["reason"], registry=registry)


class PricingMetrics:
    def __init__(self, registry=REGISTRY):
        self.lookups = Counter("llmgw_pricing_lookups", "Prices looked up, by the source that answered",
                               ["source"], registry=registry)
        self.fetches = Counter("llmgw_pricing_fetches", "Fetches of the public price list, by outcome (ok, failed)",
                               ["outcome"], registry=registry)
        self.last_fetch = Gauge("llmgw_pricing_last_fetch_success_timestamp_seconds",
                                "When the public price list was last fetched", registry=registry)


class HttpServerMetrics:
    def __init__(self, registry=REGISTRY):
        self.requests = LoopCounter("llmgw_http_requests", "HTTP requests by route template, method and status "
                                "(edge and ui-api)", ["route", "method", "status"], registry=registry)
        self.duration = LoopHistogram("llmgw_http_request_duration_seconds", "HTTP request duration",
                                  ["route"], buckets=REQUEST_BUCKETS, registry=registry)


class NatsMetrics:
    def __init__(self, registry=REGISTRY):
        self.requests = LoopHistogram(
            "llmgw_nats_request_duration_seconds", "NATS request/reply latency as the caller sees it, by subject "
            "and outcome (ok, remote_error, timeout, no_responders, error)", ["subject", "outcome"],
            buckets=FAST_BUCKETS, registry=registry)
        self._children: dict[tuple[str, str], Any] = {}

    def observe(self, subject: str, outcome: str, seconds: float) -> None:
        child = self._children.get((subject, outcome))
        if child is None:
            child = self._children[(subject, outcome)] = self.requests.labels(subject, outcome)
        child.observe(seconds)


edge = functools.cache(EdgeMetrics)
router = functools.cache(RouterMetrics)
usage = functools.cache(UsageMetrics)
pricing = functools.cache(PricingMetrics)
http = functools.cache(HttpServerMetrics)
nats = functools.cache(NatsMetrics)


# ---- recording helpers ---------------------------------------------------------------------------------


class _Series:
    """One (route, provider, model)'s pre-bound children."""

    __slots__ = ("by_status", "duration", "ttft", "tokens", "cost", "_requests", "_key")

    def __init__(self, m: EdgeMetrics, route: str, provider: str, model: str):
        self._requests, self._key = m.requests, (route, provider, model)
        self.by_status: dict[int, Any] = {}
        self.duration = m.duration.labels(route, provider, model)
        self.ttft = m.ttft.labels(route, provider, model)
        self.tokens = tuple(m.tokens.labels(provider, model, kind) for kind in TOKEN_KINDS)
        self.cost = m.cost.labels(provider, model)

    def status(self, status: int):
        child = self.by_status.get(status)
        if child is None:
            child = self.by_status[status] = self._requests.labels(*self._key, str(status))
        return child


def logical_models(config) -> frozenset[str]:
    """The model names a config serves: the only model label values besides ``unknown``."""
    return frozenset(m.name for p in config.providers for m in p.models)


class UsageMeter:
    """The edge's request series, from each usage event as the gateway publishes it.

    ``config``: the running config (a callable: the edge swaps configs live); a model name it does not
    serve is counted as ``unknown``.
    """

    def __init__(self, config: Callable[[], Any] | None = None):
        self.metrics = edge()
        self._config_of = config
        self._config: Any = None
        self.known_models: frozenset[str] = frozenset()
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._attempts: dict[tuple[str, int], Any] = {}

    def observe(self, event) -> None:
        if self._config_of is not None:
            config = self._config_of()
            if config is not self._config:
                self._config, self.known_models = config, logical_models(config)
        model = event.model if event.model in self.known_models else UNKNOWN
        key = (event.endpoint, event.provider or "none", model)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series(self.metrics, *key)
        s.status(event.status).inc(getattr(event, "requests", 1))  # an aggregated refusal stands for several
        s.duration.observe(event.latency_ms / 1000)
        if event.ttft_ms is not None:
            s.ttft.observe(event.ttft_ms / 1000)
        tin, tout, tcached, twrite, treason = s.tokens
        if event.tokens_in:
            tin.inc(event.tokens_in)
        if event.tokens_out:
            tout.inc(event.tokens_out)
        if event.tokens_cached:
            tcached.inc(event.tokens_cached)
        if event.tokens_cache_write:
            twrite.inc(event.tokens_cache_write)
        if event.tokens_reasoning:
            treason.inc(event.tokens_reasoning)
        if event.cost_usd:
            s.cost.inc(float(event.cost_usd))
        for a in event.attempts:
            akey = (a.provider, a.status)
            child = self._attempts.get(akey)
            if child is None:
                child = self._attempts[akey] = self.metrics.attempts.labels(a.provider, str(a.status))
            child.inc(1 + a.retries)

    def wrap(self, publish: Callable[[Any], None]) -> Callable[[Any], None]:
        """``publish`` that first counts the event (a metrics failure never loses the event)."""
        observe = self.observe

        def observed(event) -> None:
            try:
                observe(event)
            except Exception:  # noqa: BLE001 - never on the request's way
                log.exception("could not count a usage event in the metrics")
            publish(event)

        return observed


def skip_reason(reason: str) -> str:
    """The kind of a skipped candidate's reason (the router's texts, ``policy.py`` and the admission script)."""
    if reason.startswith("cooling down"):
        return "cooldown"
    if reason.startswith("circuit breaker"):
        return "breaker"
    if "_per_month" in reason:
        return "budget"
    if reason.startswith(("requests_per_", "tokens_per_", "cost_per_")):
        return "limit"
    if reason.startswith("not allowed"):
        return "not_allowed"
    if reason == "disabled":
        return "disabled"
    if reason.startswith("already tried"):
        return "already_tried"
    if "context window" in reason:
        return "context_window"
    if reason == "not admitted":
        return "not_admitted"
    return "other"


class RouterMeter:
    """The router's decision series, children bound once."""

    def __init__(self):
        m = self.metrics = router()
        self._outcomes = {o: m.decisions.labels(o) for o in DECISION_OUTCOMES}
        self._duration = m.decision_duration.labels()
        self._skipped: dict[tuple[str, str], Any] = {}

    def decision(self, decision, seconds: float) -> str:
        """Count one answered decision (None: the router failed); returns its outcome."""
        if decision is None:
            outcome = "error"
        elif decision.error is None:
            outcome = "admitted"
        elif decision.error.status == 429:
            outcome = "refused"
        else:
            outcome = "invalid"
        self._outcomes[outcome].inc()
        self._duration.observe(seconds)
        if decision is not None:
            for s in decision.skipped:
                key = (s.provider, skip_reason(s.reason))
                child = self._skipped.get(key)
                if child is None:
                    child = self._skipped[key] = self.metrics.skipped.labels(*key)
                child.inc()
        return outcome

    def provider_state(self, stats: dict) -> None:
        """Breaker, cooldown and in-flight gauges from the routing state (``ProviderStats`` by provider)."""
        m = self.metrics
        for provider, st in stats.items():
            m.breaker.labels(provider).set({"closed": 0, "half-open": 1, "open": 2}.get(st.breaker, 0))
            m.cooldown.labels(provider).set(max(0, st.cooldown_ms) / 1000)
            m.inflight.labels(provider).set(st.inflight)


# ---- exposition ----------------------------------------------------------------------------------------


def exposition(registry=REGISTRY) -> tuple[bytes, str]:
    """(body, content type) of a scrape."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def serve_from_env(env: Mapping[str, str] | None = None) -> Any:
    """The metrics HTTP server of a NATS service, on ``LLMGW_METRICS_PORT`` when set (else None).

    A port that cannot be bound is logged and skipped: metrics never stop a service."""
    env = os.environ if env is None else env
    port = (env.get(METRICS_PORT_ENV) or "").strip()
    if not port:
        return None
    from prometheus_client import start_http_server

    host = env.get(METRICS_HOST_ENV) or "0.0.0.0"
    try:
        server, _thread = start_http_server(int(port), addr=host)
    except (OSError, ValueError) as exc:
        log.warning("no metrics server on %s:%s (%s)", host, port, exc)
        return None
    log.info("metrics on http://%s:%s%s", host, port, METRICS_PATH)
    return server


def _bearer_ok(headers: list[tuple[bytes, bytes]], token: str) -> bool:
    for name, value in headers:
        if name == b"authorization":
            given = value.decode("latin-1")
            return given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())
    return False


class HttpMetrics:
    """ASGI middleware of the edge and ui-api: requests by route template / method / status and their
    duration, the request's SERVER span while tracing is on, and ``GET /metrics``.

    ``install(app, scope)`` adds it outside the app's own middleware, ui-api's auth included: a refused
    request is counted too, and ``GET /metrics`` is answered here, before any credential check (a scraper
    holds no admin token; the series are counts and names from the config, no secrets). With
    ``LLMGW_METRICS_TOKEN`` set it wants ``Authorization: Bearer <that token>``. It is no route of the app
    (not in the OpenAPI document, not among the routes the apps enumerate) and the scrapes are not counted.
    """

    def __init__(self, app, scope: str = "llmgw.http", router: Any = None):
        self.app = app
        self.scope = scope
        self.router = router  # the app's router: the route template of a request refused before routing
        self._templates: list[tuple[Any, str]] | None = None
        self.metrics = http()
        self._children: dict[tuple[str, str, int], Any] = {}
        self._durations: dict[str, Any] = {}

    @classmethod
    def install(cls, app, scope: str) -> None:
        app.add_middleware(cls, scope=scope, router=app.router)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == METRICS_PATH and scope["method"] in ("GET", "HEAD"):
            await _scrape(scope, send)
            return
        if tracing.enabled:
            await self._traced(scope, receive, send)
            return
        status = 500  # an exception escaping the app: the server answers 500
        t0 = time.perf_counter()

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self._count(scope, status, time.perf_counter() - t0)

    def _route(self, scope) -> str:
        route = scope.get("route")
        if route is not None and getattr(route, "path", None):
            return route.path
        # refused before routing (ui-api's auth, a body too large): the template its path would have had
        if self._templates is None:
            self._templates = list(_route_templates(getattr(self.router, "routes", ())))
        path = scope["path"]
        for regex, template in self._templates:
            if regex.match(path):
                return template
        return "unmatched"

    def _count(self, scope, status: int, seconds: float) -> None:
        path = self._route(scope)
        key = (path, scope["method"], status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.metrics.requests.labels(path, scope["method"], str(status))
            self._durations.setdefault(path, self.metrics.duration.labels(path))
        child.inc()
        self._durations[path].observe(seconds)

    async def _traced(self, scope, receive, send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())
                   if k in (b"traceparent", b"tracestate", b"baggage")}
        method = scope["method"]
        status = 500
        t0 = time.perf_counter()

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with tracing.tracer(self.scope).start_as_current_span(
                method, context=tracing.extract(headers), kind=tracing.SERVER,
                attributes={"http.request.method": method, "url.path": scope["path"]}) as span:
            try:
                await self.app(scope, receive, send_status)
            finally:
                self._count(scope, status, time.perf_counter() - t0)
                route = self._route(scope)
                if route != "unmatched":
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(tracing.Status(tracing.StatusCode.ERROR))


def _route_templates(routes) -> Iterator[tuple[Any, str]]:
    """(regex, template) of every route, also those of included routers (FastAPI keeps them nested)."""
    from starlette.routing import compile_path

    for route in routes:
        nested = getattr(route, "effective_candidates", None)
        if nested is not None:
            yield from _route_templates(nested())
        elif getattr(route, "original_router", None) is not None:
            yield from _route_templates(route.original_router.routes)
        elif isinstance(getattr(route, "path", None), str) and route.path:
            yield compile_path(route.path)[0], route.path


async def _scrape(scope, send) -> None:
    token = os.environ.get(METRICS_TOKEN_ENV)
    if token and not _bearer_ok(scope.get("headers", []), token):
        status, body, content_type = 401, b"metrics need the bearer token\n", "text/plain; charset=utf-8"
        extra = [(b"www-authenticate", b'Bearer realm="llmgw-metrics"')]
    else:
        body, content_type = exposition()
        status, extra = 200, []
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
