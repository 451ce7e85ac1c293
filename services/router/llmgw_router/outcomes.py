"""How an attempt's outcome affects a provider's health (pure)."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Iterable

from llmgw_common.config import RoutingConfig
from llmgw_common.failures import FailureKind, kind_for_status, policy
from llmgw_common.messages import AttemptOutcome, Skipped
from llmgw_common.windows import NANO


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
# a limit the admission script found full (store.py): "requests_per_minute reached on key ci (50/50) (12s left)",
# "tokens_per_hour would be exceeded on provider (90 used + ~20 > 100) (40s left)", "cost_per_month budget would
# be exceeded on key ci (4 used + ~2 > 5 nano-USD) (86000s left)"; no "left" when this request alone is over it
_LIMIT = re.compile(r"^(?P<what>requests|tokens|cost)_per_(?P<window>[a-z]+)(?: budget)? (?:reached|would be exceeded)"
                    r" on (?P<scope>provider|model|key (?P<key>.+?)) \((?P<used>\d+)(?:/| used \+ ~(?P<need>\d+) > )"
                    r"(?P<limit>\d+)(?: nano-USD)?\)(?: \((?P<left>\d+)s left\))?$")


def retry_after_s(reasons: Iterable[str]) -> float | None:
    """When the soonest refused provider may take a request again, from why admission refused each:
    a cooldown or an open breaker says its time left; a full window frees up when enough of its oldest
    buckets leave it (the script says when: at most the window plus one bucket, 65 s for a minute), a key's
    month when the next one starts. None when no reason says anything about time (a request over a limit
    on its own never fits: retrying cannot help)."""
    waits = [float(left.group(1)) for left in map(_LEFT.search, reasons) if left]
    return max(1.0, min(waits)) if waits else None


def refusal(model: str, skipped: list[Skipped]) -> tuple[str, float | None]:
    """The 429's message and Retry-After when admission took nobody. A full key limit is the caller's own:
    it is named first, in words ("key 'ci' is at its limit of 50 requests per minute; retry after 12 s"),
    and its time is the one to wait (every candidate is behind it); otherwise each provider says why."""
    key_reasons = [s.reason for s in skipped if " on key " in s.reason and _LIMIT.match(s.reason)]
    if key_reasons:
        wait = retry_after_s(key_reasons)
        text, when = _in_words(key_reasons[0], None, model, wait)
        return f"{text}; {when}", wait
    wait = retry_after_s(s.reason for s in skipped)
    why = "; ".join(f"{s.provider}: {text} ({when})" if when else f"{s.provider}: {text}"
                    for s in skipped for text, when in [_in_words(s.reason, s.provider, model, None)])
    return f"No provider can take a request for `{model}` now: {why or 'no provider left'}", wait


def _in_words(reason: str, provider: str | None, model: str, wait: float | None) -> tuple[str, str]:
    """A full limit as a person says it, and when it frees up; any other reason as it is."""
    m = _LIMIT.match(reason)
    if m is None:
        return reason, ""
    scope = {"provider": f"provider '{provider}'", "model": f"model '{model}' on provider '{provider}'"}.get(
        m["scope"], f"key '{m['key']}'")
    what, window, used, limit = m["what"], m["window"], int(m["used"]), int(m["limit"])
    if what == "requests":
        text = f"{scope} is at its limit of {limit} request{'s' if limit != 1 else ''} per {window}"
    elif what == "tokens":
        text = (f"{scope} would pass its limit of {limit} tokens per {window} ({used} used, this request "
                f"~{m['need']})")
    else:
        text = (f"{scope} would pass its budget of {_usd(limit)} per {window} ({_usd(used)} used, this request "
                f"~{_usd(int(m['need']))})")
    left = wait if wait is not None else (float(m["left"]) if m["left"] else None)
    if left is not None:
        return text, f"retry after {int(max(1.0, left))} s"
    return text, "this request alone is over it, retrying cannot help"


def _usd(nano: int) -> str:
    dollars = Decimal(nano) / NANO
    return f"${dollars:.2f}" if dollars >= Decimal("0.01") or not dollars else f"${dollars.normalize():f}"
