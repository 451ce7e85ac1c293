"""How an attempt's outcome affects a provider's health (pure)."""

from __future__ import annotations

from llmgw_common.config import RoutingConfig
from llmgw_common.failures import FailureKind, kind_for_status, policy
from llmgw_common.messages import AttemptOutcome


def classify(outcome: AttemptOutcome, routing: RoutingConfig) -> tuple[str, int]:
    """(kind, cooldown ms): kind is ok | rate_limited | failure | other."""
    if outcome.ok:
        return "ok", 0
    try:
        kind = FailureKind(outcome.kind) if outcome.kind else kind_for_status(outcome.status)
    except ValueError:  # a newer edge's kind: judge by the status
        kind = kind_for_status(outcome.status)
    if kind is FailureKind.RATE_LIMITED:
        seconds = outcome.retry_after_s if outcome.retry_after_s and outcome.retry_after_s > 0 else routing.cooldown_s
        return "rate_limited", max(1, int(seconds * 1000))
    if policy(kind).counts_against_health:
        return "failure", 0
    return "other", 0  # a client error (400, 413, 422...) or a request this provider cannot serve
