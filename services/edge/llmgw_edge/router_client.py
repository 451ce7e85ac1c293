"""Asks the router (over NATS request/reply) for an admitted candidate and the fallback order."""

from __future__ import annotations

from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError

from llmgw_common import subjects
from llmgw_common.messages import RouteDecision, RouteRequest
from llmgw_common.nats_conn import RemoteError, request

from .core.errors import GatewayError


async def decide(nc, route_request: RouteRequest, timeout: float) -> RouteDecision:
    try:
        decision = await request(nc, subjects.ROUTER_DECIDE, route_request, RouteDecision, timeout)
    except (NatsTimeoutError, NoRespondersError):
        raise GatewayError(503, "The gateway's router is not answering; try again shortly.",
                           code="router_unavailable", type_="server_error") from None
    except RemoteError as exc:
        raise GatewayError(503, f"The gateway's router failed: {exc}", code="router_unavailable",
                           type_="server_error") from None
    if decision.error is not None:
        e = decision.error
        raise GatewayError(e.status, e.message, code=e.code, param="model" if e.status == 404 else None)
    return decision
