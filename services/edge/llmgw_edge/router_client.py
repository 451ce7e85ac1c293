"""Asks the router (over NATS request/reply) for an admitted candidate and the fallback order.

Router replicas share the ``router`` queue group. A replica that dies or
restarts while it holds a request never answers it, and one that is starting
has no subscription yet ("no responders"): either way the question is asked
again, so another replica answers, within ``decide_timeout_s`` in all. Only
when that whole budget is spent does the client get a 503.

A question asked again is the same question (request id, attempt): the router
answers it with the same admission. One the edge gives up on (no answer in
time, the router's error, the client gone) is handed to ``give_up``, which has
the routers release whatever they admit for it (give_ups.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError

from llmgw_common import subjects
from llmgw_common.messages import RouteDecision, RouteRequest
from llmgw_common.nats_conn import RemoteError, request

from .core.errors import GatewayError

# a healthy decision takes a few milliseconds: a try this long has lost its replica
TRY_SHARE = 0.4  # of decide_timeout_s for one try
MIN_TRY_S = 0.25
NO_RESPONDER_PAUSE_S = 0.05  # a replica restarting re-subscribes within moments


async def decide(nc, route_request: RouteRequest, timeout: float,
                 give_up: Callable[[str, int], None] | None = None) -> RouteDecision:
    try:
        decision = await _ask(nc, route_request, timeout)
    except BaseException:  # no answer to use: whatever the router admits for this question is released
        if give_up is not None:
            give_up(route_request.request_id, len(route_request.exclude))
        raise
    if decision.error is not None:
        e = decision.error
        headers = {}
        if e.status == 429 and e.retry_after_s is not None:
            headers["retry-after"] = str(max(1, int(e.retry_after_s + 0.999)))
        raise GatewayError(e.status, e.message, code=e.code, param="model" if e.status == 404 else None,
                           headers=headers)
    return decision


async def _ask(nc, route_request: RouteRequest, timeout: float) -> RouteDecision:
    """The router's answer, asking again until ``timeout``; GatewayError 503 when none comes."""
    deadline = time.monotonic() + timeout
    tries = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise GatewayError(503, f"The gateway's router did not answer within {timeout:g}s ({tries} tries); "
                                    "try again shortly.", code="router_unavailable",
                               headers={"retry-after": "1"})
        tries += 1
        try:
            return await request(nc, subjects.ROUTER_DECIDE, route_request, RouteDecision,
                                 min(left, max(MIN_TRY_S, timeout * TRY_SHARE)))
        except NatsTimeoutError:
            continue  # its replica died holding it, or it is slow: ask again, another replica may answer
        except NoRespondersError:
            await asyncio.sleep(min(NO_RESPONDER_PAUSE_S, max(0.0, deadline - time.monotonic())))
        except RemoteError as exc:
            raise GatewayError(503, f"The gateway's router failed: {exc}", code="router_unavailable",
                               headers={"retry-after": "1"}) from None
        except Exception as exc:  # NATS itself is away (reconnecting): the same as no answer
            if not nc.is_connected:
                await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                continue
            raise GatewayError(503, f"The gateway could not ask its router ({type(exc).__name__}).",
                               code="router_unavailable", headers={"retry-after": "1"}) from None
