"""How an attempt's outcome affects a provider's health (pure)."""

from __future__ import annotations

from llmgw_common.config import RoutingConfig
from llmgw_common.messages import AttemptOutcome

# the provider's problem, not the client's: count towards the breaker
_PROVIDER_FAULTS = {0, 401, 403, 404, 408}


def classify(outcome: AttemptOutcome, routing: RoutingConfig) -> tuple[str, int]:
    """(kind, cooldown ms): kind is ok | rate_limited | failure | other."""
    if outcome.ok:
        return "ok", 0
    if outcome.status == 429:
        seconds = outcome.retry_after_s if outcome.retry_after_s and outcome.retry_after_s > 0 else routing.cooldown_s
        return "rate_limited", max(1, int(seconds * 1000))
    if outcome.status >= 500 or outcome.status in _PROVIDER_FAULTS:
        return "failure", 0
    return "other", 0  # a client error (400, 413, 422...): says nothing about the provider
