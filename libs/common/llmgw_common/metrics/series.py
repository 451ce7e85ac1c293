"""Every series the services export: names, labels and buckets (one group per service, created on first
use), and the helpers that record them with label children bound once (``UsageMeter``, ``RouterMeter``)."""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from .primitives import (BATCH_BUCKETS, BATCH_SIZE_BUCKETS, FAST_BUCKETS, REQUEST_BUCKETS, TTFT_BUCKETS,
                         LoopCounter, LoopHistogram)

log = logging.getLogger("llmgw_common.metrics")

UNKNOWN = "unknown"

TOKEN_KINDS = ("in", "out", "cached", "cache_write", "reasoning")
DECISION_OUTCOMES = ("admitted", "refused", "invalid", "error")
SKIP_REASONS = ("cooldown", "breaker", "limit", "budget", "not_allowed", "disabled", "already_tried",
                "context_window", "capability", "not_admitted", "other")


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


@functools.cache
def config_revision() -> Gauge:
    """Every process: the config revision it runs (llmgw_common.config_bucket; 0: none stored, defaults)."""
    return Gauge("llmgw_config_revision", "The config revision (LLMGW_CONFIG bucket) this process runs",
                 registry=REGISTRY)

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
    if reason.startswith("lacks "):  # a capability the request needs (llmgw_router.model_fit)
        return "capability"
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
