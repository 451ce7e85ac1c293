"""Admission leases: a reservation nobody settles becomes an event of its own.

When the router admits a request it reserves capacity in the live windows
and, in the same atomic step, records a lease: ``llmgw:lease:<member>`` (what
was reserved, for which event) with its expiry in the sorted set
``llmgw:leases``, where ``<member>`` is ``<request id>:<provider>``. The edge
chose the usage event's id before asking (``RouteRequest.event_id``) and the
lease keeps it, so the request's own event and an abandoned one share it.

A lease ends when its request is settled: the usage service applies the
request's event (which carries the reservation), or the router releases the
reservation of a failed attempt. The edge renews the leases of its long
streams. A lease that expires means its edge died mid-request (the upstream
may have served and billed it): a router replica publishes an "abandoned"
usage event for it — status ``ABANDONED_STATUS``, the reserved estimate —
so ClickHouse and the windows keep agreeing. Its id is the request's own
event id: if the real event turns up after all, it is stored once (the
first one wins, in ClickHouse and in the windows alike).
"""

from __future__ import annotations

from . import redis_keys

LEASES_KEY = redis_keys.LEASES  # zset: member -> expiry (epoch ms)
LEASE_PREFIX = redis_keys.LEASE_PREFIX  # hash per member: what was reserved
ABANDONED_STATUS = 599  # a request the gateway lost track of (its edge stopped mid-request)
ABANDONED_ERROR = ("abandoned: the gateway stopped before the request finished; counted at its reserved "
                   "estimate (the provider may have served it)")
# how long a lease runs: config routing.abandoned_after_s (default total_timeout_s + 60 s)
RENEW_EVERY_S = 30.0  # the edge renews the leases of streams still running this often


def lease_member(request_id: str, provider: str) -> str:
    return f"{request_id}:{provider}"


def lease_key(member: str) -> str:
    return LEASE_PREFIX + member
