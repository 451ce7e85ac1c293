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

Rooms: ``primitives`` (the loop-local counter and histogram), ``series`` (every service's series and the
meters that record them), ``middleware`` (the edge's and ui-api's ASGI middleware), ``exposition`` (a
scrape, the metrics server of the NATS services). Import them from here: ``from llmgw_common.metrics
import X``.

Exposition:
- edge and ui-api: ``GET /metrics`` on their own HTTP port (``HttpMetrics.install``); with
  ``LLMGW_METRICS_TOKEN`` set it wants ``Authorization: Bearer <token>``;
- every service, with ``LLMGW_METRICS_PORT`` set: its operations port (``llmgw_common.ops_port``, host
  ``LLMGW_METRICS_HOST``, default 0.0.0.0; router, usage and pricing through ``ServiceRuntime``); unset
  (``llmgw run``, tests): router, usage and pricing serve none.
"""

from __future__ import annotations

from prometheus_client import disable_created_metrics

from .exposition import (METRICS_HOST_ENV, METRICS_PATH, METRICS_PORT_ENV, METRICS_TOKEN_ENV, exposition)
from .middleware import HttpMetrics
from .primitives import (BATCH_BUCKETS, BATCH_SIZE_BUCKETS, FAST_BUCKETS, REQUEST_BUCKETS, TTFT_BUCKETS,
                         LoopCounter, LoopHistogram)
from .series import (DECISION_OUTCOMES, SKIP_REASONS, TOKEN_KINDS, UNKNOWN, EdgeMetrics, HttpServerMetrics, NatsMetrics,
                     PricingMetrics, RouterMeter, RouterMetrics, UsageMeter, UsageMetrics, config_revision, edge, http,
                     logical_models, nats, pricing, router, skip_reason, usage)

disable_created_metrics()  # no ``*_created`` series: half the scrape, nothing a dashboard reads

__all__ = [
    "BATCH_BUCKETS", "BATCH_SIZE_BUCKETS", "DECISION_OUTCOMES", "FAST_BUCKETS", "REQUEST_BUCKETS", "SKIP_REASONS",
    "TOKEN_KINDS", "TTFT_BUCKETS", "UNKNOWN", "METRICS_HOST_ENV", "METRICS_PATH", "METRICS_PORT_ENV",
    "METRICS_TOKEN_ENV", "EdgeMetrics", "HttpMetrics", "HttpServerMetrics", "LoopCounter", "LoopHistogram",
    "NatsMetrics", "PricingMetrics", "RouterMeter", "RouterMetrics", "UsageMeter", "UsageMetrics", "config_revision",
    "edge",
    "exposition", "http", "logical_models", "nats", "pricing", "router", "skip_reason", "usage",
]
