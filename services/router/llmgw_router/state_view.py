"""What ``/debug/router`` shows: per provider and model, each window against its limit, cooldown or
breaker state, requests in flight, latency average."""

from __future__ import annotations

import math
import time

from llmgw_common.config import GatewayConfig, Limits
from llmgw_common.messages import ModelState, ProviderState, RouterState, WindowState
from llmgw_common.windows import WINDOWS, WindowReader, model_scope, nano_to_usd, provider_scope

from .policy import ProviderStats, RoutingState


def _against_limits(totals: dict[str, dict[str, int]], limits: Limits) -> dict[str, WindowState]:
    out = {}
    for w in WINDOWS:
        t = totals.get(w.name, {})
        cost_limit = getattr(limits, f"cost_per_{w.name}")
        out[w.name] = WindowState(
            requests=t.get("req", 0), requests_limit=getattr(limits, f"requests_per_{w.name}"),
            tokens=t.get("tin", 0) + t.get("tout", 0), tokens_limit=getattr(limits, f"tokens_per_{w.name}"),
            cost_usd=str(nano_to_usd(t.get("cost", 0))),
            cost_limit_usd=None if cost_limit is None else str(cost_limit),
        )
    return out


async def router_state(config: GatewayConfig, state: RoutingState, windows: WindowReader) -> RouterState:
    scopes = []
    for p in config.providers:
        scopes.append(provider_scope(p.id))
        scopes += [model_scope(p.id, m.name) for m in p.models]
    totals = await windows.read(scopes, int(time.time()))
    providers = []
    for p in config.providers:
        stats = state.stats.get(p.id, ProviderStats())
        providers.append(ProviderState(
            id=p.id, enabled=p.enabled, free_tier=p.free_tier, priority=p.priority,
            pinned=state.pinned == p.id, inflight=stats.inflight,
            latency_ms=None if stats.latency_ms is None else round(stats.latency_ms, 1),
            # rounded up: 0 means the cooldown is really over
            cooldown_s=math.ceil(stats.cooldown_ms / 100) / 10, breaker=stats.breaker,
            windows=_against_limits(totals.get(provider_scope(p.id), {}), p.limits),
            models=[ModelState(name=m.name, upstream=m.upstream_name,
                               windows=_against_limits(totals.get(model_scope(p.id, m.name), {}), m.limits))
                    for m in p.models],
        ))
    return RouterState(pinned=state.pinned, smart=state.smart, providers=providers)
