"""Prompt-cache affinity: a conversation stays on the provider that holds its prefix in its prompt cache.

Providers that cache prompts (Anthropic's ``cache_control``, OpenAI's and Gemini's automatic caching) bill a
prefix they have seen lately at the cache-read price, often a tenth of the input price; a conversation moved
to another provider pays the full price again (and a cache write). The edge sends the hash of a request's
cacheable prefix (``RouteRequest.prefix_key``, see ``llmgw_edge.core.cache_prefix``); after a successful
answer it reports the provider with the same key (``AttemptOutcome.prefix_key``), and ``record`` keeps
``AFFINITY_PREFIX`` + key -> provider in Redis for as long as that provider type keeps a cache
(``routing.cache_affinity.ttl_s``), so every router replica sees it.

``prefer`` puts that provider first when it is still a candidate, nothing is pinned elsewhere, and its
estimate with the prefix read from the cache is no more than the estimate of the provider the normal order
would try first. Capacity is the admission's to judge: a provider at its limit (or cooling down, or behind an
open breaker) is skipped there like any other, and the normal order follows (``note_refused`` says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from llmgw_common.config import GatewayConfig
from llmgw_common.redis_keys import AFFINITY_PREFIX
from llmgw_common.messages import Skipped

from .policy import Plan, RoutingState



@dataclass(frozen=True)
class Affinity:
    """Who served a prefix last, and when (epoch ms)."""

    provider: str
    served_ms: int


def parse(value: bytes | str | None) -> Affinity | None:
    """The value of an affinity key: "<provider> <served at, epoch ms>"."""
    if not value:
        return None
    provider, _, served = (value.decode() if isinstance(value, bytes) else value).rpartition(" ")
    return Affinity(provider, int(served)) if provider and served.isdigit() else None


async def record(redis, config: GatewayConfig, served: list[tuple[str, str]], now_ms: int) -> int:
    """``served``: (prefix key, provider) of successful answers. Each starts its provider's cache lifetime
    again, as a cache hit does upstream; providers of a type that caches nothing are not recorded."""
    pipe = redis.pipeline(transaction=False)
    recorded = 0
    for prefix_key, provider_id in served:
        provider = config.provider(provider_id)
        ttl = config.routing.cache_affinity.ttl_for(provider.type) if provider is not None else 0.0
        if ttl > 0:
            pipe.set(AFFINITY_PREFIX + prefix_key, f"{provider_id} {now_ms}", px=int(ttl * 1000))
            recorded += 1
    if recorded:
        await pipe.execute()
    return recorded


def prefer(config: GatewayConfig, p: Plan, affinity: Affinity, prefix_tokens: int, state: RoutingState,
           now_ms: int) -> str | None:
    """Move the provider holding the prefix to the front of ``p.ordered`` when it is the cheaper choice, and
    say so (or why not) in its reason. "moved": the order changed (the plan is then this request's alone);
    "first": the normal order already put it first; None: affinity did not choose it."""
    index = next((i for i, pc in enumerate(p.ordered) if pc.candidate.provider == affinity.provider), None)
    provider = config.provider(affinity.provider)
    if index is None or provider is None or config.routing.cache_affinity.ttl_for(provider.type) <= 0:
        return None  # not a candidate for this request (rule, key, disabled, already tried), or no cache now
    held = p.ordered[index]
    age_s = max(0, now_ms - affinity.served_ms) // 1000
    cached = f"prefix cached here {age_s}s ago"
    if index == 0:
        held.candidate.reason = f"cache affinity ({cached}), {held.candidate.reason}"
        return "first"
    if state.pinned is not None and state.pinned != affinity.provider:
        held.candidate.reason += f"; cache affinity ignored: {state.pinned} is pinned"
        return None
    first = p.ordered[0]
    price = held.candidate.price
    if held.candidate.free:
        with_cache = Decimal(0)
    elif price is None:
        held.candidate.reason += "; cache affinity ignored: price unknown"
        return None
    else:
        with_cache = price.cost(held.est_tokens_in, held.est_tokens_out,
                                cached_in=min(prefix_tokens, held.est_tokens_in))
    alternative = Decimal(0) if first.candidate.free else first.est_cost
    alternative_known = first.candidate.free or first.candidate.price is not None
    if alternative_known and with_cache > alternative:
        held.candidate.reason += (f"; cache affinity ignored: price (est. ${with_cache:.6f} with cache reads "
                                  f"> ${alternative:.6f} on {first.candidate.provider})")
        return None
    on_first = f"${alternative:.6f}" if alternative_known else "an unknown price"
    held.candidate.reason = (f"cache affinity ({cached}; est. ${with_cache:.6f} with cache reads <= {on_first} "
                             f"on {first.candidate.provider}), {held.candidate.reason}")
    p.ordered.insert(0, p.ordered.pop(index))
    return "moved"


def note_refused(skipped: list[Skipped], provider: str) -> None:
    """The provider affinity put first was not admitted (a limit, a cooldown, an open breaker): say that the
    normal order served instead."""
    for s in skipped:
        if s.provider == provider:
            s.reason += " (cache affinity ignored: no capacity)"
