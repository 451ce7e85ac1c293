"""Exposition: a scrape's body, and the metrics HTTP server of the NATS services (``LLMGW_METRICS_PORT``)."""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger("llmgw_common.metrics")

METRICS_PORT_ENV = "LLMGW_METRICS_PORT"
METRICS_HOST_ENV = "LLMGW_METRICS_HOST"
METRICS_TOKEN_ENV = "LLMGW_METRICS_TOKEN"
METRICS_PATH = "/metrics"


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
