"""One failure vocabulary for the edge and the router.

Every failed upstream attempt is one ``FailureKind``; its ``FailurePolicy``
says whether to try the same provider again, whether another provider may
succeed, and whether it counts against the provider's health (breaker). The
edge classifies (from an HTTP status, a provider's error body, a transport
error) and the router learns from the same kinds, so the two never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FailureKind(StrEnum):
    BAD_REQUEST = "bad_request"  # the client's request is wrong: its answer goes back as the provider said it
    UNSUPPORTED = "unsupported"  # this provider cannot serve this kind of request (embeddings, n > 1...)
    AUTH = "auth"  # the provider refused our credential (401 / 403)
    NOT_FOUND = "not_found"  # the provider does not know the model (404)
    RATE_LIMITED = "rate_limited"  # 429 and quota exhaustion: cool down until its reset
    OVERLOADED = "overloaded"  # 503 / Anthropic's 529: busy now, fine later
    SERVER = "server"  # other 5xx
    TIMEOUT = "timeout"  # no answer in time (408, 504, our own timers)
    CONNECTION = "connection"  # no HTTP answer at all
    PROTOCOL = "protocol"  # an answer we cannot read (not JSON, a stream that ends early)
    # the model refused the request for what it is (routing.fallbacks may name another model; else the
    # client's error): the prompt is longer than its context window, or its content policy said no
    CONTEXT_LENGTH = "context_length"
    CONTENT_FILTER = "content_filter"


@dataclass(frozen=True)
class FailurePolicy:
    retry_here: bool  # worth another try on the same provider (with backoff)
    fail_over: bool  # another provider may well succeed
    counts_against_health: bool  # a provider fault: counts towards its breaker


POLICIES: dict[FailureKind, FailurePolicy] = {
    FailureKind.BAD_REQUEST: FailurePolicy(retry_here=False, fail_over=False, counts_against_health=False),
    FailureKind.UNSUPPORTED: FailurePolicy(retry_here=False, fail_over=True, counts_against_health=False),
    FailureKind.AUTH: FailurePolicy(retry_here=False, fail_over=True, counts_against_health=True),
    FailureKind.NOT_FOUND: FailurePolicy(retry_here=False, fail_over=True, counts_against_health=True),
    FailureKind.RATE_LIMITED: FailurePolicy(retry_here=False, fail_over=True, counts_against_health=False),
    FailureKind.OVERLOADED: FailurePolicy(retry_here=True, fail_over=True, counts_against_health=True),
    FailureKind.SERVER: FailurePolicy(retry_here=True, fail_over=True, counts_against_health=True),
    # a hung provider is not asked again before the next one is tried (it would cost the timeout twice)
    FailureKind.TIMEOUT: FailurePolicy(retry_here=False, fail_over=True, counts_against_health=True),
    FailureKind.CONNECTION: FailurePolicy(retry_here=True, fail_over=True, counts_against_health=True),
    FailureKind.PROTOCOL: FailurePolicy(retry_here=True, fail_over=True, counts_against_health=True),
    # the same model elsewhere would refuse it too: only a fallback model may serve it
    FailureKind.CONTEXT_LENGTH: FailurePolicy(retry_here=False, fail_over=False, counts_against_health=False),
    FailureKind.CONTENT_FILTER: FailurePolicy(retry_here=False, fail_over=False, counts_against_health=False),
}

# failures that are the request's, not the provider's: the provider's own error body goes back to a client of
# its format when nothing else can serve the request
CLIENT_KINDS = frozenset({FailureKind.BAD_REQUEST, FailureKind.CONTEXT_LENGTH, FailureKind.CONTENT_FILTER})


def kind_for_status(status: int) -> FailureKind:
    """The kind of an HTTP status from an upstream (0: no HTTP answer)."""
    if status == 0:
        return FailureKind.CONNECTION
    if status in (401, 403):
        return FailureKind.AUTH
    if status == 404:
        return FailureKind.NOT_FOUND
    if status in (408, 504):
        return FailureKind.TIMEOUT
    if status == 429:
        return FailureKind.RATE_LIMITED
    if status in (503, 529):
        return FailureKind.OVERLOADED
    if status >= 500:
        return FailureKind.SERVER
    if status in (409, 425):  # conflict / too early: transient on the provider's side
        return FailureKind.OVERLOADED
    return FailureKind.BAD_REQUEST


def policy(kind: FailureKind) -> FailurePolicy:
    return POLICIES[kind]
