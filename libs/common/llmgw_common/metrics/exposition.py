"""Exposition: a scrape's body (served by every service's operations port, ``llmgw_common.ops_port``, and by
the edge's and ui-api's own port without one)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

METRICS_PORT_ENV = "LLMGW_METRICS_PORT"
METRICS_HOST_ENV = "LLMGW_METRICS_HOST"
METRICS_TOKEN_ENV = "LLMGW_METRICS_TOKEN"
METRICS_PATH = "/metrics"


def exposition(registry=REGISTRY) -> tuple[bytes, str]:
    """(body, content type) of a scrape."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
