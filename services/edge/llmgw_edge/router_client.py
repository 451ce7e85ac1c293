"""Asks the router (over NATS request/reply) for an ordered candidate list."""

from __future__ import annotations

from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError

from llmgw_common import subjects
from llmgw_common.messages import RouteDecision, RouteRequest
from llmgw_common.nats_conn import RemoteError, request

from .errors import GatewayError


async def decide(nc, route_request: RouteRequest, timeout: float) -> RouteDecision:
    try:
        decision = await request(nc, subjects.ROUTER_DECIDE, route_request, RouteDecision, timeout)
    except (NatsTimeoutError, NoRespondersError):
        raise GatewayError(503, "The gateway's router is not answering; try again shortly.", "server_error",
                           code="router_unavailable") from None
    except RemoteError as exc:
        raise GatewayError(503, f"The gateway's router failed: {exc}", "server_error",
                           code="router_unavailable") from None
    if decision.error is not None:
        e = decision.error
        type_ = "invalid_request_error" if e.status == 404 else "rate_limit_exceeded" if e.status == 429 else "server_error"
        raise GatewayError(e.status, e.message, type_, code=e.code, param="model" if e.status == 404 else None)
    return decision
