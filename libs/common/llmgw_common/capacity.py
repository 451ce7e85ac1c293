"""Capacity leases (issue 20): the messages between an edge and the router, as msgspec structs.

A capacity lease grants one edge replica N requests on one route (provider + model, plus the caller's key
when the key has limits: the keys without limits share the route's leases), with N times a per-request
estimate in tokens and cost reserved in the live windows (``llmgw_router.capacity_leases``). The edge admits requests from it by itself, each at its own estimate,
computed as the router computes it (``estimate``): so the sum of what it admits never passes what was
reserved. Not to be confused with the admission leases of ``leases.py`` (one admitted request each).

Subjects: ``subjects.ROUTER_LEASE_GRANT`` (a ``LeaseAsk``, answered with a ``LeaseGrant``) and
``subjects.ROUTER_LEASE_RETURN`` (a ``LeaseReturn``, answered with a ``LeaseReturned``), both request/reply
in the routers' queue group; ``subjects.ROUTER_LEASE_USED`` (``LeaseUses``, a plain publish): what an edge
admitted so far from its live leases, for the windows' views. docs/routing.md ("Leases for routes with limits") has the design.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TypeVar

import msgspec

from .config import Price
from .windows import usd_to_nano

LEASE_SCHEMA_VERSION = 1
MAX_ID_CHARS = 128
MAX_RETURNS = 16  # give-backs one LeaseAsk carries

S = TypeVar("S", bound="_LeaseMessage")


class _LeaseMessage(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    schema_version: int = LEASE_SCHEMA_VERSION

    def encode(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def decode(cls: type[S], data: bytes) -> S:
        return msgspec.json.decode(data, type=cls)


class LeaseAsk(_LeaseMessage, frozen=True):
    """An edge asks for capacity on one route; it picks the lease id (a lost answer is given back by id)."""

    lease_id: str
    edge: str
    provider: str
    model: str  # logical
    key_id: str | None = None  # the caller's key when it has limits; None: a lease every other key shares
    wanted: int = 1  # the edge's demand for one lease period
    tokens_in: int = 0  # the per-request estimate the lease is sized with (the asking request's)
    tokens_out: int = 0
    # this route's leases the edge gave back a moment ago: the router takes them back before it grants, so
    # what they did not use is there to grant (their give-backs, sent on their own, may come later)
    returns: list[LeaseReturn] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if not (0 < len(self.lease_id) <= MAX_ID_CHARS and 0 < len(self.edge) <= MAX_ID_CHARS):
            raise msgspec.ValidationError("lease_id and edge: 1 to 128 characters")
        if len(self.returns) > MAX_RETURNS:
            raise msgspec.ValidationError(f"returns: at most {MAX_RETURNS}")
        if not (1 <= self.wanted <= 100_000) or not (0 <= self.tokens_in <= 10**9) \
                or not (0 <= self.tokens_out <= 10**9):
            raise msgspec.ValidationError("wanted 1..100000, tokens 0..10^9")


class LeaseGrant(_LeaseMessage, frozen=True):
    """The router's answer: ``n`` requests (0: none, see ``reason``), ``n`` x the estimate reserved."""

    lease_id: str
    n: int
    until_ms: int = 0  # epoch ms: the edge admits from it until then
    at_s: int = 0  # the buckets it was reserved in: every request admitted from it is a reservation at at_s
    key_id: str | None = None  # the key scope it was reserved in (None: none, the router does not know the key)
    tokens_in: int = 0  # per request, as reserved
    tokens_out: int = 0
    cost_nano: int = 0
    # how the edge prices each request's estimate, as the router does: free, or these rates
    free: bool = True
    input_per_mtok: Decimal = Decimal(0)
    output_per_mtok: Decimal = Decimal(0)
    per_request: Decimal = Decimal(0)
    reason: str = ""
    retry_after_s: float | None = None  # nothing granted: when the limit that refused frees up, if known

    def cost_of(self, tokens_in: int, tokens_out: int) -> int:
        """A request's estimated cost in nano-USD, as the router estimates it (``policy.plan``)."""
        if self.free:
            return 0
        price = Price(input_per_mtok=self.input_per_mtok, output_per_mtok=self.output_per_mtok,
                      per_request=self.per_request)
        return usd_to_nano(price.cost(tokens_in, tokens_out))


class LeaseReturn(_LeaseMessage, frozen=True):
    """The edge is done with a lease: it admitted ``admitted`` requests at these summed estimates."""

    lease_id: str
    admitted: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_nano: int = 0


class LeaseUse(_LeaseMessage, frozen=True):
    """What an edge admitted so far from a live lease (``seq`` grows with each report: a late one is ignored).
    Only the windows' views read it: they show what was admitted, as the per-request admission did, not the
    part of a lease its edge has not used (yet); admission itself still counts the whole lease."""

    lease_id: str
    seq: int
    admitted: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_nano: int = 0


class LeaseUses(_LeaseMessage, frozen=True):
    uses: list[LeaseUse] = msgspec.field(default_factory=list)


class LeaseReturned(_LeaseMessage, frozen=True):
    lease_id: str
    state: str  # "returned", or "gone" (reaped or returned before)


def estimate(tokens_in: int, max_tokens: int | None, default_max_tokens: int, embeddings: bool) -> tuple[int, int]:
    """A request's (tokens in, tokens out) estimate, as the router's plan makes it."""
    return tokens_in, 0 if embeddings else max_tokens or default_max_tokens
