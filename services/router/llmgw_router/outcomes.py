"""How an attempt's outcome affects a provider's health (pure)."""

from __future__ import annotations

import re
from typing import Iterable

from llmgw_common.config import RoutingConfig
from llmgw_common.failures import FailureKind, kind_for_status, policy
from llmgw_common.messages import AttemptOutcome
from llmgw_common.windows import WINDOWS


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


_LEFT = re.compile(r"\((\d+)s left\)")
_WINDOW = re.compile(r"^(?:requests|tokens|cost)_per_(\w+?) ")
_BUCKET_S = {w.name: w.bucket_s for w in WINDOWS}


def retry_after_s(reasons: Iterable[str]) -> float | None:
    """When the soonest refused provider may take a request again, from why admission refused each:
    a cooldown or an open breaker says its time left; a full window frees up when its oldest bucket
    leaves it, at most one bucket from now. None when no reason says anything about time."""
    waits: list[float] = []
    for reason in reasons:
        left = _LEFT.search(reason)
        if left:
            waits.append(float(left.group(1)))
            continue
        window = _WINDOW.match(reason)
        if window and window.group(1) in _BUCKET_S:
            waits.append(float(_BUCKET_S[window.group(1)]))
    return max(1.0, min(waits)) if waits else None
