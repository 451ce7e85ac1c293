"""Abandoned admissions: a lease nobody settled becomes a usage event of its own (``llmgw_common.leases``).

Every router replica runs ``reap_forever``; the Lua script hands each expired
lease to exactly one of them. The event goes to the usage stream like the
edge's would, with the request's own event id as its ``Nats-Msg-Id``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from decimal import Decimal

from llmgw_common import metrics, subjects
from llmgw_common.leases import ABANDONED_ERROR, ABANDONED_STATUS
from llmgw_common.messages import Reservation, UsageEvent
from llmgw_common.windows import NANO, parse_scope

from .store import Leases

log = logging.getLogger("llmgw.router.abandoned")

REAP_EVERY_S = 5.0
RETRY_AFTER_MS = 10_000


def abandoned_event(fields: dict[str, str]) -> UsageEvent:
    """The usage event of a request whose edge never settled it: its reservation, counted as it was."""
    _kind, provider, model = parse_scope(fields["model_scope"])
    key_scope = fields.get("key_scope") or ""
    key_id = key_scope[2:] if key_scope.startswith("k:") else None
    at_s = int(fields["at"])
    tokens_in, tokens_out, cost_nano = int(fields["tin"]), int(fields["tout"]), int(fields["cost"])
    reservation = Reservation(provider=provider, model=model or "", at_s=at_s, tokens_in=tokens_in,
                              tokens_out=tokens_out, cost_nano=cost_nano, key_id=key_id)
    return UsageEvent(id=fields["event"], ts=datetime.fromtimestamp(at_s, timezone.utc), request_id=fields["rid"],
                      endpoint="unknown", key_id=key_id, provider=provider, model=model or "", tokens_in=tokens_in,
                      tokens_out=tokens_out, cost_usd=Decimal(cost_nano) / NANO, status=ABANDONED_STATUS,
                      error=ABANDONED_ERROR, route_reason="admission lease expired", reservation=reservation)


async def reap_once(leases: Leases, js, now_ms: int) -> int:
    published = 0
    for member, fields in await leases.take_expired(now_ms):
        try:
            event = abandoned_event(fields)
        except (KeyError, ValueError):
            log.error("dropping an unreadable admission lease %s", member)
            continue
        try:
            await js.publish(subjects.usage_event_subject(event.provider or "none"), event.encode(),
                             timeout=5.0, headers={"Nats-Msg-Id": event.id})
        except Exception as exc:  # NATS away: keep the lease, try again later
            log.warning("could not publish the abandoned request %s (%s); retrying", event.request_id,
                        type(exc).__name__)
            await leases.put_back(member, fields, now_ms + RETRY_AFTER_MS)
            continue
        published += 1
        metrics.router().abandoned.inc()
        log.warning("request %s on %s was never settled by its edge: recorded as abandoned at its reserved "
                    "estimate", event.request_id, event.provider)
    return published


async def reap_forever(leases: Leases, js, now_ms=lambda: int(time.time() * 1000)) -> None:
    while True:
        await asyncio.sleep(REAP_EVERY_S)
        try:
            await reap_once(leases, js, now_ms())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis away: the leases wait for the next round
            log.warning("cannot take expired admission leases (%s)", type(exc).__name__)
