"""Synthetic usage events for development (``llmgw.usage.simulate``, POST /api/dev/simulate). Pure.

They are marked so nobody mistakes them for real traffic: ``route_reason``
"simulated" and request ids starting with ``sim-``. A provider whose name
contains "free" costs nothing; the others are priced like a small paid model.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from decimal import Decimal

from llmgw_common.ids import new_id
from llmgw_common.messages import Attempt, UsageEvent, UsageSimulate

PRICE_IN_PER_TOKEN = Decimal("0.00000015")
PRICE_OUT_PER_TOKEN = Decimal("0.0000006")
ERROR_STATUSES = (429, 500, 502, 503)
ROUTE_REASON = "simulated"


def synthetic_events(q: UsageSimulate, now: datetime) -> list[UsageEvent]:
    rng = random.Random(q.seed)
    events: list[UsageEvent] = []
    for _ in range(q.count):
        provider, model, key = rng.choice(q.providers), rng.choice(q.models), rng.choice(q.key_ids)
        failed = rng.random() < q.error_rate
        status = rng.choice(ERROR_STATUSES) if failed else 200
        tokens_in = rng.randint(20, 2000)
        tokens_out = 0 if failed else rng.randint(5, 800)
        cached = rng.randint(0, tokens_in // 2) if not failed and rng.random() < 0.3 else 0
        cost = Decimal(0)
        if not failed and "free" not in provider:
            cost = (tokens_in * PRICE_IN_PER_TOKEN + tokens_out * PRICE_OUT_PER_TOKEN).quantize(Decimal("1e-9"))
        latency = round(rng.uniform(80, 3000), 1)
        error = f"upstream returned {status}" if failed else None
        events.append(UsageEvent(
            id=new_id(), ts=now - timedelta(seconds=rng.uniform(0, q.spread_s)), request_id=f"sim-{new_id()}",
            key_id=key, provider=provider, model=model, upstream_model=model, tokens_in=tokens_in,
            tokens_out=tokens_out, tokens_cached=cached, cost_usd=cost, latency_ms=latency,
            ttft_ms=None if failed else round(latency * rng.uniform(0.1, 0.5), 1), status=status, error=error,
            attempts=[Attempt(provider=provider, upstream_model=model, status=status, error=error,
                              latency_ms=latency)],
            route_reason=ROUTE_REASON,
        ))
    return events
